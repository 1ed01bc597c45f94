"""The package's imports run one way: from the command line down to the foundations.

    cli -> catalog -> ngrams | convert | lm | contexts -> runtime, cluster (+ cluster_slurm) -> config, db, storage, mds
        -> errors, schema, faults, tokenizer

A module may import from its own layer and the layers below it, never above; the
four stage families (ngrams, convert, lm, contexts) never import each other. Imports inside
functions count too: a lazy import that runs upward is still an upward import.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "ngram_dask"
LAYERS = [
    {"errors", "schema", "faults", "tokenizer"},
    {"config", "storage", "db", "mds", "inputs"},
    {"runtime", "cluster", "cluster_slurm"},
    {"ngrams", "convert", "lm", "contexts"},
    {"catalog"},
    {"cli"},
]
FAMILIES = {"ngrams", "convert", "lm", "contexts"}


def layer_of(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"ngram_dask.{unit} belongs to no layer: add it to LAYERS in {__file__}")


def unit_of(module: str) -> str | None:
    """``ngram_dask.ngrams.explode`` -> ``ngrams``; the package itself -> None."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ngram_dask" and len(parts) > 1 else None


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, text: str) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every ngram_dask import in the file, relative ones resolved."""
    tree = ast.parse(text)
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ngram_dask")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if target == "ngram_dask":  # from ngram_dask import x: x is the module imported
                found += [(node.lineno, f"ngram_dask.{a.name}") for a in node.names]
            elif target.startswith("ngram_dask."):
                found.append((node.lineno, target))
    return found


def violations(edited: dict[Path, str] | None = None) -> list[str]:
    """Every import that runs the wrong way; ``edited`` replaces files' texts (for the self-test)."""
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        src = unit_of(module_name(path))
        if src is None:
            continue  # ngram_dask/__init__.py: the public facade may name anything (lazily)
        text = (edited or {}).get(path) or path.read_text()
        for line, target in imports(path, text):
            dst = unit_of(target)
            if dst is None or dst == "__version__" or dst == src:
                continue
            where = f"{path.relative_to(REPO)}:{line} imports {target}"
            if layer_of(dst) > layer_of(src):
                bad.append(f"{where}: {dst} is above {src}")
            elif src in FAMILIES and dst in FAMILIES:
                bad.append(f"{where}: the stage families do not import each other")
    return bad


def test_every_module_belongs_to_a_layer():
    units = {unit_of(module_name(p)) for p in PACKAGE.rglob("*.py")} - {None}
    for unit in units:
        layer_of(unit)


def test_imports_run_one_way():
    assert violations() == []


@pytest.mark.parametrize("source,target", [
    ("runtime/driver.py", "ngram_dask.ngrams.pipeline"),  # upward
    ("lm/scan.py", "ngram_dask.ngrams.load"),  # across families
])
def test_the_check_catches_a_wrong_import(source, target):
    path = PACKAGE / source
    found = violations({path: path.read_text() + f"\n\ndef f():\n    import {target}\n"})
    assert any(target in v for v in found), found


def test_ruff_finds_nothing():
    """The lint configuration is pyproject.toml's [tool.ruff]; CI runs it with the tests."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(REPO)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def duckdb_connects(edited: dict[Path, str] | None = None) -> list[str]:
    """``duckdb.connect`` calls outside ``db.py``: every connection goes through that one module."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "db.py":
            continue
        text = (edited or {}).get(path) or path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "duckdb":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_only_db_py_connects_to_duckdb():
    assert duckdb_connects() == []
    path = PACKAGE / "ngrams" / "aggregate.py"  # the check sees a connect in a spill path
    edited = path.read_text() + "\n\ndef spill():\n    import duckdb\n    return duckdb.connect(config={})\n"
    assert duckdb_connects({path: edited}) == [f"{path.relative_to(REPO)}:{len(edited.splitlines())}"]


# --- the catalog's derived names live in schema.py --------------------------------------
#
# scan_<L> tables, p_<model> score columns and the scored_models record are named and parsed
# only by ngram_dask/schema.py (scan_table, scan_length, score_column, is_score_column,
# scored_models, ...). A regex, prefix test or literal of them anywhere else is a second
# place that can drift.
NAME_PATTERNS = re.compile(
    r"""scan_\\d|scan_\(\\d"""                   # a regex for scan_<L>
    r"""|f["']scan_\{"""                         # scan_<L> written by hand
    r"""|\bp_\(\\w|\bp_\\w|\bp_\[|["']p_["']"""  # a regex or the bare prefix of p_<model>
    r"""|startswith\(["'](p|scan)_["']"""        # a prefix test
    r"""|["']scored_models["']"""                # the catalog_info key
)


def name_violations(edited: dict[Path, str] | None = None) -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "schema.py":
            continue
        text = (edited or {}).get(path) or path.read_text()
        for i, line in enumerate(text.splitlines(), 1):
            if NAME_PATTERNS.search(line):
                bad.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    return bad


def test_scan_and_score_names_are_parsed_only_in_schema():
    assert name_violations() == []


