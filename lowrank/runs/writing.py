"""Writing run folders: the output-folder checks, whole runs, and all-or-nothing files.

A run is committed whole: its files are written into a private folder beside ``out``, which
then replaces ``out`` in one step (:mod:`lowrank.runs.commit`), under the folder's lock
(:mod:`lowrank.runs.locks`), with a manifest of its files and the fingerprint of its inputs
in run.json (:mod:`lowrank.runs.manifest`). Single files inside a folder (checkpoints,
figures) go to a temporary name, are flushed and fsynced, and only then renamed into place,
so a failed write (a full disk, an I/O error, a kill) never replaces a previous good file.
File-system errors become one :class:`~lowrank.LowrankError` line naming the path and the
reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from lowrank.core.options import flag, switch
from lowrank.errors import LowrankError
from lowrank.runs import locks
from lowrank.runs.commit import commit_folder, make_dir, sync_dir, write_synced
from lowrank.runs.folders import (
    CHECKPOINT_JSON,
    NOTHING_REPLACED,
    RUN_JSON,
    cannot,
    read_checkpoint_info,
)
from lowrank.runs.locks import check_writable
from lowrank.runs.manifest import FINGERPRINT, MANIFEST, difference, manifest_of

__all__ = [
    "bytes_writer",
    "check_out_dir",
    "check_writable",
    "csv_bytes",
    "json_bytes",
    "make_dir",
    "write_files",
    "write_run",
    "write_run_files",
]


# --- the output folder --------------------------------------------------------------------


def check_out_dir(
    out: Path,
    identity: dict[str, Any],
    overwrite: bool,
    resume: bool = False,
    fingerprint: dict[str, Any] | None = None,
) -> None:
    """Refuse an output folder that holds something we must not replace, or that cannot be.

    A missing or empty folder is fine; one holding a run with the same ``identity`` is
    replaced (same numbers), unless its ``fingerprint`` (when both are known) says it was
    made from other inputs; another run needs ``overwrite``; foreign files are never
    touched. A partial run (a checkpoint) of the same identity needs ``resume`` or
    ``overwrite``. ``out`` under a regular file, in a folder this process cannot write, or
    being written by another process (its lock) is refused before any work starts.
    """
    check_writable(out)
    locks.probe(out)
    _check_existing(out, identity, overwrite, resume, fingerprint, final=False)


def check_replace(out: Path, identity: dict[str, Any], fingerprint: Any) -> None:
    """The last word before a run is committed to ``out`` (under its lock): what
    :func:`check_out_dir` refuses without ``overwrite``, except a partial run of this same
    configuration (this run's own checkpoint)."""
    _check_existing(out, identity, False, True, fingerprint, final=True)


def _entries(out: Path) -> set[str]:
    if not out.exists():
        return set()
    try:
        return {p.name for p in out.iterdir()}
    except OSError as exc:
        raise cannot("read", out, exc) from exc


def _check_existing(
    out: Path,
    identity: dict[str, Any],
    overwrite: bool,
    resume: bool,
    fingerprint: Any,
    final: bool,
) -> None:
    entries = _entries(out)
    if not entries:
        return
    if resume and not final and RUN_JSON in entries and CHECKPOINT_JSON not in entries:
        if _old_meta(out).get("identity") == identity:
            raise LowrankError(f"{flag('resume')}: the run in '{out}' is already complete")
        if not overwrite:
            old = _old_meta(out)
            raise LowrankError(
                f"{flag('resume')}: '{out}' holds another run "
                f"({old.get('command', 'unknown command')}), not a partial run of this one"
            )
    if CHECKPOINT_JSON in entries and RUN_JSON not in entries:
        if overwrite:
            return
        partial = read_checkpoint_info(out)
        if partial.get("identity") != identity:
            raise LowrankError(
                f"{flag('out')} '{out}' holds a partial run of another configuration: choose "
                f"another {flag('out')} or pass {switch('overwrite')}"
            )
        if not resume:
            raise LowrankError(
                f"{flag('out')} '{out}' holds a partial run ({partial['next_index']} of "
                f"{partial.get('total', '?')} sequences): pass {switch('resume')} to continue it "
                f"or {switch('overwrite')} to start again"
            )
        return
    if RUN_JSON not in entries:
        raise LowrankError(
            f"{flag('out')} '{out}' holds files that are not a lowrank run: choose an empty or "
            "new folder"
        )
    old = _old_meta(out)
    if overwrite:
        return
    if old.get("identity") != identity:
        raise LowrankError(
            f"{flag('out')} '{out}' holds another run ({old.get('command', 'unknown command')}): "
            f"choose another {flag('out')} or pass {switch('overwrite')}"
        )
    changed = difference(old.get(FINGERPRINT), fingerprint)
    if changed:
        raise LowrankError(
            f"{flag('out')} '{out}' holds a run of these options made from other inputs "
            f"({changed}): choose another {flag('out')} or pass {switch('overwrite')} to "
            "replace it"
        )


def _old_meta(out: Path) -> dict[str, Any]:
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        old = None  # a damaged run: another run, as far as we can tell
    return old if isinstance(old, dict) else {}


# --- single files, all or nothing ------------------------------------------------------------

Writer = Callable[[IO[bytes]], object]


def write_files(folder: Path, files: Sequence[tuple[str, Writer]]) -> None:
    """Write ``files`` (name, writer) into ``folder`` all-or-nothing, renamed in order.

    Each file is written to a temporary name in ``folder``, flushed and fsynced; only when
    all of them are on disk are they renamed into place, in the order given. A write that
    fails (a full disk, an I/O error) replaces nothing; a rename that fails puts back the
    files already renamed. ``folder`` must not be a symbolic link (a run folder's
    ``figures`` pointing elsewhere would have lowrank write there); temporary files and
    backups a killed writer left are removed.

    Raises:
        LowrankError: naming the file and the reason, and whether anything was replaced.
    """
    if folder.is_symlink():
        raise LowrankError(
            f"'{folder}' is a symbolic link: lowrank does not write through links; remove it "
            "or write elsewhere"
        )
    make_dir(folder)
    _clear_leftovers(folder, [name for name, _ in files])
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in files:
            staged.append((_stage(folder / name, write), folder / name))
        _commit(folder, staged)
    finally:
        for tmp, _ in staged:
            _discard(tmp)  # gone already after a commit
    sync_dir(folder)


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?:[^.]+\.tmp|old)$")


