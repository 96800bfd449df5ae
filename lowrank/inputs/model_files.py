"""The files of a local model folder, checked before transformers reads them.

Truncated or corrupt weights (safetensors, pytorch_model.bin, sharded indexes) and JSON files
that do not parse are refused in one line naming the file, instead of a traceback from deep
inside transformers. Only headers and directories are read, never the tensors.
"""

from __future__ import annotations

import re
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
    except RecursionError:  # thousands of nested brackets: no model writes that
        raise LowrankError(
            f"'{path}' nests its JSON deeper than Python can read: it is not a model's file; "
            "re-download or re-save the model"
        ) from None


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


def _check_safetensors(path: Path) -> dict[str, object]:
    """Check a safetensors file's layout: an 8-byte little-endian header length, a JSON header
    mapping each tensor to ``data_offsets`` [begin, end) in the data that follows, and data
    covering exactly those bytes. Only the header is read, so any size is checked at once;
    returns the header (tensor name -> dtype, shape, offsets)."""
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
        except (ValueError, RecursionError):
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
    return header


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


# --- config.json against the weights ---------------------------------------------------------

# Whole-number fields of config.json that size the model, and the most any real model has:
# beyond that a value is a typo or a hostile file (100000 layers hangs the build).
_COUNTS = {
    "num_hidden_layers": 2_000,
    "n_layer": 2_000,
    "num_attention_heads": 4_096,
    "n_head": 4_096,
    "num_key_value_heads": 4_096,
    "hidden_size": 1 << 17,
    "n_embd": 1 << 17,
    "head_dim": 1 << 14,
    "intermediate_size": 1 << 20,
    "max_position_embeddings": 1 << 24,
    "n_positions": 1 << 24,
    "vocab_size": 1 << 24,
}
_LAYER = re.compile(r"(?:^|\.)(?:layers?|h|blocks?)\.(\d+)\.")


def _count(raw: dict[str, object], *keys: str) -> int | None:
    return next((v for k in keys if isinstance(v := raw.get(k), int)), None)


def _memory_bytes() -> int | None:
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_config(folder: Path, files: list[Path], names: list[str] | None) -> None:
    """Refuse a ``config.json`` that transformers would choke on, or that does not describe
    the weights beside it, before any model is built.

    Sizes (layers, heads, widths) must be whole numbers in a plausible range; a config that
    asks for more layers than the weights hold (tensor names ``...layers.<i>.``, read from
    the safetensors headers ``names``), more weights than the files hold (at least
    layers x hidden x min(hidden, heads x head_dim) bytes, the query and output projections
    at half a byte per weight), or weights larger than this machine's memory is refused.

    Raises:
        LowrankError: naming the file, the field and what to do.
    """
    path = folder / "config.json"
    if not path.is_file():
        return
    raw = read_model_json(path)
    if not isinstance(raw, dict):
        raise LowrankError(f"'{path}' is not a JSON object: re-download or re-save the model")
    for key, limit in _COUNTS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise LowrankError(
                f"'{path}': {key} must be a whole number, got {value!r}: fix config.json or "
                "re-save the model"
            )
        if not 1 <= value <= limit:
            raise LowrankError(
                f"'{path}': {key} is {value}, not between 1 and {limit}: fix config.json or "
                "re-save the model"
            )
    _check_against_weights(path, raw, files, names)


def _renumber(name: str, layer: int) -> str:
    """``encoder.layer.1.attention...`` as the same tensor of ``layer``."""
    match = _LAYER.search(name)
    return name if match is None else f"{name[: match.start(1)]}{layer}{name[match.end(1) :]}"


def _check_layers(path: Path, layers: int, names: list[str]) -> None:
    """Refuse a config asking for more layers than the tensor names hold, naming the
    attention tensors the missing layers would lack (they would be random)."""
    held = {int(m[1]) for name in names if (m := _LAYER.search(name))}
    if not held or layers <= max(held) + 1:
        return
    last = max(held)
    template = [n for n in names if (m := _LAYER.search(n)) and int(m[1]) == last]
    attention = [n for n in template if "attn" in n or "attention" in n] or template
    missing = [_renumber(name, i) for i in range(last + 1, layers) for name in sorted(attention)]
    raise LowrankError(
        f"model folder '{path.parent}': its weights lack {len(missing)} attention tensors its "
        f"config.json asks for (e.g. {missing[0]}), which would be random: the config "
        f"({layers} layers) does not match the weights ({last + 1} layers); re-save the model"
    )


def _check_against_weights(
    path: Path, raw: dict[str, object], files: list[Path], names: list[str] | None
) -> None:
    layers = _count(raw, "num_hidden_layers", "n_layer")
    if layers is None or not files:
        return
    if names:
        _check_layers(path, layers, names)
    stored = sum(f.stat().st_size for f in files)
    hidden = _count(raw, "hidden_size", "n_embd")
    heads = _count(raw, "num_attention_heads", "n_head")
    if hidden is not None:
        width = hidden
        head_dim = _count(raw, "head_dim")
        if heads is not None and head_dim is not None:
            width = min(hidden, heads * head_dim)
        least = layers * hidden * width  # bytes: 2 projections of hidden x width, 4 bits each
        if least > stored:
            raise LowrankError(
                f"'{path}' describes {layers} layers of width {hidden}, at least "
                f"{least / 1e9:.1f} GB of weights, but the weight files hold "
                f"{stored / 1e9:.2f} GB: the config does not match the weights; re-save the "
                "model"
            )
    memory = _memory_bytes()
    if memory is not None and stored > memory:
        raise LowrankError(
            f"the weights of '{path.parent}' take {stored / 1e9:.1f} GB, more than this "
            f"machine's {memory / 1e9:.1f} GB of memory"
        )


def check_model_files(folder: Path, complete: bool = True) -> None:
    """Refuse, in one line naming the file, a model folder transformers would choke on.

    Reads only headers and directories, never the tensors: the JSON files it parses
    (:data:`JSON_FILES`), the weights it would read (the first of :data:`WEIGHT_FILES`,
    with every shard an index names) checked by :func:`_check_safetensors` and
    :func:`_check_torch_file`, and ``config.json`` against them (:func:`check_config`).

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
        check_config(folder, [], None)
        return
    files = _shards(weights) if weights.name.endswith(".index.json") else [weights]
    names: list[str] | None = []
    for file in files:
        try:
            if file.suffix == ".safetensors":
                names = [*(names or []), *_check_safetensors(file)] if names is not None else None
            else:
                _check_torch_file(file)
                names = None  # a pickle's tensor names are not read (that would run it)
        except OSError as exc:
            raise LowrankError(f"cannot read '{file}': {exc.strerror or exc}") from exc
    check_config(folder, files, names)


def weight_files(folder: Path) -> list[Path]:
    """The weight files ``from_pretrained`` reads from ``folder``: the first of
    :data:`WEIGHT_FILES` present, or every shard its index names (empty: none)."""
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        return []
    return _shards(weights) if weights.name.endswith(".index.json") else [weights]


def weights_digest(folder: Path) -> str | None:
    """``sha256:<hex>`` over the weight files of a model folder (names and bytes, in
    order), what a run records of a local model; None when the folder holds none or cannot
    be read. Reads every byte of the weights (about 1 s per GB)."""
    import hashlib

    try:
        files = weight_files(folder)
        if not files:
            return None
        h = hashlib.sha256()
        for file in files:
            with file.open("rb") as fh:
                h.update(file.name.encode() + b"\0")
                h.update(hashlib.file_digest(fh, "sha256").digest())
    except (OSError, LowrankError):
        return None
    return f"sha256:{h.hexdigest()}"
