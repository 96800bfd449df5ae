"""Writing run folders: the output-folder checks and all-or-nothing writes.

Every file goes to a temporary name in its folder, is flushed and fsynced, and only then
renamed into place (arrays first, ``run.json`` last), so a failed write (a full disk, an I/O
error, a kill) never replaces a previous good run or checkpoint. File-system errors become one
:class:`~lowrank.LowrankError` line naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from lowrank.core.options import flag, switch
from lowrank.errors import LowrankError
from lowrank.runs.folders import (
    CHECKPOINT_JSON,
    NOTHING_REPLACED,
    RUN_JSON,
    cannot,
    read_checkpoint_info,
)

# --- the output folder --------------------------------------------------------------------


def check_out_dir(
    out: Path, identity: dict[str, Any], overwrite: bool, resume: bool = False
) -> None:
    """Refuse an output folder that holds something we must not replace, or that cannot be.

    A missing or empty folder is fine; one holding a run with the same ``identity`` is
    replaced (same numbers); another run needs ``overwrite``; foreign files are never touched.
    A partial run (a checkpoint) of the same identity needs ``resume`` or ``overwrite``.
    ``out`` under a regular file, or in a folder this process cannot write, is refused
    before any work starts.
    """
    check_writable(out)
    if not out.exists():
        return
    try:
        entries = {p.name for p in out.iterdir()}
    except OSError as exc:
        raise cannot("read", out, exc) from exc
    if not entries:
        return
    if resume and RUN_JSON in entries and CHECKPOINT_JSON not in entries:
        raise LowrankError(f"{flag('resume')}: the run in '{out}' is already complete")
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
    try:
        old = json.loads((out / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        old = None  # a damaged run: another run, as far as we can tell
    old = old if isinstance(old, dict) else {}
    if old.get("identity") != identity and not overwrite:
        raise LowrankError(
            f"{flag('out')} '{out}' holds another run ({old.get('command', 'unknown command')}): "
            f"choose another {flag('out')} or pass {switch('overwrite')}"
        )


def check_writable(out: Path, option: str = "--out") -> None:
    """Refuse ``out`` when it, or a folder above it, is a regular file, or when the nearest
    existing folder cannot be written (before a long run, not after it)."""
    try:
        _check_writable(out, option)
    except OSError as exc:  # a name too long, a loop of links, ...
        shown = str(out) if len(str(out)) <= 80 else f"{str(out)[:77]}..."
        raise LowrankError(
            f"{option} '{shown}' cannot be used: {exc.strerror or exc}; choose another {option}"
        ) from None


def _check_writable(out: Path, option: str) -> None:
    for place in (out, *out.parents):
        if place.is_dir():
            if not os.access(place, os.W_OK | os.X_OK):
                raise LowrankError(
                    f"{option} '{out}': cannot write in '{place}' (permission denied): "
                    f"choose another {option}"
                )
            return
        if place.exists() or place.is_symlink():
            if place == out:
                raise LowrankError(
                    f"{option} '{out}' is a file, not a folder: choose another {option}"
                )
            raise LowrankError(
                f"{option} '{out}': '{place}' is a file, not a folder: choose another {option}"
            )


# --- writing ------------------------------------------------------------------------------

Writer = Callable[[IO[bytes]], object]


def make_dir(folder: Path) -> None:
    """Create ``folder`` and its parents; one line when the file system refuses."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next(
            (p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None
        )
        if blocker is not None:
            raise LowrankError(
                f"cannot create the folder '{folder}': '{blocker}' is a file, not a folder"
            ) from exc
        raise cannot("create the folder", folder, exc) from exc


def write_files(folder: Path, files: Sequence[tuple[str, Writer]]) -> None:
    """Write ``files`` (name, writer) into ``folder`` all-or-nothing, renamed in order.

    Each file is written to a temporary name in ``folder``, flushed and fsynced; only when
    all of them are on disk are they renamed into place, in the order given (put the file
    that marks the folder complete, ``run.json``, last). A write that fails (a full disk, an
    I/O error) replaces nothing; a rename that fails puts back the files already renamed.

    Raises:
        LowrankError: naming the file and the reason, and whether anything was replaced.
    """
    make_dir(folder)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, write in files:
            staged.append((_stage(folder / name, write), folder / name))
        _commit(folder, staged)
    finally:
        for tmp, _ in staged:
            _discard(tmp)  # gone already after a commit
    _sync_dir(folder)


def _stage(final: Path, write: Writer) -> Path:
    """Write a temporary file beside ``final`` and flush it to disk; return its path."""
    try:
        fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as exc:
        raise cannot("write", final, exc, NOTHING_REPLACED) from exc
    tmp = Path(name)
    try:
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
    try:
        for tmp, final in staged:
            existed = final.exists()
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
        os.link(path, backup)
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


def _sync_dir(folder: Path) -> None:
    """Flush the folder's entries (the renames) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems do not sync folders; the files themselves are synced
    finally:
        os.close(fd)


def json_bytes(value: Any) -> bytes:
    """``value`` as indented UTF-8 JSON with a final newline (non-JSON values as strings)."""
    return (json.dumps(value, indent=2, default=str) + "\n").encode("utf-8")


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


def write_run(
    out: Path,
    meta: dict[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    npz: str,
    files: Mapping[str, bytes] | None = None,
) -> None:
    """Write a run folder all-or-nothing: the arrays (``npz``), then ``files`` (name ->
    bytes, e.g. a CSV table from :func:`csv_bytes`), then ``run.json``; ``out`` is created
    if needed (and removed again, when still empty, if the write fails)."""
    named: dict[str, Any] = dict(arrays)
    text = json_bytes(meta)
    parts: list[tuple[str, Writer]] = [(npz, lambda fh: np.savez_compressed(fh, **named))]
    parts += [(name, bytes_writer(data)) for name, data in (files or {}).items()]
    parts.append((RUN_JSON, bytes_writer(text)))
    created = not out.exists()
    try:
        write_files(out, parts)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):  # not empty, or already gone: leave it
                out.rmdir()
        raise
