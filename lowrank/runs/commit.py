"""A run folder changes from one complete run to another in one step.

The new run is written whole into a private folder beside the old one,
``<parent>/.<name>.new-<pid>-<token>`` (every file flushed to disk), and then swapped into
place with one ``renameat2(RENAME_EXCHANGE)`` (Linux); a missing or empty ``<name>`` is
simply replaced by one ``rename``. Before the swap the old folder is untouched; after it, the
folder is the new run; the old run, now under the private name, is deleted. A kill at any
point therefore leaves the old run or the new one at ``<name>``, never a mixture, and
perhaps a private folder that the next write of ``<name>`` removes (it holds nothing the
folder lacks). Where the exchange is not available (another system, a file system without
it), the old folder is first renamed aside (``.<name>.old-<pid>-<token>``): a kill between
the two renames leaves ``<name>`` missing for a moment, and the next write puts back the
complete one of the two, the new run if it was whole.

Files in the old folder that are no run's (notes, ``figures/``) are carried into the new one
as hard links before the swap, so an ``--overwrite`` loses none of the user's files; the old
run's own files, its checkpoint and leftovers are not carried. The writer holds the folder's
lock (:mod:`lowrank.runs.locks`) from before the check to after the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from lowrank.errors import LowrankError
from lowrank.runs import locks
from lowrank.runs.folders import (
    CHECKPOINT_JSON,
    CHECKPOINT_NPZ,
    NOTHING_REPLACED,
    RUN_JSON,
    cannot,
    run_files,
)

Writer = Callable[[IO[bytes]], object]

__all__ = ["commit_folder", "leftovers", "make_dir", "sync_dir", "write_synced"]


# --- small steps every writer shares ---------------------------------------------------------


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


def write_synced(path: Path, write: Writer, shown: Path | None = None) -> None:
    """Write a new file ``path`` (never through a link, never over a file) and flush it to
    disk; a failure is one line naming ``shown`` (the file's final place)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise cannot("write", shown or path, exc, NOTHING_REPLACED) from exc


def sync_dir(folder: Path) -> None:
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


# --- leftovers ---------------------------------------------------------------------------------

_PRIVATE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>new|old)-(?P<pid>\d+)-(?P<token>[0-9a-f]+)$")


def leftovers(out: Path) -> list[Path]:
    """The private folders an interrupted write of ``out`` left beside it."""
    real = locks.canonical(out)
    try:
        entries = list(os.scandir(real.parent))
    except OSError:
        return []
    found = []
    for entry in entries:
        match = _PRIVATE.match(entry.name)
        if match and match["name"] == real.name:
            found.append(Path(entry.path))
    return sorted(found)


def _part(path: Path, group: str) -> str:
    match = _PRIVATE.match(path.name)
    return match[group] if match else ""


def _recover(real: Path) -> None:
    """Under the lock: finish or undo an interrupted two-rename swap, then remove every
    private folder of ``real`` (none can be in use: only the lock holder makes them)."""
    found = leftovers(real)
    if not os.path.lexists(real):
        for old in [p for p in found if _part(p, "kind") == "old"]:
            token = _part(old, "token")
            new = next((p for p in found if _part(p, "token") == token and p != old), None)
            whole = new if new is not None and (new / RUN_JSON).is_file() else old
            with contextlib.suppress(OSError):
                whole.rename(real)
                found.remove(whole)
                break
    for path in found:
        _remove_tree(path)


def _remove_tree(path: Path) -> None:
    """Delete a private folder (links inside are removed, never followed)."""
    with contextlib.suppress(OSError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
        else:
            shutil.rmtree(path)


# --- the swap ------------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


@functools.cache
def _renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def exchange(a: Path, b: Path) -> bool:
    """Swap the two names atomically; False where this system or file system cannot."""
    call = _renameat2()
    if call is None:
        return False
    sys.audit("lowrank.runs.exchange", os.fspath(a), os.fspath(b))  # the one step, for auditors
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), os.fsdecode(b))