@pytest.mark.parametrize("line", [
    'SCANS = re.compile(r"scan_\\d+")',
    'm = re.fullmatch(r"scan_(\\d+)", table)',
    'name = f"scan_{seq_len}"',
    'cols = [c for c in cols if c.startswith("p_")]',
    'm = re.fullmatch(r"p_(\\w+)", column)',
    'KEY = "scored_models"',
])
def test_the_name_check_catches_a_parse_outside_schema(line):
    path = PACKAGE / "catalog" / "api.py"
    found = name_violations({path: path.read_text() + f"\n{line}\n"})
    assert any(line in v for v in found), found


# --- calls that have one home ------------------------------------------------------------

def method_calls(method: str, allowed: set[Path], edited: dict[Path, str] | None = None) -> list[str]:
    """``<anything>.<method>(...)`` calls outside the ``allowed`` files."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in allowed:
            continue
        text = (edited or {}).get(path) or path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_only_the_driver_asks_the_scheduler_for_its_workers():
    """``runtime.workers`` lists every worker on every distributed release pyproject allows
    (some list five unless asked for all, older ones take no ``n_workers``)."""
    driver = PACKAGE / "runtime" / "driver.py"
    assert method_calls("scheduler_info", {driver}) == []
    path = PACKAGE / "lm" / "score.py"
    edited = path.read_text() + "\n\ndef hosts(client):\n    return client.scheduler_info()['workers']\n"
    assert method_calls("scheduler_info", {driver}, {path: edited}) == [
        f"{path.relative_to(REPO)}:{len(edited.splitlines())}"]


def own_publishing(edited: dict[Path, str] | None = None) -> list[str]:
    """Files renamed or uploaded into place by a counting stage itself (``os.replace``,
    ``os.rename``, ``fs.put_file``/``fs.put``) instead of through ``storage.atomic_write_*``.
    (``convert`` publishes a whole shard folder, and ``catalog`` writes the user's own
    output files: not counted here.)"""
    found = []
    for family in ("ngrams", "lm", "contexts", "inputs", "runtime"):
        for path in sorted((PACKAGE / family).rglob("*.py")):
            text = (edited or {}).get(path) or path.read_text()
            for node in ast.walk(ast.parse(text)):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                f = node.func
                if f.attr in ("put_file", "put") or (
                        f.attr in ("replace", "rename") and isinstance(f.value, ast.Name) and f.value.id == "os"):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_stages_publish_their_files_through_storage():
    assert own_publishing() == []
    path = PACKAGE / "ngrams" / "aggregate.py"
    edited = path.read_text() + "\n\ndef publish(a, b):\n    os.replace(a, b)\n"
    assert own_publishing({path: edited}) == [f"{path.relative_to(REPO)}:{len(edited.splitlines())}"]


def test_no_result_is_left_half_read():
    """``fetchone``/``fetchmany`` leave a DuckDB result unfinished, which makes DuckDB 2 refuse
    the connection's next register or sql: ``db.one``/``db.scalar`` read to the end instead."""
    allowed = {PACKAGE / "db.py"}
    assert method_calls("fetchone", allowed) == [] and method_calls("fetchmany", allowed) == []


def declared_closure() -> set[str]:
    """Every distribution that installing ngram-dask (no extras) pulls in, from the installed
    metadata: its requirements, theirs, with the extras each asks for, markers evaluated."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [(canonicalize_name("ngram-dask"), frozenset())]
    while todo:
        name, extras = todo.pop()
        key = f"{name}[{','.join(sorted(extras))}]"
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(name)
        except PackageNotFoundError:  # a requirement whose marker let pip skip it
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                continue
            todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {k.split("[")[0] for k in seen}


# loaded by a dependency inside ``try: ... except ImportError``, so not needed: present only
# because this venv has it
OPTIONAL_IMPORTS = {"pygments": "httpx's command line (httpx[cli])"}


def test_every_import_is_a_declared_dependency():
    """What ngram_dask imports (also inside functions), and what those modules import in
    turn, is installed by ``pip install ngram-dask`` alone: a wheel in a fresh venv found no
    pandas for ``dask.dataframe`` until pyproject asked for ``dask[dataframe]``."""
    import subprocess
    import sys

    names = set()
    for path in (REPO / "ngram_dask").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module)
    names = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names and n.split(".")[0] != "ngram_dask"}
    # each in a fresh interpreter: the top-level modules it loads, and the distributions they come from
    code = ("import importlib, json, sys\n"
            "from importlib.metadata import packages_distributions\n"
            f"for m in {sorted(names)!r}:\n"
            "    try: importlib.import_module(m)\n"
            "    except ImportError: pass\n"
            "dists = packages_distributions()\n"
            "print(json.dumps(sorted({d for m in list(sys.modules) for d in dists.get(m.split('.')[0], [])})))")
    import json

    from packaging.utils import canonicalize_name

    loaded = {canonicalize_name(d) for d in json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)}
    missing = sorted(loaded - declared_closure() - OPTIONAL_IMPORTS.keys())
    assert not missing, f"imported but not pulled in by ngram-dask's dependencies: {missing}"
