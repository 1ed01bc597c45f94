"""``ngram-dask build --plan``: what a build would do, predicted in seconds, with no build.

What it reads: the input's plan (``inputs.plan_input``: pieces and tokens, from indexes
and headers, no token read), a *sample* (``build.plan_sample_pieces`` pieces spread over
the input, at most ``build.plan_sample_tokens`` tokens of whole samples), and the
cluster's settings (workers, threads, memory per worker: ``cluster.worker_memory``;
nothing is started, nothing is written).

The growth model, stated: the distinct n-grams of T tokens follow Heaps' law,
``D_n(T) = a_n * T ** b_n``, fitted in log-log on the distinct n-grams of the first 1/8,
1/4, 1/2 and all of a sample (counted by the explode's own core), and capped by the
n-grams T tokens hold and by V ** n. Two samples, two fits:

* the *unit sample*: up to ``build.plan_unit_sample_tokens`` consecutive tokens from the
  middle of the input, as an explode unit reads them (consecutive pieces); least squares
  over the four sizes. Partial rows of a unit of U tokens: its fit at U (interpolated when
  U is no larger than the sample); for a derived n, the samples' last n-grams: U over the
  mean sample length. The explode writes units times that.
* the *spread sample*: ``build.plan_sample_tokens`` tokens of samples drawn at random from
  ``build.plan_sample_pieces`` pieces spread over the input, in random order, so every
  prefix mixes the corpus as the corpus does; the slope is the one between half and all
  of the sample (``Heaps.tangent``). Final rows: ``D_n(corpus tokens)``; prefix rows:
  ``D_{n-1}(corpus tokens)``.

Why two: text that sits together repeats itself more than text from all over the corpus
(a unit's distinct n-grams grow more slowly than the corpus's), and a unit is read
consecutively while the catalog holds all of it. One fit of the spread sample
over-predicted the units' partial rows of a 1e10-token build 1.5x (docs/performance.md).
Then:

* a chunk's aggregate reads its share (1/K) of the partial rows of n and of the n derived
  from it, at ``NUMPY_BYTES_PER_ROW + 2n`` bytes each: the key ranges it needs are that
  over the budget (``aggregate.choose_path``);
* bytes per partial and per final row: the sample's own counts written as the build writes
  them; bytes per catalog row and the cost of each step: ``rates.json`` (measured by
  ``scripts/bench_regime.py rates`` on builds of two unit sizes, see docs/performance.md):

  - an explode unit of U tokens takes ``S * (U / U0) ** p`` core-seconds (p > 1: a sort's
    cost per key grows with its size, from the caches), the units handed to the first free
    core in order, plus the step's start (its graph, the count engine's timing);
  - a chunk unit takes a fixed cost, plus a cost per explode unit it reads (each a few
    ranged reads and a small Parquet decode), plus its partial rows at a cost per row that
    grows as a power of a key range's rows (the same caches);
  - the load's rows per core-second of the client, whose cores are the machine it runs on
    (a LocalCluster's: the cluster's; beside a scheduler: this machine's, or
    ``build.plan_client_cores``).

A sample says nothing about text unlike it: a corpus whose later pieces differ from the
sampled ones (another language, another domain) grows otherwise.
"""

from __future__ import annotations

import heapq
import io
import json
import math
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

from ngram_dask.config import Config
from ngram_dask.errors import ConfigError
from ngram_dask.inputs import (
    WORKER_BASELINE_BYTES,
    balanced_unit_tokens,
    group_pieces,
    plan_input,
    read_piece,
    unit_tokens_for,
)
from ngram_dask.ngrams import counting, partfile
from ngram_dask.ngrams.aggregate import (
    FINAL_PARQUET,
    MAX_RANGES,
    NUMPY_BYTES_PER_ROW,
    AggregateSettings,
    worker_budget,
)
from ngram_dask.schema import key_bits
from ngram_dask.storage import use_storage