def _clear_leftovers(folder: Path, names: list[str]) -> None:
    """Remove the temporary files and backups of ``names`` that a writer which is no
    longer running left in ``folder``."""
    import psutil

    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _LEFTOVER.match(entry.name)
            if match and match["name"] in names and not psutil.pid_exists(int(match["pid"])):
                _discard(Path(entry.path))


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# the mode open() would give a new file: 0666 less the umask (read once, at import)
_FILE_MODE = 0o666 & ~_process_umask()


def _stage(final: Path, write: Writer) -> Path:
    """Write a temporary file beside ``final`` and flush it to disk; return its path."""
    try:
        fd, name = tempfile.mkstemp(
            dir=final.parent, prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp"
        )
    except OSError as exc:
        raise cannot("write", final, exc, NOTHING_REPLACED) from exc
    tmp = Path(name)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp's 0600 would hide the file from other users
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        _discard(tmp)
        raise cannot("write", final, exc, NOTHING_REPLACED) from exc
    except BaseException:
        _discard(tmp)
        raise
    return tmp


def _commit(folder: Path, staged: list[tuple[Path, Path]]) -> None:
    """Rename each staged file onto its final name, in order; on failure, undo."""
    done: list[tuple[Path, Path | None, bool]] = []  # (final, backup, existed)
    final = folder
    try:
        for tmp, final in staged:
            existed = os.path.lexists(final)
            backup = _backup(final) if existed else None
            try:
                tmp.replace(final)
            except BaseException:
                if backup is not None:
                    _discard(backup)
                raise
            done.append((final, backup, existed))
    except BaseException as exc:  # a failed rename, or Ctrl-C between two renames
        undone = _undo(done)
        if not isinstance(exc, OSError):
            raise
        tail = (
            NOTHING_REPLACED
            if undone
            else f"; '{folder}' may mix old and new files: write it again with "
            f"{switch('overwrite')}"
        )
        raise cannot("write", final, exc, tail) from exc
    finally:
        for _, backup, _ in done:
            if backup is not None:
                _discard(backup)


