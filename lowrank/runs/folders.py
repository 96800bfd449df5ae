"""Reading run folders: run.json and the npz, validated before any number is used.

A run folder holds ``run.json`` (what was run: model, corpus, options, versions, timing), the
family's npz (the numbers) and sometimes tables (see docs/run-folders.md). Reading checks
``run.json`` against its family's schema and ``format_version``
(:mod:`lowrank.runs.schema`) and every array's dtype, shape and finiteness against it
(:mod:`lowrank.runs.arrays`); a damaged file is one :class:`LowrankError` line naming it.
Arrays are read by :mod:`lowrank.runs.npz` (headers first); the manifest and fingerprint
of :mod:`lowrank.runs.manifest` are checked by :class:`~lowrank.runs.formats.RunFormat`.
Writing is in :mod:`lowrank.runs.writing` and :mod:`lowrank.runs.commit`.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, NoReturn

from lowrank.core.options import switch
from lowrank.errors import LowrankError
from lowrank.runs.schema import CheckpointInfo, RunMeta, validate, validate_meta

RUN_JSON = "run.json"
CHECKPOINT_JSON = "checkpoint.json"
CHECKPOINT_NPZ = "checkpoint.npz"


NOTHING_REPLACED = "; nothing was replaced"


def restart_advice() -> str:
    """What a damaged partial run asks for, with the options named as the caller writes them."""
    return f"; pass {switch('overwrite')} (not {switch('resume')}) to start again"


def cannot(action: str, path: Path, exc: OSError, tail: str = "") -> LowrankError:
    """``cannot write 'runs/x/spectrum.npz': No space left on device (errno 28)``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = f" (errno {exc.errno})" if exc.errno else ""
    return LowrankError(f"cannot {action} '{path}': {reason}{code}{tail}")


# --- reading ------------------------------------------------------------------------------


def read_json(path: Path) -> Any:
    """A JSON file of a run folder; unreadable or truncated ones raise a one-line error."""
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise cannot("read", path, exc) from exc
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise LowrankError(f"'{path}' is not valid JSON (truncated?): {exc}") from exc


def missing_folder(folder: Path) -> NoReturn:
    """Refuse a run folder that does not exist, naming what an interrupted write of it left
    beside it, if anything."""
    aside = sorted(folder.parent.glob(f".{glob.escape(folder.name)}.old-*"))
    if aside:
        raise LowrankError(
            f"run folder '{folder}' does not exist: a write that was interrupted left its "
            f"runs in '{aside[0]}' and beside it; the next write of '{folder}' puts the "
            "complete one back (or rename it yourself)"
        )
    raise LowrankError(f"run folder '{folder}' does not exist")


def read_meta(folder: Path, fmt: str, schema: type[RunMeta], newest: int) -> dict[str, Any]:
    """``run.json`` of a run folder, checked to be of format ``fmt``, of a format version
    at most ``newest``, and to match ``schema`` (:mod:`lowrank.runs.schema`)."""
    if not folder.is_dir():
        if folder.exists():
            raise LowrankError(f"run folder '{folder}' is a file, not a folder")
        missing_folder(folder)
    meta_path = folder / RUN_JSON
    if not meta_path.is_file():
        raise LowrankError(f"'{folder}' is not a run folder: it has no {RUN_JSON}")
    meta = read_json(meta_path)
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != fmt:
        kind = f"a {found} run, not " if isinstance(found, str) and found[:8] == "lowrank-" else ""
        raise LowrankError(f"'{meta_path}' is {kind or 'not '}a {fmt} run")
    validate_meta(meta, schema, newest, meta_path)
    return meta


def run_files(folder: Path) -> set[str]:
    """The names in ``folder`` that belong to the run its run.json describes (its npz and
    tables, its ``n<n>`` folders): what a new run replaces rather than keeps. Empty when
    there is no readable run.json."""
    try:
        meta = json.loads((folder / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return set()
    if not isinstance(meta, dict):
        return set()
    names: set[str] = set()
    manifest = meta.get("manifest")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if isinstance(files, dict):
        names |= {str(name).split("/")[0] for name in files}
    fmt = meta.get("format")
    if isinstance(fmt, str) and fmt.startswith("lowrank-"):
        stem = fmt.removeprefix("lowrank-")
        names |= {f"{stem}.npz", f"{stem}.csv", f"{stem}.json"}
    ns = meta.get("ns")
    if isinstance(ns, list):
        names |= {f"n{n}" for n in ns if isinstance(n, int) and not isinstance(n, bool)}
    return names


def read_checkpoint_info(out: Path) -> dict[str, Any]:
    """``checkpoint.json`` of ``out``, validated (one line saying how to start again)."""
    path = out / CHECKPOINT_JSON
    try:
        info = read_json(path)
    except LowrankError as exc:
        raise LowrankError(f"{exc}{restart_advice()}") from None
    validate(CheckpointInfo, info, path, restart_advice())
    return dict(info)