def _is_empty_dir(path: Path) -> bool:
    if path.is_symlink() or not path.is_dir():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _swap(stage: Path, real: Path, token: str) -> Path | None:
    """Put the staged folder at ``real`` in one step; return where the old folder now is
    (to delete), or None when there was none."""
    if not os.path.lexists(real) or _is_empty_dir(real):
        stage.rename(real)  # an empty folder is replaced whole
        return None
    with contextlib.suppress(OSError):  # the folder keeps its permissions
        stage.chmod(stat.S_IMODE(real.stat().st_mode))
    if exchange(stage, real):
        return stage
    old = real.parent / f".{real.name}.old-{os.getpid()}-{token}"
    real.rename(old)
    try:
        stage.rename(real)
    except BaseException:
        old.rename(real)
        raise
    return old


# --- what the new folder keeps of the old one ---------------------------------------------------


def _not_carried(old: Path) -> set[str]:
    """The names of the old folder that belong to its run (or to no one): never carried."""
    names = {RUN_JSON, CHECKPOINT_JSON, CHECKPOINT_NPZ}
    return names | run_files(old)


def _leftover_file(name: str) -> bool:
    return name.startswith(".") and name.endswith((".tmp", ".old"))


def _carry(old: Path, stage: Path) -> None:
    """Hard-link the user's entries of ``old`` into ``stage`` (the old folder stays whole)."""
    if not old.is_dir() or old.is_symlink():
        return
    skip = _not_carried(old)
    with os.scandir(old) as entries:
        for entry in entries:
            name = entry.name
            if name in skip or _leftover_file(name) or os.path.lexists(stage / name):
                continue
            _link_tree(Path(entry.path), stage / name)


def _link_tree(src: Path, dst: Path) -> None:
    """``src`` at ``dst``: files hard-linked (copied where links fail), folders rebuilt,
    symbolic links copied as links (never followed)."""
    if src.is_symlink():
        dst.symlink_to(src.readlink())
    elif src.is_dir():
        dst.mkdir()
        shutil.copystat(src, dst, follow_symlinks=False)
        with os.scandir(src) as entries:
            for entry in entries:
                _link_tree(Path(entry.path), dst / entry.name)
    elif src.is_file():
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copy2(src, dst, follow_symlinks=False)


def _sweep(old: Path, real: Path) -> None:
    """After the swap: move into the new folder what appeared in the old one meanwhile."""
    skip = _not_carried(old)
    with contextlib.suppress(OSError), os.scandir(old) as entries:
        for entry in entries:
            name = entry.name
            if name in skip or _leftover_file(name) or os.path.lexists(real / name):
                continue
            with contextlib.suppress(OSError):
                Path(entry.path).rename(real / name)


# --- the commit ----------------------------------------------------------------------------------


@contextlib.contextmanager
def commit_folder(out: Path, check: Callable[[], None] | None = None) -> Iterator[Path]:
    """A private folder to write a whole run into; on leaving the block without an error it
    becomes ``out`` in one step (see the module's text).

    ``check`` runs under the folder's lock before anything is written (the caller's last
    word on whether ``out`` may be replaced). On an error, or an interrupt, inside the block
    the private folder is removed and ``out`` is as it was.

    Raises:
        LowrankError: another process writes ``out``, or the file system refuses (one line
            naming the path; "nothing was replaced").
    """
    out = Path(out)
    real = locks.canonical(out)
    with locks.hold(out):
        make_dir(real.parent)
        _recover(real)
        if check is not None:
            check()
        token = secrets.token_hex(4)
        stage = real.parent / f".{real.name}.new-{os.getpid()}-{token}"
        try:
            stage.mkdir()
        except OSError as exc:
            raise cannot("write", out, exc, NOTHING_REPLACED) from exc
        try:
            yield stage
            _carry(real, stage)
            sync_dir(stage)
            old = _swap(stage, real, token)
        except OSError as exc:
            _remove_tree(stage)
            raise cannot("write", out, exc, NOTHING_REPLACED) from exc
        except BaseException:
            _remove_tree(stage)
            raise
        _after(old, real)


def _after(old: Path | None, real: Path) -> None:
    """The old run is gone: keep what reached it meanwhile, delete it, flush the swap."""
    sync_dir(real.parent)
    if old is None:
        return
    _sweep(old, real)
    with contextlib.suppress(OSError):  # a process standing in the old folder follows it
        cwd = Path.cwd()
        if cwd == old or old in cwd.parents:
            os.chdir(real)
    _remove_tree(old)
