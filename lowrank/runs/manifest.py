"""What a run folder holds, and what a run was made from, recorded in its run.json.

``manifest``: every file of the run (its npz, tables, and for scaling the files of each
``n<n>/``) with its size and sha256, written into run.json when the run is committed and
checked on every read: a folder whose files are not those its run.json lists (two runs
mixed, or a file changed after the run) is refused in one line. Folders written before the
manifest existed have none and are read as before.

``fingerprint``: what the numbers were computed from, beyond the options of ``identity``:
``sequences``, a sha256 of the token ids (and attention mask) analysed, with their count,
and ``model``, the model's revision (a package version, a hub commit, a GGUF file's sha256)
or, for a local folder, a sha256 of its weight files. A resume, or a run that would
replace a complete run of the same options, whose fingerprint differs is refused: the path
of a corpus or a model names it, the fingerprint says what it held.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lowrank.core.options import switch
from lowrank.errors import LowrankError

MANIFEST = "manifest"
FINGERPRINT = "fingerprint"

__all__ = [
    "FINGERPRINT",
    "MANIFEST",
    "check_manifest",
    "difference",
    "file_record",
    "fingerprint_of",
    "manifest_of",
    "model_digest",
    "sequence_digest",
]


# --- the files of a folder ---------------------------------------------------------------------


def file_record(path: Path) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of a file."""
    with path.open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    return {"bytes": path.stat().st_size, "sha256": digest}


def manifest_of(folder: Path, names: Iterable[str]) -> dict[str, Any]:
    """The manifest of the files ``names`` (paths relative to ``folder``, ``/``-separated;
    a folder name stands for every file below it), in sorted order."""
    files: dict[str, Any] = {}
    for name in names:
        path = folder / name
        below = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in below:
            files[file.relative_to(folder).as_posix()] = file_record(file)
    return {"files": dict(sorted(files.items()))}


def _listed(folder: Path, meta_path: Path, manifest: Any) -> dict[str, Any]:
    """The manifest's files, each a relative path inside ``folder`` with a size and a digest."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise LowrankError(f"'{meta_path}': {MANIFEST}.files must be an object")
    for name, record in files.items():
        parts = PurePosixPath(name).parts
        ok = bool(parts) and not PurePosixPath(name).is_absolute() and ".." not in parts
        good = (
            isinstance(record, dict)
            and isinstance(record.get("bytes"), int)
            and isinstance(record.get("sha256"), str)
        )
        if not (ok and good):
            raise LowrankError(f"'{meta_path}': {MANIFEST} entry {name[:80]!r} is damaged")
    return files


def check_manifest(folder: Path, meta: Mapping[str, Any]) -> None:
    """Check that ``folder`` holds exactly the bytes its run.json's manifest lists (sizes
    first, then sha256); a run.json without a manifest (an earlier lowrank) passes.

    Raises:
        LowrankError: a listed file missing, of another size or digest: the folder mixes
            runs, or a file was changed after the run was written.
    """
    if MANIFEST not in meta:
        return
    meta_path = folder / "run.json"
    files = _listed(folder, meta_path, meta[MANIFEST])
    for name, record in files.items():
        path = folder / name
        if not path.is_file():
            raise LowrankError(
                f"run folder '{folder}' lacks {name}, which its run.json lists: the folder is "
                f"incomplete; write the run again ({switch('overwrite')})"
            )
        try:
            size = path.stat().st_size
            same = size == record["bytes"] and file_record(path)["sha256"] == record["sha256"]
        except OSError as exc:
            raise LowrankError(f"cannot read '{path}': {exc.strerror or exc}") from exc
        if not same:
            raise LowrankError(
                f"'{path}' is not the file its run.json lists (other bytes): the folder mixes "
                "files of two runs, or the file was changed after the run was written; write "
                f"the run again ({switch('overwrite')})"
            )


def without_manifest(meta: Mapping[str, Any]) -> dict[str, Any]:
    """run.json as the run describes itself: the manifest belongs to the folder."""
    return {k: v for k, v in meta.items() if k != MANIFEST}


# --- what a run was made from --------------------------------------------------------------------


def sequence_digest(input_ids: np.ndarray, attention_mask: np.ndarray | None = None) -> str:
    """``sha256:<hex>`` of token ids [N, n] (as little-endian int64) and of their 0/1 mask
    (all ones when None), with the shape: equal digests, equal sequences."""
    ids = np.ascontiguousarray(np.asarray(input_ids), dtype="<i8")
    if attention_mask is None:
        mask = np.ones(ids.shape, dtype=np.uint8)
    else:
        mask = np.ascontiguousarray(np.asarray(attention_mask) != 0, dtype=np.uint8)
    h = hashlib.sha256(repr(ids.shape).encode())
    h.update(ids.tobytes())
    h.update(mask.tobytes())
    return f"sha256:{h.hexdigest()}"


def model_digest(model: Mapping[str, Any]) -> str | None:
    """What identifies a model's weights, from run.json's ``model``: its revision (a package
    version, a hub commit, ``sha256:`` of a GGUF file), or for a local folder a sha256 of
    its weight files (:func:`lowrank.inputs.model_files.weights_digest`); None for a model
    object, or a folder that is gone."""
    revision = model.get("revision")
    if isinstance(revision, str) and revision:
        return revision
    path = model.get("path")
    if model.get("kind") == "local" and isinstance(path, str):
        from lowrank.inputs.model_files import weights_digest

        return weights_digest(Path(path))
    return None


def fingerprint_of(
    input_ids: np.ndarray | None,
    attention_mask: np.ndarray | None,
    model: str | None,
) -> dict[str, Any]:
    """run.json's ``fingerprint``: the sequences' digest and count, and the model's."""
    record: dict[str, Any] = {"model": model}
    if input_ids is not None:
        record["sequences"] = sequence_digest(input_ids, attention_mask)
        record["num_sequences"] = int(np.asarray(input_ids).shape[0])
    return record


def difference(old: Any, new: Any) -> str | None:
    """What two fingerprints disagree on, in words (None: nothing either records differs)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return None
    if old.get("num_sequences") is not None and new.get("num_sequences") is not None:
        if old["num_sequences"] != new["num_sequences"]:
            return (
                f"it holds {old['num_sequences']} sequences, these inputs give "
                f"{new['num_sequences']}"
            )
        if old.get("sequences") and new.get("sequences") and old["sequences"] != new["sequences"]:
            return "its token ids differ from those these inputs give (the corpus changed?)"
    if old.get("model") and new.get("model") and old["model"] != new["model"]:
        return f"its model was {old['model']}, this one is {new['model']}"
    calibration = old.get("calibration"), new.get("calibration")
    if all(calibration) and calibration[0] != calibration[1]:
        return "its calibration token ids differ from those these inputs give"
    return None
