"""A clone must stand alone: nothing the project tracks may read beside the repository.

The developers keep a reference shelf next to the repository; a user's clone has nothing
there. These tests fail when a tracked file points at such a place, and prove that what
the project needs instead (the GPT-NeoX tokenizer, the table contract) is inside.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from ngram_dask.tokenizer import BUNDLED_GPT_NEOX

from helpers import REPO

SHELF = "sha" + "red"  # spelled in two parts so this file does not match its own patterns
# Ways code or docs reach outside the repository: "../<shelf>", "<path>.parent / '<shelf>'",
# "parents[2] / '<shelf>'", and "/work/<shelf>"-style absolute paths.
OUTSIDE = [
    re.compile(r"\.\./" + SHELF + r"\b"),
    re.compile(r"parents?(\[\d+\])?\s*/\s*[\"']" + SHELF + r"[\"']"),
    re.compile(r"[\"']" + SHELF + r"[\"']\s*/\s*[\"']tokenizers"),
    re.compile(r"/work/" + SHELF + r"\b"),
]


def tracked_text_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def test_no_tracked_file_reads_beside_the_repository():
    files = tracked_text_files()
    assert files, "git ls-files listed nothing"
    offenders = []
    for rel in files:
        path = REPO / rel
        if path.suffix in {".png", ".parquet", ".duckdb"} or path.name == "tokenizer.json" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                offenders.append(f"{rel}:{lineno}: {line.strip()[:120]}")
    assert not offenders, "tracked files read outside the repository:\n" + "\n".join(offenders)


@pytest.mark.parametrize("line", [
    'TOKENIZER = REPO.parent / "' + SHELF + '" / "tokenizers"',
    "see ../" + SHELF + "/SPEC.md",
    'Path(__file__).parents[2] / "' + SHELF + '"',
])
def test_the_check_catches_each_way_out(line):
    assert any(p.search(line) for p in OUTSIDE)


def test_the_gpt_neox_tokenizer_ships_with_its_license():
    for name in ("tokenizer.json", "tokenizer_config.json", "LICENSE", "SOURCE.md"):
        assert (BUNDLED_GPT_NEOX / name).is_file(), name
        assert str(BUNDLED_GPT_NEOX / name).startswith(str(REPO)), "the copy must live inside the repository"
    assert "Apache License" in (BUNDLED_GPT_NEOX / "LICENSE").read_text()
    tracked = set(tracked_text_files())
    assert "ngram_dask/tokenizers/gpt-neox-20b/tokenizer.json" in tracked


def test_the_bundled_tokenizer_is_pythias():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(BUNDLED_GPT_NEOX))
    assert type(tok).__name__ == "GPTNeoXTokenizerFast"
    assert len(tok) == 50277
    assert tok("Hello, my dog is cute")["input_ids"] == [12092, 13, 619, 4370, 310, 20295]
    assert tok(" telomeres")["input_ids"] == [38103, 373]
    assert tok.decode([0]) == "<|endoftext|>"


def test_every_package_data_pattern_names_a_tracked_file():
    """A pattern that matches nothing ships nothing, silently (``py.typed`` was listed, never written)."""
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    tracked = tracked_text_files()
    for package, patterns in data.items():
        for pattern in patterns:
            full = f"{package.replace('.', '/')}/{pattern}"
            assert any(fnmatch.fnmatch(f, full) for f in tracked), f"package data {full} matches no tracked file"


def test_readme_points_to_the_table_contract_inside_the_repository():
    readme = (REPO / "README.md").read_text()
    assert "docs/tables.md" in readme
    assert (REPO / "docs" / "tables.md").is_file()


@pytest.mark.slow
def test_an_installed_wheel_runs_the_demo_from_anywhere(tmp_path):
    """Build the wheel from the tracked files alone, install it (no deps, offline) into a fresh
    venv that sees this environment's packages, and from a folder outside the repository
    run ``ngram-dask demo --help`` and load the demo config and tokenizer through the package."""
    import os
    import shutil
    import site
    import sys
    import textwrap
    import venv

    src = tmp_path / "src"
    for rel in tracked_text_files():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1")

    def ok(*cmd, cwd=tmp_path):
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{cmd}:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        return r.stdout

    ok(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", src)
    (wheel,) = (tmp_path / "dist").glob("ngram_dask-*.whl")
    import zipfile

    assert "ngram_dask/py.typed" in zipfile.ZipFile(wheel).namelist()  # PEP 561: type checkers read the hints
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    (new_site,) = (p for p in env_dir.glob("lib/python*/site-packages"))
    # The dependencies: this environment's site-packages, after the venv's own (whose wheel wins).
    (new_site / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    ok(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert "ngram-dask demo" in ok(env_dir / "bin" / "ngram-dask", "demo", "--help", cwd=elsewhere)
    out = ok(py, "-c", textwrap.dedent("""
        import ngram_dask
        from ngram_dask.config import load_config
        from ngram_dask.ngrams.demo import DEMO_CONFIG
        from ngram_dask.tokenizer import BUNDLED_GPT_NEOX
        cfg = load_config(DEMO_CONFIG)
        print(ngram_dask.__file__, DEMO_CONFIG, cfg.build.chunks, (BUNDLED_GPT_NEOX / "tokenizer.json").is_file())
    """), cwd=elsewhere)
    module, config, chunks, tokenizer = out.split()
    assert module.startswith(str(new_site)) and config.startswith(str(new_site)), out
    assert int(chunks) >= 1 and tokenizer == "True"
