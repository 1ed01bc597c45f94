"""One contexts unit in a fresh process, as a Dask worker runs it: what it writes, and
what it does not import."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from ngram_dask.contexts import kernel
from ngram_dask.contexts.task import prompts_table
from ngram_dask.storage import atomic_write_parquet, read_arrow

from helpers import write_mds

UNIT = """
import json, sys
from ngram_dask.contexts.task import ContextsSettings, contexts_group
from ngram_dask.inputs import even_groups, plan_input
s = ContextsSettings(dir=sys.argv[1], token_dtype="uint16", vocab_size=1000, per_task=3, seed=5, before=2, after=1)
group = even_groups(plan_input(sys.argv[2]).pieces, 10**9)[0]
stats = contexts_group(group, s)
print(json.dumps({"pandas": "pandas" in sys.modules, "group": group.name, "stats": stats}))
"""


def test_a_unit_writes_its_arrow_parts_without_importing_pandas(tmp_path):
    """pyarrow 26 imports pandas on its first ``pa.array`` or ``to_numpy`` (~0.5 s of every
    worker's first unit): a unit builds its Arrow arrays from buffers instead, and what it
    writes are Arrow files holding each prompt's occurrences."""
    rng = np.random.default_rng(4)
    samples = [rng.integers(1, 20, int(rng.integers(1, 60))).tolist() for _ in range(80)]
    mds = write_mds(tmp_path / "mds", samples, size_limit=1 << 10)
    families = {2: kernel.Prompts.make(2, [[3, 7]], [4, 8], 10),
                3: kernel.Prompts.make(3, [[3, 5], [4, 6]], [9, 2], 10)}
    atomic_write_parquet(str(tmp_path / "ctx" / "prompts.parquet"), prompts_table(families))
    out = subprocess.run([sys.executable, "-c", UNIT, str(tmp_path / "ctx"), str(mds)], capture_output=True,
                         text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["pandas"] is False
    counts = read_arrow(str(tmp_path / "ctx" / "counts" / f"{got['group']}.arrow")).to_pylist()
    want = {}
    for s in samples:  # brute force: (prompt row in prompts.parquet) -> occurrences
        for i in range(len(s) - 1):
            for row, ids in enumerate([(3,), (7,), (3, 4), (5, 6)]):  # (make takes columns)
                if tuple(s[i:i + len(ids)]) == ids and i + len(ids) < len(s):
                    want[row] = want.get(row, 0) + 1
    assert {c["prompt"]: c["occurrences"] for c in counts} == want
    examples = read_arrow(str(tmp_path / "ctx" / "examples" / f"{got['group']}.arrow"))
    assert examples.num_rows == sum(min(3, c) for c in want.values()) == got["stats"]["kept"]
