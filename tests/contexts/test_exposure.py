"""`ngram-dask exposure`: per prompt, its occurrences before each checkpoint, against a brute-force count.

The training stream is two Megatron files of 16-token sequences (120 in all), in training
order; 5 sequences make a step, so step S has seen sequences < 5 S. Units of 7 sequences
straddle the step boundaries, and prompts occur on both sides of them. The catalog is
built from the same stream, so the pass's totals are also the prompts' sum_count.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers_formats import write_megatron

from helpers import db_rows, run_cli

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SEQ, SPP = 16, 5
STEPS = (0, 1, 3, 7, 16, 20)  # 20 * 5 = 100 < 120 sequences: the last 20 are after the last step
REVISIONS = "step20,step0,step1,step3,step7,step16"  # not increasing: sorted


def stream(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(np.arange(1, 300))
    phrases = [perm[i * 4:(i + 1) * 4] for i in range(25)]
    flat = np.concatenate([phrases[k] for k in rng.integers(0, 25, size=120 * SEQ // 4)])
    noise = rng.random(len(flat)) < 0.08  # some prompts are followed by another token: task_seen < prompt_seen
    flat[noise] = rng.integers(1, 300, size=int(noise.sum()))
    return [flat[i * SEQ:(i + 1) * SEQ] for i in range(120)]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory, bpe_tokenizer_path, local_cluster):
    from ngram_dask.cli import main

    root = tmp_path_factory.mktemp("exposure")
    seqs = stream()
    data = root / "train"
    data.mkdir()
    write_megatron(data / "part-00000", [[list(map(int, s)) for s in seqs[:50]]])
    write_megatron(data / "part-00001", [[list(map(int, s)) for s in seqs[50:]]])
    (root / "catalog.yaml").write_text("catalog:\n  top_trigram_min_count: 3\n")
    assert main(["build", "--input", str(data), "--work-dir", str(root / "work"), "--db", str(root / "ngrams.duckdb"),
                 "--tokenizer", bpe_tokenizer_path, "--vocab-size", "512", "--chunks", "2", "--seq-len", str(SEQ),
                 "--config", str(root / "catalog.yaml"), "--scheduler", local_cluster, "-q"]) == 0
    return root / "ngrams.duckdb", data, seqs


def brute(db, seqs) -> dict[tuple, tuple[int, int]]:
    """(n, id0, id1, step) -> (prompt_seen, task_seen), one sequence and position at a time."""
    tops = {(2, r[0], None): r[1] for r in db_rows(db, "SELECT id0, id1 FROM top_bigrams")}
    tops.update({(3, r[0], r[1]): r[2] for r in db_rows(db, "SELECT id0, id1, id2 FROM top_trigrams")})
    seen, task = Counter(), Counter()
    for i, seq in enumerate(seqs):
        for j in range(len(seq)):
            for n in (2, 3):
                if j + n - 1 >= len(seq):
                    continue
                key = (n, int(seq[j]), int(seq[j + 1]) if n == 3 else None)
                if key not in tops:
                    continue
                for step in STEPS:
                    if i < step * SPP:
                        seen[key + (step,)] += 1
                        task[key + (step,)] += int(seq[j + n - 1]) == tops[key]
    return {key + (step,): (seen[key + (step,)], task[key + (step,)]) for key in tops for step in STEPS}


def table(db) -> dict[tuple, tuple[int, int]]:
    return {tuple(r[:4]): (r[4], r[5]) for r in db_rows(db, "SELECT n, id0, id1, step, prompt_seen, task_seen "
                                                           "FROM exposure")}


def exposure(db, data, *extra: str, unit_tokens: int | None = 7 * SEQ) -> tuple[int, str]:
    """The stage on the test's stream; ``unit_tokens`` None: the size a user gets by default."""
    import contextlib
    import io

    from ngram_dask.cli import main

    unit = ["--explode-unit-tokens", str(unit_tokens)] if unit_tokens else []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["exposure", "--db", str(db), "--input", str(data), "--revisions", REVISIONS,
                   "--seq-len", str(SEQ), "--samples-per-step", str(SPP), *unit, *extra])
    return rc, out.getvalue()


def test_pure_counts_equal_brute_force():
    from ngram_dask.contexts.exposure import exposure_counts, sequence_intervals
    from ngram_dask.contexts.kernel import Prompts

    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 6, size=rng.integers(1, 9)) for _ in range(300)]
    tokens = np.concatenate(seqs).astype(np.uint16)
    offsets = np.concatenate(([0], np.cumsum([len(s) for s in seqs])))
    steps = np.array([0, 2, 3, 5])
    iv = sequence_intervals(np.arange(10, 310), steps, 7)  # the piece starts at global sequence 10
    # sequence i counts at step S iff i < 7 S: 10..13 from step 2 on (interval 1), 14..20 from 3 ...
    assert list(iv[:6]) == [1, 1, 1, 1, 2, 2] and iv[-1] == 4
    p = Prompts.make(3, [[1, 2, 0], [2, 2, 5]], [3, 0, 1], bits=3)
    prompt, interval, seen, task = exposure_counts(tokens, offsets, iv, p, 8, len(steps) + 1)
    want: Counter = Counter()
    for s, seq in enumerate(seqs):
        for j in range(len(seq) - 2):
            for k in range(len(p)):
                if (seq[j], seq[j + 1]) == (p.ids[0][k], p.ids[1][k]):
                    want[k, iv[s], "seen"] += 1
                    want[k, iv[s], "task"] += int(seq[j + 2] == p.expected[k])
    got: Counter = Counter()
    for k, i, a, b in zip(prompt, interval, seen, task):
        got[int(k), int(i), "seen"] += int(a)
        got[int(k), int(i), "task"] += int(b)
    assert +got == +want and sum(seen) > 50 and len(set(interval.tolist())) >= 3