def _backup(path: Path) -> Path | None:
    """A hard link to the file about to be replaced (None where links are not possible)."""
    backup = path.with_name(f".{path.name}.{os.getpid()}.old")
    try:
        _discard(backup)
        os.link(path, backup, follow_symlinks=False)
    except OSError:
        return None
    return backup


def _undo(done: list[tuple[Path, Path | None, bool]]) -> bool:
    """Put back what the renames in ``done`` replaced; False if some of it could not be."""
    whole = True
    for final, backup, existed in reversed(done):
        try:
            if backup is not None:
                backup.replace(final)
            elif not existed:
                final.unlink()
            else:
                whole = False
        except OSError:
            whole = False
    return whole


def _discard(path: Path) -> None:
    # a leftover temporary file is harmless; the error that matters is raised
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def json_bytes(value: Any) -> bytes:
    """``value`` as indented UTF-8 JSON with a final newline. numpy scalars and arrays are
    written as the JSON values they hold (``np.False_`` as ``false``, not ``"False"``); any
    other non-JSON value as its string."""
    return (json.dumps(value, indent=2, default=json_value) + "\n").encode("utf-8")


def json_value(value: Any) -> Any:
    """The JSON form of a value ``json`` cannot write: numpy scalars as Python scalars,
    arrays as lists, anything else (paths, dtypes) as its string."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def csv_bytes(records: Sequence[Mapping[str, Any]]) -> bytes:
    """One row per record, columns from the first record's keys (empty: no bytes)."""
    text = io.StringIO(newline="")
    if records:
        writer = csv.DictWriter(text, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return text.getvalue().encode("utf-8")


def bytes_writer(data: bytes) -> Writer:
    return lambda fh: fh.write(data)


# --- whole runs -------------------------------------------------------------------------------


def write_run_files(
    folder: Path,
    meta: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    npz: str,
    files: Mapping[str, bytes] | None = None,
    include: Sequence[str] = (),
    shown: Path | None = None,
) -> None:
    """Write one run into the new folder ``folder``: the arrays (``npz``), ``files`` (name ->
    bytes, e.g. a CSV table from :func:`csv_bytes`), then ``run.json`` with the manifest of
    them all and of the subfolders ``include`` (a scaling run's ``n<n>``). Every file is
    flushed to disk. ``shown`` is where the folder will be, for messages."""
    shown = shown or folder
    try:
        folder.mkdir(exist_ok=True)  # the private folder itself, or a new n<n> inside it
    except OSError as exc:
        raise cannot("write", shown, exc, NOTHING_REPLACED) from exc
    named: dict[str, Any] = dict(arrays)
    write_synced(folder / npz, lambda fh: np.savez_compressed(fh, **named), shown / npz)
    for name, data in (files or {}).items():
        write_synced(folder / name, bytes_writer(data), shown / name)
    try:
        listed = manifest_of(folder, [npz, *(files or {}), *include])
    except OSError as exc:
        raise cannot("read", shown, exc, NOTHING_REPLACED) from exc
    record = {k: v for k, v in meta.items() if k != MANIFEST} | {MANIFEST: listed}
    write_synced(folder / RUN_JSON, bytes_writer(json_bytes(record)), shown / RUN_JSON)
    sync_dir(folder)


def write_run(
    out: Path,
    meta: dict[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    npz: str,
    files: Mapping[str, bytes] | None = None,
    overwrite: bool = True,
) -> None:
    """Write a run folder whole, in one step (:func:`lowrank.runs.commit.commit_folder`): the
    arrays (``npz``), ``files`` (name -> bytes), then ``run.json`` with their manifest.

    Without ``overwrite`` the folder is checked again under its lock just before the swap
    (:func:`check_replace`): a run another process committed meanwhile is not replaced.
    """
    identity = meta.get("identity")
    identity = identity if isinstance(identity, dict) else {}

    def check() -> None:
        check_replace(out, identity, meta.get(FINGERPRINT))

    with commit_folder(out, None if overwrite else check) as stage:
        write_run_files(stage, meta, arrays, npz=npz, files=files, shown=Path(out))
