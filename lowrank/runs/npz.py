"""Reading an npz of a run folder: what it declares is checked before anything is inflated.

An npz is a zip archive of ``.npy`` members, each opening with a header that declares its
dtype and shape. :func:`read_npz` reads every header first (a few hundred bytes each), builds
the family's array spec from run.json and the small members (names, counts), and refuses,
before inflating any large member: members that are not arrays or hold Python objects, a
member the spec does not name that would take more than 64 MiB, a named member of the
wrong dtype or shape, and arrays that together would not fit this machine's memory. Only
then are the arrays read, and their values checked (:func:`lowrank.runs.arrays.check_arrays`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.arrays import ArraySpec, check_arrays, layout_problem

SMALL = 1 << 20  # bytes: a member this small is read whole to build the spec
LOOSE = 64 << 20  # bytes: the most a member the spec does not name (or a text array) may take
MAX_MEMBERS = 4096

Spec = Callable[[Mapping[str, np.ndarray]], Mapping[str, ArraySpec]]

__all__ = ["read_npz"]


@dataclass(frozen=True)
class Member:
    """One ``.npy`` member as its header declares it."""

    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    def stub(self) -> np.ndarray:
        """An array of the declared dtype and shape that takes no memory (all zeros)."""
        return np.lib.stride_tricks.as_strided(
            np.zeros((), self.dtype), shape=self.shape, strides=(0,) * len(self.shape)
        )


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"


def _header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Member:
    with archive.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(fh, max_header_size=10000)
    return Member(info, tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran))


def _members(path: Path, archive: zipfile.ZipFile) -> dict[str, Member]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise LowrankError(f"'{path}' holds {len(infos)} members; no run has that many arrays")
    members: dict[str, Member] = {}
    for info in infos:
        if not info.filename.endswith(".npy"):
            raise LowrankError(f"'{path}' holds '{info.filename[:80]}', which is not an array")
        member = _header(archive, info)
        name = info.filename.removesuffix(".npy")
        if member.dtype.hasobject or member.dtype.kind == "V":
            raise LowrankError(f"'{path}': {name} holds Python objects, which lowrank never reads")
        members[name] = member
    return members


def _memory() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def _check_declared(
    path: Path, members: Mapping[str, Member], spec: Mapping[str, ArraySpec], loose: bool
) -> None:
    """Refuse what the headers declare, before any large member is inflated."""
    for name, member in members.items():
        if name in spec:
            problem = layout_problem(member.dtype, member.shape, spec[name])
            if problem:
                raise LowrankError(f"'{path}': {name} {problem}")
        elif loose and member.nbytes > LOOSE:
            raise LowrankError(
                f"'{path}' holds an array '{name[:80]}' of {_size(member.nbytes)} that its "
                "run.json does not describe"
            )
    total = sum(m.nbytes for m in members.values())
    memory = _memory()
    if memory is not None and total > memory:
        raise LowrankError(
            f"'{path}' declares {_size(total)} of arrays, more than this machine's "
            f"{_size(memory)} of memory"
        )


def _load(archive: zipfile.ZipFile, member: Member) -> np.ndarray:
    with archive.open(member.info) as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def _read(
    path: Path, spec: Spec | None, loose: bool
) -> tuple[dict[str, np.ndarray], Mapping[str, ArraySpec]]:
    with zipfile.ZipFile(path) as archive:
        members = _members(path, archive)
        for name, member in members.items():
            if member.dtype.kind in "US" and member.nbytes > LOOSE:
                raise LowrankError(
                    f"'{path}': {name} declares {_size(member.nbytes)} of text; no run holds that"
                )
        small = {
            name: _load(archive, m)
            for name, m in members.items()
            if m.nbytes <= SMALL or m.dtype.kind in "US"
        }
        view = {name: small[name] if name in small else m.stub() for name, m in members.items()}
        wanted = dict(spec(view)) if spec is not None else {}
        _check_declared(path, members, wanted, loose)
        arrays = {n: small[n] if n in small else _load(archive, m) for n, m in members.items()}
    return arrays, wanted


def read_npz(
    path: Path, spec: Spec | None = None, *, unnamed_limit: bool = True
) -> dict[str, np.ndarray]:
    """The arrays of an npz of a run folder, checked against ``spec`` (given the arrays'
    headers and small members, what the npz must hold) before the large ones are read and
    after (values); no pickles.

    ``unnamed_limit=False`` lifts the 64 MiB limit on members the spec does not name, for
    checkpoints, whose family codec checks every array's shape once loaded (a keys
    checkpoint of a 30-layer model holds covariance sums of 140 MB); the check that all
    arrays fit this machine's memory still holds.

    Raises:
        LowrankError: a missing, damaged or truncated file, or one whose arrays are not what
            the spec says (one line naming the file and the array).
    """
    if not path.is_file():
        raise LowrankError(f"run folder '{path.parent}' has no {path.name}")
    try:
        arrays, wanted = _read(path, spec, unnamed_limit)
    except LowrankError:
        raise
    except Exception as exc:
        # any failure to decode the bytes is damage: zipfile, zlib, numpy's header parser
        # and its allocator each raise their own types
        reason = (str(exc).splitlines() or [type(exc).__name__])[0].split(". ")[0]
        raise LowrankError(f"'{path}' is corrupted or truncated: {reason}") from exc
    if spec is not None:
        check_arrays(path, arrays, wanted)
    return arrays