def test_exposure_equals_brute_force_and_verify_checks_it(catalog, local_cluster, tmp_path):
    src, data, seqs = catalog
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(src, db)
    rc, out = exposure(db, data, "--work-dir", str(tmp_path / "work"), "--scheduler", local_cluster)
    assert rc == 0, out
    want = brute(db, seqs)
    assert table(db) == want
    assert any(v[0] > 0 for k, v in want.items() if k[3] == 1) and any(v[1] < v[0] for v in want.values())
    # the pass covers every sequence: at the last step plus after it, the counts are the sum_counts
    import json

    info = json.loads(db_rows(db, "SELECT value FROM catalog_info WHERE key = 'exposure'")[0][0])
    sums = db_rows(db, "SELECT (SELECT sum(sum_count) FROM top_bigrams) + (SELECT sum(sum_count) FROM top_trigrams)")
    assert info["totals"]["pass"][0] == sums[0][0]
    last = sum(v[0] for k, v in want.items() if k[3] == STEPS[-1])
    assert last + info["totals"]["after_last_step"][0] == sums[0][0] and info["totals"]["after_last_step"][0] > 0
    types = dict(db_rows(db, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'exposure'"))
    assert types["step"] == "UINTEGER" and types["prompt_seen"] == "UBIGINT"
    from ngram_dask.catalog.api import Catalog

    key = next(k for k, v in want.items() if k[0] == 3 and v[1] < v[0])
    with Catalog(db) as cat:
        res = cat.curve([key[1], key[2]])
    assert res["models"] == [] and res["exposure"] == [
        {"step": s, "prompt_seen": want[key[:3] + (s,)][0], "task_seen": want[key[:3] + (s,)][1]} for s in STEPS]
    from ngram_dask.cli import main

    assert main(["verify", "--db", str(db)]) == 0
    import duckdb

    con = duckdb.connect(str(db))
    con.execute("UPDATE exposure SET prompt_seen = prompt_seen + 1 WHERE step = 20 AND prompt_seen > 0 "
                "AND id0 = (SELECT min(id0) FROM exposure WHERE prompt_seen > 0)")
    con.close()
    assert main(["verify", "--db", str(db)]) != 0


def test_exposure_at_the_default_unit_size(catalog, tmp_path):
    """No --explode-unit-tokens (a user's default: units sized to the workers' memory). It
    once died in the plan (`group_pieces` got None)."""
    src, data, seqs = catalog
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(src, db)
    rc, out = exposure(db, data, "--work-dir", str(tmp_path / "work"), "--n-workers", "1",
                       "--threads-per-worker", "1", unit_tokens=None)
    assert rc == 0, out
    assert table(db) == brute(db, seqs)


def test_killed_pass_resumes_with_the_missing_pieces(catalog, tmp_path):
    src, data, seqs = catalog
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(src, db)
    args = ["exposure", "--db", str(db), "--input", str(data), "--revisions", REVISIONS, "--seq-len", str(SEQ),
            "--samples-per-step", str(SPP), "--explode-unit-tokens", str(7 * SEQ), "--work-dir", str(tmp_path / "w"),
            "--n-workers", "1", "--threads-per-worker", "1"]
    res = run_cli(*args, env={"NGRAM_DASK_CRASH_IN_CONTEXTS": "exposure"})
    assert res.returncode == 86, res.stdout + res.stderr
    assert "exposure" not in [r[0] for r in db_rows(db, "SELECT table_name FROM information_schema.tables")]
    res = run_cli(*args)
    assert res.returncode == 0, res.stdout + res.stderr
    done = int(res.stdout.split("piece groups 18 (")[1].split(" already done")[0])
    assert done >= 1
    assert table(db) == brute(db, seqs)


def test_another_tokenizers_stream_is_refused(catalog, tmp_path, capsys):
    src, _, _ = catalog
    db = tmp_path / "ngrams.duckdb"
    shutil.copy(src, db)
    rng = np.random.default_rng(5)
    other = tmp_path / "other"
    other.mkdir()
    write_megatron(other / "part-00000", [[list(map(int, rng.integers(1, 300, SEQ))) for _ in range(600)]])
    before = Path(db).read_bytes()
    rc, _ = exposure(db, other, "--work-dir", str(tmp_path / "w"), "--n-workers", "1")
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "another tokenizer" in err, err
    assert Path(db).read_bytes() == before