def rates() -> dict:
    """The per-core speeds and catalog bytes shipped with the package (``rates.json``)."""
    return json.loads(resources.files("ngram_dask.ngrams").joinpath("rates.json").read_text())


def aggregate_unit_seconds(rows: float, ranges: int, reads: int, r: dict) -> float:
    """Core-seconds a chunk unit of ``rows`` partial rows in ``ranges`` key ranges, read from
    ``reads`` explode units, takes: ``fixed + reads * per_read + rows * c * (range rows / R0) ** d``."""
    a = r["aggregate_unit_seconds"]
    per_row = a["seconds_per_row"] * (max(rows / max(ranges, 1), 1.0) / a["range_rows"]) ** a["exponent"]
    return a["fixed"] + reads * a["per_read"] + rows * per_row


def makespan(costs: list[float], cores: int) -> float:
    """The seconds ``costs`` take in order on ``cores`` equal cores, each unit going to the
    first free one (as Dask hands tasks to idle workers): the last wave's tail included."""
    free = [0.0] * max(1, min(cores, len(costs)))
    for c in costs:
        heapq.heapreplace(free, free[0] + c)
    return max(free) if costs else 0.0


def explode_unit_seconds(tokens: float, r: dict) -> float:
    """Core-seconds an explode unit of ``tokens`` takes: ``S * (U / U0) ** p``, fitted on the
    units of builds with small and large units (a sort's cost per key grows with its size)."""
    e = r["explode_unit_seconds"]
    return e["seconds"] * (tokens / e["tokens"]) ** e["exponent"] if tokens > 0 else 0.0


@dataclass
class Heaps:
    """``D(T) = a * T ** b``, at most ``T`` (the n-grams T tokens hold) and at most ``limit``
    (the n-grams a vocabulary can make, V ** n)."""

    a: float
    b: float
    points: list[tuple[int, int]] = field(default_factory=list)  # (tokens, distinct) it was fitted on
    limit: float = math.inf

    def __call__(self, tokens: float) -> float:
        return min(float(tokens), self.a * float(tokens) ** self.b, self.limit) if tokens > 0 else 0.0

    @classmethod
    def tangent(cls, points: list[tuple[int, int]], limit: float = math.inf) -> "Heaps":
        """Through the last point, with the slope (log-log) between the last two: the growth at
        the sample's own size. Distinct n-grams grow ever more slowly (the curve is concave in
        log-log), so a least-squares slope over smaller sizes runs high when extrapolated far."""
        pts = [(t, d) for t, d in points if t > 0 and d > 0]
        if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
            return cls.fit(points, limit)
        (t0, d0), (t1, d1) = pts[-2], pts[-1]
        b = float(min(max(math.log(d1 / d0) / math.log(t1 / t0), 0.0), 1.0))
        return cls(d1 / t1 ** b, b, points, limit)

    @classmethod
    def fit(cls, points: list[tuple[int, int]], limit: float = math.inf) -> "Heaps":
        pts = [(t, d) for t, d in points if t > 0 and d > 0]
        if not pts:
            return cls(0.0, 1.0, points, limit)
        if len({t for t, _ in pts}) < 2:
            t, d = pts[-1]
            return cls(d / t, 1.0, points, limit)  # one size: grow in proportion (the safe side)
        b, log_a = np.polyfit(np.log([t for t, _ in pts]), np.log([d for _, d in pts]), 1)
        b = float(min(max(b, 0.0), 1.0))
        return cls(float(math.exp(log_a)), b, points, limit)


