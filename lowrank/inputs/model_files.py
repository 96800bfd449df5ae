"""The files of a local model folder, checked before transformers reads them.

Truncated or corrupt weights (safetensors, pytorch_model.bin, sharded indexes) and JSON files
that do not parse are refused in one line naming the file, instead of a traceback from deep
inside transformers. Only headers and directories are read, never the tensors.
"""

from __future__ import annotations

from pathlib import Path

from lowrank.errors import LowrankError

_JSON_LIMIT = 2**28  # bytes; the largest tokenizer.json files are tens of MB


def read_model_json(path: Path) -> object:
    """A JSON file of a model folder (at most 256 MiB); a damaged one is refused in one line
    naming it."""
    import json

    try:
        with path.open("rb") as fh:
            data = fh.read(_JSON_LIMIT + 1)
    except OSError as exc:
        raise LowrankError(f"cannot read '{path}': {exc.strerror or exc}") from exc
    if len(data) > _JSON_LIMIT:
        raise _damaged(path, "it is larger than the 256 MiB a model's JSON file may hold")
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise LowrankError(
            f"'{path}' is not valid JSON ({first_line(exc)}): re-download or re-save the model"
        ) from exc


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- the files of a model folder, checked before transformers reads them --------------------

# The weights from_pretrained reads, in its order of preference: the first present is used.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any one of these lets AutoTokenizer build the model's tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
# The JSON files transformers parses while loading a model and its tokenizer.
JSON_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "generation_config.json",
)
_SAFETENSORS_HEADER_LIMIT = 100_000_000  # bytes; the safetensors format refuses larger headers


def _damaged(path: Path, detail: str) -> LowrankError:
    return LowrankError(
        f"'{path}' is truncated or corrupt: {detail}; re-download or re-save the model"
    )


def _check_safetensors(path: Path) -> None:
    """Check a safetensors file's layout: an 8-byte little-endian header length, a JSON header
    mapping each tensor to ``data_offsets`` [begin, end) in the data that follows, and data
    covering exactly those bytes. Only the header is read, so any size is checked at once."""
    import json

    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, shorter than the 8-byte header length")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, _SAFETENSORS_HEADER_LIMIT):
            raise _damaged(path, f"a header of {length} bytes in a file of {size} bytes")
        try:
            header = json.loads(fh.read(length))
        except ValueError:
            header = None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise _damaged(path, f"tensor '{name}' has no valid data_offsets")
        end = max(end, *offsets)
    if 8 + length + end != size:
        held = size - 8 - length
        what = "holds" if held < end else "has trailing bytes after"
        raise _damaged(path, f"its tensors need {end} bytes of data and the file {what} {held}")


def _check_torch_file(path: Path) -> None:
    """Check a ``pytorch_model.bin``: a zip archive (torch >= 1.6) whose central directory,
    at the end of the file, lists members that fit in it; or a legacy pickle stream."""
    import zipfile

    with path.open("rb") as fh:
        magic = fh.read(2)
    if magic[:1] == b"\x80":  # a legacy pickle stream: torch.load checks it
        return
    if magic != b"PK":
        raise _damaged(path, "it is neither a zip archive nor a pickle")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise _damaged(path, f"its zip directory is unreadable ({exc})") from exc
    size = path.stat().st_size
    for member in members:
        if member.header_offset + member.compress_size > size:
            raise _damaged(path, f"member '{member.filename}' runs past the end of the file")


def _shards(index: Path) -> list[Path]:
    """The weight files a ``*.index.json`` names (its ``weight_map`` values)."""
    raw = read_model_json(index)
    weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _damaged(index, "it has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise LowrankError(
            f"'{index}' names weight file '{missing[0]}', which is missing from "
            f"'{index.parent}': re-download or re-save the model"
        )
    return [index.parent / n for n in names]


def check_model_files(folder: Path, complete: bool = True) -> None:
    """Refuse, in one line naming the file, a model folder transformers would choke on.

    Reads only headers and directories, never the tensors: the JSON files it parses
    (:data:`JSON_FILES`), the weights it would read (the first of :data:`WEIGHT_FILES`,
    with every shard an index names) checked by :func:`_check_safetensors` and
    :func:`_check_torch_file`.

    Args:
        folder: a folder written by ``save_pretrained`` (or a hub cache snapshot).
        complete: also require weights and tokenizer files (a local folder); False for a hub
            snapshot, where missing files are fetched from the hub.

    Raises:
        LowrankError: a truncated or corrupt weights file, a JSON file that does not parse,
            a shard an index names but the folder lacks, or (``complete``) no weights or no
            tokenizer files.
    """
    for name in JSON_FILES:
        if (folder / name).is_file():
            read_model_json(folder / name)
    if complete and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LowrankError(
            f"'{folder}' holds no tokenizer (none of {', '.join(TOKENIZER_FILES)}): save it "
            "with tokenizer.save_pretrained into the model folder"
        )
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        if complete:
            raise LowrankError(
                f"'{folder}' holds no weights (model.safetensors or pytorch_model.bin, or "
                "their sharded index): save the model with save_pretrained"
            )
        return
    files = _shards(weights) if weights.name.endswith(".index.json") else [weights]
    for file in files:
        try:
            if file.suffix == ".safetensors":
                _check_safetensors(file)
            else:
                _check_torch_file(file)
        except OSError as exc:
            raise LowrankError(f"cannot read '{file}': {exc.strerror or exc}") from exc
