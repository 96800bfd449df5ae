"""One writer per run folder: an advisory lock beside the folder, held for the whole run.

``<parent>/.<name>.lock`` is locked with ``flock`` (through the ``filelock`` package) by the
process that writes ``<parent>/<name>``; the holder writes its pid and host into the file, so
that a second writer is refused in one line naming them. The lock sits beside the folder, not
in it, because a run is committed by swapping a whole new folder into place
(:mod:`lowrank.runs.commit`). The kernel drops a ``flock`` when its process dies, so a killed
run never leaves a folder locked; the file itself is removed when the run lets go of it.

Within one process the lock is re-entrant: the CLI holds it around a command, the family's
API and the final commit take it again. Another process is never waited for.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lowrank.core.options import flag
from lowrank.errors import LowrankError

__all__ = ["check_writable", "hold", "lock_path", "probe", "writer_of"]


def canonical(out: Path) -> Path:
    """The absolute path of ``out`` with its links resolved (two spellings, one lock)."""
    return Path(out).resolve()


def lock_path(out: Path) -> Path:
    """``<parent>/.<name>.lock``, the lock file of run folder ``out``."""
    real = canonical(out)
    return real.parent / f".{real.name}.lock"


@dataclass
class _Held:
    lock: Any  # a filelock.FileLock
    path: Path
    count: int = 0
    created: list[Path] = field(default_factory=list)  # folders made for the lock file


_HELD: dict[Path, _Held] = {}
_GUARD = threading.Lock()


def writer_of(out: Path) -> str:
    """``pid 1234`` (and ``on host``, when another host holds it) of the process that holds
    ``out``'s lock, as its lock file says; ``another process`` when it says nothing."""
    try:
        text = lock_path(out).read_text(encoding="utf-8", errors="replace")[:200]
    except OSError:
        text = ""
    pid, _, host = text.strip().partition(" ")
    if not pid.isdigit():
        return "another process"
    here = socket.gethostname()
    return f"pid {pid}" + (f" on {host}" if host and host != here else "")


def _busy(out: Path, holder: str) -> LowrankError:
    return LowrankError(
        f"{flag('out')} '{out}' is being written by another lowrank run ({holder}): wait "
        f"until it ends, or choose another {flag('out')}"
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
            # a run replaces the folder whole, from its parent: both must be writable
            for folder in [place, *([canonical(place).parent] if place == out else [])]:
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise LowrankError(
                        f"{option} '{out}': cannot write in '{folder}' (permission denied): "
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


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; return those created (deepest first)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _acquire(out: Path) -> _Held:
    from filelock import FileLock, Timeout

    check_writable(out, flag("out"))
    path = lock_path(out)
    holder = writer_of(out)  # read before trying: the holder's words, whoever tries next
    try:
        created = _make_parents(path.parent)
    except OSError as exc:
        raise LowrankError(
            f"{flag('out')} '{out}' cannot be used: {exc.strerror or exc}; choose another "
            f"{flag('out')}"
        ) from None
    lock = FileLock(path, timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        _remove_empty(created)
        raise _busy(out, holder if holder != "another process" else writer_of(out)) from None
    except OSError as exc:
        _remove_empty(created)
        raise LowrankError(
            f"{flag('out')} '{out}': cannot lock '{path}': {exc.strerror or exc}; choose "
            f"another {flag('out')}"
        ) from None
    with contextlib.suppress(OSError):  # the pid is a courtesy to the next writer
        path.write_text(f"{os.getpid()} {socket.gethostname()}\n", encoding="utf-8")
    return _Held(lock, path, created=created)


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first
        with contextlib.suppress(OSError):
            folder.rmdir()


def acquire(out: Path) -> None:
    """Take ``out``'s lock (again, when this process holds it already).

    Raises:
        LowrankError: another process holds it (named by pid), or it cannot be made.
    """
    key = canonical(out)
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            held = _HELD[key] = _acquire(out)
        held.count += 1


def release(out: Path) -> None:
    """Let go of ``out``'s lock once; the last release removes the lock file."""
    key = canonical(out)
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[key]
        with contextlib.suppress(OSError):
            held.path.unlink()  # before the unlock: nobody can take a lock on a dead file
        held.lock.release()
        _remove_empty(held.created)


def holds(out: Path) -> bool:
    """Whether this process holds ``out``'s lock."""
    return canonical(out) in _HELD


@contextlib.contextmanager
def hold(out: Path | None) -> Iterator[None]:
    """Hold ``out``'s lock for the block (nothing when ``out`` is None)."""
    if out is None:
        yield
        return
    acquire(out)
    try:
        yield
    finally:
        release(out)


def probe(out: Path) -> None:
    """Refuse ``out`` when another process holds its lock; nothing is kept or created.

    Raises:
        LowrankError: naming the holder's pid.
    """
    if holds(out):
        return
    path = lock_path(out)
    if not path.exists():
        return
    try:
        import fcntl
    except ImportError:  # no flock here: the writer's own lock attempt decides
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return  # gone, or not ours to open: the writer's own lock attempt decides
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(out, writer_of(out)) from None
    except OSError:
        return
    finally:
        os.close(fd)  # closing drops the shared lock taken to look
