"""Push an export to the Hugging Face hub (``ngram-dask export --push-to-hub``).

What it writes is dataset repositories, created if missing (private with ``--private``):

* default layout: the whole export folder as the repository ``<name>``;
* original layout: each table's folder that has rows as the repository ``<prefix><table>``
  (``<name>`` is the prefix).

Each upload is one commit ``ngram-dask export`` of the folder as it is on disk, leaving out
what starts with a dot (a table's unfinished ``.<table>.tmp`` folder). ``check_hub_name``
and ``check_hub_token`` are for the caller to run before the export, so that a bad name or
a missing token fails before the work rather than after it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ngram_dask.catalog.export import ExportResult
from ngram_dask.errors import UserError
from ngram_dask.schema import TOOL, prefix_table


def check_hub_token() -> str:
    """The Hugging Face token to push with, or a one-line error (checked before any work)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError("--push-to-hub needs the network, but HF_HUB_OFFLINE=1")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError("--push-to-hub needs a Hugging Face token with write access: set HF_TOKEN "
                        "or run `huggingface-cli login`")
    return token


@dataclass(frozen=True)
class HubTarget:
    """One upload: the folder ``folder`` becomes the dataset repository ``repo_id``."""

    folder: str
    repo_id: str


def _check_repo_id(repo_id: str, what: str) -> None:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise UserError(f"--push-to-hub {what}: {first}") from None


def check_hub_name(name: str, layout: str) -> None:
    """Refuse a bad ``--push-to-hub`` value before any work: a repo id (default layout) or a
    prefix that every ``<prefix><table>`` repo id starts with (original layout)."""
    if layout != "original":
        _check_repo_id(name, f"{name!r} is not a repository id")
        return
    if not name or name == "/":
        raise UserError("--push-to-hub needs a prefix for the repositories with --layout original, "
                        "e.g. me/pile_ (gives me/pile_bigrams, me/pile_top_trigrams, ...)")
    # The longest name the catalog's own tables give: if it passes, every table's id does.
    _check_repo_id(name + prefix_table(3), f"prefix {name!r} gives no valid repository id")


def hub_plan(result: ExportResult, name: str) -> list[HubTarget]:
    """Which folder goes to which repository: the whole export as ``name`` (default layout), or
    each table's folder as ``<name><table>`` (original layout; tables without rows have no folder)."""
    if result.layout != "original":
        _check_repo_id(name, f"{name!r} is not a repository id")
        return [HubTarget(result.out, name)]
    plan = []
    for t in result.tables:
        if t.files:
            repo_id = name + t.table
            _check_repo_id(repo_id, f"prefix {name!r} gives the invalid id {repo_id!r}")
            plan.append(HubTarget(os.path.join(result.out, t.table), repo_id))
    if not plan:
        raise UserError(f"--push-to-hub: the export in {result.out} has no table with rows to push")
    return plan


def push_plan(plan: list[HubTarget], token: str, private: bool = False, announce=print) -> list[str]:
    """Upload every target of ``plan`` in order; returns the repositories' URLs. A failure names
    the repositories already pushed, so the user knows what a rerun repeats."""
    urls: list[str] = []
    for target in plan:
        try:
            urls.append(push_to_hub(target.folder, target.repo_id, token, private=private, announce=announce))
        except UserError as exc:
            done = f" (already pushed: {', '.join(t.repo_id for t in plan[:len(urls)])})" if urls else ""
            raise UserError(f"{exc}{done}") from None
    return urls


def push_to_hub(out: str, repo_id: str, token: str, private: bool = False, announce=print) -> str:
    """Upload the export folder as a dataset repo (created if missing); returns its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=out, repo_id=repo_id, repo_type="dataset",
                          commit_message=f"{TOOL} export", ignore_patterns=[".*"])
    except Exception as exc:  # network, permission, bad repo id: the user can fix these
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot push {out} to the hub as {repo_id}: {first}") from None
    announce(f"pushed to {url}")
    return str(url)