def _sample(pieces, want_pieces: int, want_tokens: int, vocab_size: int, verify: bool):
    """Samples drawn at random from a few pieces spread over the input, in random order:
    ``(tokens, offsets)``. Random rows, not each piece's first ones, so that any prefix of
    the sample mixes the corpus as the whole corpus does (a piece's consecutive rows repeat
    each other, and would make the growth look like a unit's, not the corpus's)."""
    rng = np.random.default_rng(0)  # the same plan for the same input
    picks = sorted({int(i) for i in np.linspace(0, len(pieces) - 1, min(want_pieces, len(pieces)))})
    per_piece = max(1, want_tokens // len(picks))
    rows = []
    for i in picks:
        data = read_piece(pieces[i], vocab_size, verify)
        samples = len(data.offsets) - 1
        if samples < 1:
            continue
        mean = max(int(data.offsets[-1]) / samples, 1.0)
        take = min(samples, max(1, math.ceil(per_piece / mean)))
        for s in np.sort(rng.choice(samples, size=take, replace=False)):
            rows.append(data.tokens[data.offsets[s]: data.offsets[s + 1]])
    if not rows:
        return np.empty(0, np.uint16), np.zeros(1, np.int64)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    offsets = np.concatenate(([0], np.cumsum([len(r) for r in rows]))).astype(np.int64)
    return np.concatenate(rows), offsets


def _consecutive(pieces, want_tokens: int, vocab_size: int, verify: bool):
    """Whole samples of consecutive pieces from the middle of the input, up to ``want_tokens``:
    ``(tokens, offsets)``, as an explode unit reads them."""
    start = len(pieces) // 2
    while start > 0 and sum(p.tokens for p in pieces[start:]) < want_tokens:
        start -= 1  # a small input: as much as there is
    tokens, offsets, have = [], [0], 0
    for piece in pieces[start:]:
        if have >= want_tokens:
            break
        data = read_piece(piece, vocab_size, verify)
        cut = int(np.searchsorted(data.offsets, want_tokens - have, side="right")) - 1
        cut = max(cut, 1) if len(data.offsets) > 1 else 0
        tokens.append(data.tokens[: data.offsets[cut]])
        offsets.extend((data.offsets[1: cut + 1] + offsets[-1]).tolist())
        have = offsets[-1]
    return np.concatenate(tokens) if tokens else np.empty(0, np.uint16), np.asarray(offsets, np.int64)


def _growth_points(tokens: np.ndarray, offsets: np.ndarray, m: int, bits: int, exclude):
    """``[(tokens, distinct m-grams)]`` of the first 1/8, 1/4, 1/2 and all of a sample, and
    the counts of all of it."""
    total = int(offsets[-1])
    points, c = [], None
    for frac in (8, 4, 2, 1):
        cut = int(np.searchsorted(offsets, total / frac, side="right")) - 1
        if cut < 1:
            continue
        c = counting.count_keys(counting.ngram_keys(tokens[: offsets[cut]], offsets[: cut + 1], m, bits,
                                                    exclude_id=exclude))
        points.append((int(offsets[cut]), len(c)))
    return points, c


def _bytes_per_row(c: counting.Counts, n: int, bits: int, vocab_size: int, final: bool) -> float:
    """Bytes per row of these counts written as the explode (a block) or the aggregate writes them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not len(c):
        return 0.0
    cols = dict(zip([f"id{j}" for j in range(n)], counting.unpack_keys(c.keys, n, bits, counting.id_dtype(vocab_size))))
    if final:
        cols["count"] = c.counts.astype(np.uint64)
        buf = io.BytesIO()
        pq.write_table(pa.table(cols), buf, **FINAL_PARQUET, column_encoding={"count": "BYTE_STREAM_SPLIT"})
        return len(buf.getvalue()) / len(c)
    cols["count"] = c.counts.astype(np.uint32)
    return len(partfile.block_bytes(pa.table(cols))) / len(c)


def plan_build(cfg: Config) -> dict:
    """The prediction, as a JSON-able dict (``plan_lines`` prints it)."""
    b, cl = cfg.build, cfg.cluster
    if not cfg.input:
        raise ConfigError("'input' is required (flag --input or config key 'input')")
    use_storage(cfg.storage.s3_endpoint_url, cfg.storage.s3_region)  # the input may be on S3
    try:
        from ngram_dask.cluster import local_cores, usable_cores, worker_memory

        limit, threads = worker_memory(cl)
    except ValueError as exc:
        raise ConfigError(f"cluster.memory_limit: {exc}") from None
    if not limit:
        raise ConfigError("--plan needs the workers' memory: give --memory-limit (a running scheduler's "
                          "workers are not asked)")
    workers = cl.n_workers or max(1, usable_cores() // threads)
    cores = workers * threads
    unit = b.explode_unit_tokens or unit_tokens_for(limit, threads)
    ip = plan_input(cfg.input, input_format=b.input_format, token_dtype=b.token_dtype, seq_len=b.seq_len,
                    samples=b.samples, token_column=b.token_column, unit_tokens=unit)
    pieces = ip.pieces
    corpus_tokens = int(b.plan_tokens) if b.plan_tokens else sum(p.tokens for p in pieces)
    if not b.explode_unit_tokens:  # as the build does (ngrams.pipeline.explode_plan)
        unit = balanced_unit_tokens(unit, corpus_tokens, local_cores(cl))
    unit_sizes = [g.tokens for g in group_pieces(pieces, unit)]
    if b.plan_tokens:  # another corpus like this one: as many units as its tokens fill
        unit_sizes = [corpus_tokens / math.ceil(corpus_tokens / unit)] * max(1, math.ceil(corpus_tokens / unit))
    units = len(unit_sizes)
    unit_tokens_mean = corpus_tokens / max(units, 1)
    ns = sorted(b.ngrams)
    derived = counting.derived_in_aggregate(ns, b.drop_eos)
    bits = key_bits(cfg.vocab_size)
    exclude = b.eos_id if b.drop_eos else None

    tokens, offsets = _sample(pieces, b.plan_sample_pieces, b.plan_sample_tokens, cfg.vocab_size, b.verify_hashes)
    sample_tokens = int(offsets[-1])
    mean_sample = sample_tokens / max(len(offsets) - 1, 1)
    growth: dict[int, Heaps] = {}
    bytes_partial: dict[int, float] = {}
    bytes_final: dict[int, float] = {}
    for m in range(1, max(ns) + 1):
        points, c = _growth_points(tokens, offsets, m, bits, exclude)
        growth[m] = Heaps.tangent(points, limit=float(cfg.vocab_size) ** m)
        if m in ns:
            bytes_partial[m] = _bytes_per_row(c, m, bits, cfg.vocab_size, final=False)
            bytes_final[m] = _bytes_per_row(c, m, bits, cfg.vocab_size, final=True)
    unit_tokens_sampled = min(int(b.plan_unit_sample_tokens), int(unit_tokens_mean))
    u_tokens, u_offsets = _consecutive(pieces, unit_tokens_sampled, cfg.vocab_size, b.verify_hashes)
    unit_growth: dict[int, Heaps] = {}
    skew: dict[int, float] = {}  # the largest chunk's partial rows over the mean chunk's
    for n in ns:
        if n in derived:
            continue
        points, c = _growth_points(u_tokens, u_offsets, n, bits, exclude)
        unit_growth[n] = Heaps.fit(points, limit=float(cfg.vocab_size) ** n)
        if c is not None and len(c):
            per_chunk = np.bincount((counting.first_ids(c.keys, n, bits) % b.chunks).astype(np.int64),
                                    minlength=b.chunks)
            skew[n] = float(per_chunk.max() * b.chunks / per_chunk.sum())
    del u_tokens, u_offsets

    r = rates()
    budget = b.aggregate_budget_bytes or worker_budget(limit, b.duckdb_memory_fraction)
    per_n = {}
    for n in ns:
        if n in derived:
            partial_per_unit = min(unit_tokens_mean / mean_sample, unit_tokens_mean)
        else:
            partial_per_unit = unit_growth[n](unit_tokens_mean)
        per_n[n] = {
            "partial_rows_per_unit": partial_per_unit,
            "partial_rows": partial_per_unit * units,
            "final_rows": growth[n](corpus_tokens),
            "prefix_rows": growth[n - 1](corpus_tokens) if n >= 2 else 0.0,
            "heaps": {"a": growth[n].a, "b": growth[n].b, "fitted_on": growth[n].points},
            "unit_heaps": ({"a": unit_growth[n].a, "b": unit_growth[n].b, "fitted_on": unit_growth[n].points}
                           if n in unit_growth else None),
            "bytes_per_partial_row": bytes_partial[n],
            "bytes_per_final_row": bytes_final[n],
        }
    chunks = b.chunks
    ags = AggregateSettings(work_dir="", derived=derived)
    aggregate_units = {}
    for top in sorted({ags.top(n) for n in ns}):
        chain = ags.chain(top)
        rows = sum(per_n[m]["partial_rows"] for m in chain) / chunks
        memory = rows * (NUMPY_BYTES_PER_ROW + 2 * top)
        # Chunks are id0 % K: a frequent first id makes one chunk larger than the mean, and
        # the largest chunk decides the ranges and the aggregate's peak.
        largest = memory * skew.get(top, 1.0)
        n_ranges = max(1, math.ceil(largest / max(budget, 1)))
        aggregate_units[top] = {
            "chain": chain, "units": chunks, "partial_rows": rows, "memory_bytes": memory,
            "largest_chunk_bytes": largest, "budget_bytes": budget, "ranges": n_ranges,
            "mean_ranges": max(1, math.ceil(memory / max(budget, 1))),
            "path": "numpy" if b.aggregate_method != "duckdb" and n_ranges <= MAX_RANGES else "duckdb",
            "chunks_for_one_range": max(1, math.ceil(rows * chunks * (NUMPY_BYTES_PER_ROW + 2 * top) / budget)),
        }
    final_rows = sum(v["final_rows"] + v["prefix_rows"] for v in per_n.values())
    scratch = (sum(v["partial_rows"] * v["bytes_per_partial_row"] for v in per_n.values())
               + sum((v["final_rows"] + v["prefix_rows"]) * v["bytes_per_final_row"] for v in per_n.values()))
    catalog = sum(v["final_rows"] * r["catalog_bytes_per_row"] + v["prefix_rows"] * r["catalog_bytes_per_prefix_row"]
                  for v in per_n.values())
    # The load runs on the client: the LocalCluster's machine, or this one beside a scheduler.
    client_cores = b.plan_client_cores or (cores if not cl.scheduler else usable_cores())
    chunk_units = chunks * len(aggregate_units)
    # A step runs on at most as many cores as it has units.
    seconds = {
        "explode": r["explode_step_seconds"] + makespan([explode_unit_seconds(u, r) for u in unit_sizes], cores),
        "aggregate": chunks * sum(aggregate_unit_seconds(a["partial_rows"], a["mean_ranges"], units, r)
                                  for a in aggregate_units.values()) / min(cores, chunk_units),
        "load": final_rows / (r["load_rows_per_core_second"] * client_cores),
    }
    return {
        "input": {"format": ip.format, "pieces": len(pieces), "tokens": corpus_tokens,
                  "scaled": bool(b.plan_tokens),
                  "sampled_tokens": sample_tokens, "mean_sample_tokens": mean_sample,
                  "unit_sampled_tokens": max((h.points[-1][0] for h in unit_growth.values() if h.points), default=0)},
        "cluster": {"workers": workers, "threads_per_worker": threads, "memory_per_worker": limit,
                    "cores": cores},
        "explode": {"unit_tokens": unit, "units": units, "largest_unit_tokens": max(unit_sizes),
                    "peak_bytes_per_unit": max(unit_sizes) * r["explode_bytes_per_token"],
                    "files": units * (2 * len(ns) + 1)},
        # A worker's peak: its baseline and the larger of a unit's explode and a key range's sum.
        "peak_worker_bytes": WORKER_BASELINE_BYTES + threads * max(
            [max(unit_sizes) * r["explode_bytes_per_token"]]
            + [min(a["largest_chunk_bytes"], a["budget_bytes"]) for a in aggregate_units.values()]),
        "chunks": chunks,
        "ngrams": per_n,
        "aggregate": aggregate_units,
        "files": units * (2 * len(ns) + 1) + chunks * sum(3 if n >= 2 else 2 for n in ns),
        "scratch_bytes": scratch,
        "catalog_bytes": catalog,
        "seconds": seconds,
        "rates": r,
    }


def _si(x: float) -> str:
    for unit, f in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= f:
            return f"{x / f:.2f}{unit}"
    return f"{x:.0f}"


def _bytes(x: float) -> str:
    for unit, f in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if x >= f:
            return f"{x / f:.2f} {unit}"
    return f"{x:.0f} B"


def plan_lines(p: dict) -> list[str]:
    i, c, x = p["input"], p["cluster"], p["explode"]
    lines = [
        f"plan (predicted, nothing built): {i['format']} input, {i['pieces']:,} piece(s), {i['tokens']:,} tokens "
        + ("(--plan-tokens: a corpus like the input's) " if i.get("scaled") else "")
        + f"(samples: {i['sampled_tokens']:,} tokens spread, {i['unit_sampled_tokens']:,} consecutive; "
        + f"samples of {i['mean_sample_tokens']:.0f} tokens on average)",
        f"  cluster: {c['workers']} worker(s) x {c['threads_per_worker']} thread(s), "
        f"{_bytes(c['memory_per_worker'])} each ({c['cores']} cores)",
        f"  explode: {x['units']:,} unit(s) of {x['unit_tokens']:,} tokens "
        f"(peak ~{_bytes(x['peak_bytes_per_unit'])} each), {x['files']:,} files",
        f"  K = {p['chunks']} chunk(s)",
    ]
    for n, v in p["ngrams"].items():
        h = v["heaps"]
        u = v.get("unit_heaps")
        unit_fit = f" (a unit: {u['a']:.3g} * T^{u['b']:.3f})" if u else ""
        lines.append(f"  n={n}: distinct(T) = {h['a']:.3g} * T^{h['b']:.3f}{unit_fit}; "
                     f"partial rows {_si(v['partial_rows'])} ({_si(v['partial_rows_per_unit'])} per unit), "
                     f"final rows {_si(v['final_rows'])}, "
                     f"prefix rows {_si(v['prefix_rows'])}")
    for a in p["aggregate"].values():
        lines.append(f"  aggregate n={'+'.join(map(str, a['chain']))}: {a['units']} unit(s) of "
                     f"{_si(a['partial_rows'])} partial rows, ~{_bytes(a['memory_bytes'])} each (the largest "
                     f"~{_bytes(a['largest_chunk_bytes'])}) against a budget of {_bytes(a['budget_bytes'])}: "
                     f"{a['ranges']} key range(s) in the largest, {a['path']} path "
                     f"(one range each from K = {a['chunks_for_one_range']})")
    s = p["seconds"]
    lines += [
        f"  files {p['files']:,}; scratch {_bytes(p['scratch_bytes'])}; catalog {_bytes(p['catalog_bytes'])}; "
        f"peak per worker ~{_bytes(p['peak_worker_bytes'])}",
        f"  time: explode {s['explode']:.1f} s, aggregate+load {s['aggregate'] + s['load']:.1f} s (the single "
        f"writer loads while the workers aggregate, on the same cores: aggregate {s['aggregate']:.1f} s of them, "
        f"load {s['load']:.1f} s), total {sum(s.values()):.1f} s (rates of {p['rates']['measured_on']})",
    ]
    return lines
