"""The small runtime every stage runs on.

* ``units.resumable``: a unit of work (a piece group, a chunk, a source shard, a scan
  batch) that records a completion marker when it finishes and is skipped, with the
  recorded statistics, when its marker exists. The work function itself never looks
  at markers.
* ``stage``: ``run_stage`` runs a declared ``Stage`` (settings, database and manifest
  checks, the claim, the cluster, skipping done units, progress, the report, the single
  DuckDB writer): every stage's client side.
* ``driver``: submit units to the cluster, gather them as they finish with console
  progress, turn a worker's full disk into one readable line, cancel the rest when
  one fails.
"""

from ngram_dask.runtime.driver import DiskFull, Progress, as_finished, gpu_resources, scheduler_workers
from ngram_dask.runtime.stage import Manifest, Stage, StageContext, StageReport, Step, run_stage
from ngram_dask.runtime.units import completed, resumable, thread_buffer

__all__ = ["DiskFull", "Manifest", "Progress", "Stage", "StageContext", "StageReport", "Step", "as_finished",
           "completed", "gpu_resources", "resumable", "run_stage", "scheduler_workers", "thread_buffer"]
