"""The small runtime every stage runs on.

* ``tasks.resumable``: a unit of work (a shard group, a chunk, a source shard, a scan
  batch) that records a completion marker when it finishes and is skipped, with the
  recorded statistics, when its marker exists. The work function itself never looks
  at markers.
* ``stage``: ``run_stage`` runs a declared ``Stage`` (manifest check and claim, the
  cluster, skipping done units, progress, the single DuckDB writer): every stage's
  client side.
* ``driver``: submit tasks to the cluster, gather them as they finish with console
  progress, turn a worker's full disk into one readable line, cancel the rest when
  one fails.
"""

from ngram_dask.runtime.driver import DiskFull, Progress, as_finished, gpu_resources, map_tasks, workers
from ngram_dask.runtime.stage import Manifest, Stage, StageContext, Step, run_stage
from ngram_dask.runtime.tasks import completed, resumable, thread_buffer

__all__ = ["DiskFull", "Manifest", "Progress", "Stage", "StageContext", "Step", "as_finished", "completed",
           "gpu_resources", "map_tasks", "resumable", "run_stage", "thread_buffer", "workers"]
