"""Models and data the user already holds: the Python API's inputs, prepared like the CLI's.

The API functions take ``model`` as a preset name, hub id or local folder (what ``--model``
takes) *or* an in-memory ``transformers.PreTrainedModel`` with its ``tokenizer``, and ``data``
as what ``--data`` takes (None, a path, a dataset id) *or* texts (a list, or any iterable of
strings such as a ``datasets`` column, read lazily) *or* token ids (an integer tensor or array
``[N, n]``, or a mapping with ``input_ids`` and ``attention_mask`` ``[N, n]``, as a tokenizer
returns it). :func:`prepare_any` turns every combination into the same
:class:`~lowrank.inputs.prepared.Prepared` that :func:`~lowrank.inputs.prepared.prepare` builds
for the CLI, so the analyses downstream do not know the difference. ``run.json`` records an
in-memory model with ``kind: "memory"`` and in-memory data with corpus ``kind: "memory"``.

An in-memory model is the user's object: :func:`preserved` puts it back exactly as it was
found (attention implementation, train/eval mode of every module, hooks, device,
``requires_grad``), also when the analysis fails. :func:`prepared_inputs` does both at once::

    with prepared_inputs(model, tokenizer, texts, config) as prep:
        ...  # prep.loaded.model is in eval mode on prep.device
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.inputs.config import PAPER_SEQ_LEN, DType, InputConfig
from lowrank.inputs.held import (
    MEMORY,
    describe,
    read_texts,
    text_corpus,
    token_arrays,
    token_sequences,
)
from lowrank.inputs.prepared import Prepared, prepare, report
from lowrank.inputs.state import preserved

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lowrank.inputs.corpora import Corpus, Sequences
    from lowrank.inputs.models import LoadedModel

log = logging.getLogger(__name__)

# What ``model=`` takes: a name or folder (the CLI's --model) or a model object.
ModelInput = Union[str, "os.PathLike[str]", "PreTrainedModel"]
# What ``data=`` takes: None / a path or dataset id (the CLI's --data), texts, or token ids
# ([N, n] integer tensor or array, or {"input_ids": [N, n], "attention_mask": [N, n]}).
DataInput = Union[
    None, str, "os.PathLike[str]", Iterable[str], "torch.Tensor", np.ndarray, Mapping[str, Any]
]


def is_memory_model(model: object) -> bool:
    """True for a model object, False for a name or a folder."""
    return not isinstance(model, str | os.PathLike)


def is_memory_data(data: object) -> bool:
    """True for texts or token ids, False for None, a path or a dataset id."""
    return data is not None and not isinstance(data, str | os.PathLike)


def in_memory(model: object, data: object) -> bool:
    """True when the model or the data is an object (the run's identity then waits for the
    prepared inputs, see :func:`memory_identity`)."""
    return is_memory_model(model) or is_memory_data(data)


def is_token_data(data: object) -> bool:
    """True for token ids: an array or tensor, or a mapping holding ``input_ids``."""
    if isinstance(data, Mapping):
        return True
    if isinstance(data, np.ndarray):
        return True
    return type(data).__module__.startswith("torch") and hasattr(data, "shape")


def model_label(model: ModelInput) -> str:
    """The name a run records for ``model``: what the user typed, or for a model object its
    ``name_or_path`` (``ClassName`` when it has none)."""
    if not is_memory_model(model):
        return os.fspath(model)  # type: ignore[arg-type]
    config = getattr(model, "config", None)
    name = getattr(config, "name_or_path", "") or ""
    return str(name) if name else type(model).__name__


def _model_dtype(model: Any) -> str:
    import torch

    dtype = getattr(model, "dtype", torch.float32)
    name = str(dtype).removeprefix("torch.")
    if name not in ("float32", "float16", "bfloat16"):
        raise LowrankError(
            f"the model's dtype is {name}: lowrank analyses float32, float16 or bfloat16 models"
        )
    return name


def settle_config(
    config: InputConfig, model: ModelInput, data: DataInput, *, dtype: DType | None = None
) -> InputConfig:
    """The config a run with these inputs records (its ``model``, ``data``, ``dtype``, ``n``).

    * ``model``: :func:`model_label`; ``data``: the path as a string, or None for data in
      memory (the run's identity then carries a digest of the token ids, see
      :func:`memory_identity`).
    * ``dtype`` None: ``config.dtype`` for a model loaded by name, the model's own dtype for
      a model object (an object is never converted; another ``dtype`` is refused).
    * Token ids ``[N, n]``: ``seq_len`` is n. A ``config.seq_len`` left at the default 512
      follows the tensor; any other value must equal n.

    Raises:
        LowrankError: a dtype the model object does not have, or a seq_len that is not n.
    """
    fields: dict[str, Any] = {"model": model_label(model)}
    if is_memory_data(data):
        fields["data"] = None
    elif data is not None:
        fields["data"] = os.fspath(data)  # type: ignore[arg-type]
    if is_memory_model(model):
        own = _model_dtype(model)
        if dtype is not None and dtype != own:
            raise LowrankError(
                f"{named('dtype', dtype)}: the model object is {own}, and lowrank does not "
                f"convert a "
                f"model it was given; convert it yourself or leave dtype unset"
            )
        fields["dtype"] = own
    elif dtype is not None:
        fields["dtype"] = dtype
    if is_memory_data(data) and is_token_data(data):
        ids, _ = token_arrays(data)
        n = ids.shape[1]
        if config.seq_len != n:
            if config.seq_len != PAPER_SEQ_LEN:
                raise LowrankError(
                    f"{named('seq_len', config.seq_len)}, but the input ids have n = {n} columns: "
                    f"leave seq_len unset or pass {n}"
                )
            log.info(f"token ids given: n = {n}, their number of columns")
        fields["seq_len"] = n
    return replace(config, **fields)


def memory_identity(model: ModelInput, data: DataInput, prep: Prepared) -> dict[str, Any]:
    """What a run's identity adds for in-memory inputs (empty for names and paths).

    The sequences' digest (sha256 of the token ids and lengths) stands for data in memory; a
    model object is named by its class and ``name_or_path``.
    """
    extra: dict[str, Any] = {}
    if is_memory_model(model):
        extra["model_object"] = f"{type(model).__name__}:{model_label(model)}"
    if is_memory_data(data):
        seqs = prep.sequences
        digest = hashlib.sha256(seqs.input_ids.tobytes() + seqs.lengths.tobytes()).hexdigest()
        extra["data_digest"] = digest[:32]
    return extra


# -- the model ------------------------------------------------------------------------------


def _model_device(model: Any) -> torch.device:
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def memory_model(
    model: object, tokenizer: PreTrainedTokenizerBase | None, config: InputConfig
) -> tuple[LoadedModel, torch.device]:
    """Wrap a model object as a :class:`LoadedModel` (source kind ``memory``), in eval mode
    on ``config.device`` (``auto``: where the model already is). Call inside
    :func:`preserved`, which undoes the mode and the move.

    Raises:
        LowrankError: not a ``PreTrainedModel``, an attention the capture cannot see, or a
            model spread over devices (``device_map``) asked to move.
    """
    from transformers import PreTrainedModel

    from lowrank.core.device import resolve_device
    from lowrank.inputs.models import LoadedModel, ModelSource, _shape, check_capturable

    if not isinstance(model, PreTrainedModel):
        raise LowrankError(
            f"model: a preset name, hub id, local folder or transformers PreTrainedModel, not "
            f"{type(model).__name__}"
        )
    label = model_label(model)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise LowrankError(
            f"model '{label}' has weights on the meta device (created without loading them): "
            "load the model's weights first (from_pretrained, or load_state_dict)"
        )
    check_capturable(label, model.config.to_dict())
    layers, heads, positions = _shape(model.config)
    here = _model_device(model)
    device = here if config.device == "auto" else resolve_device(config.device)
    if device.type != here.type or (device.index is not None and device != here):
        if getattr(model, "hf_device_map", None):
            raise LowrankError(
                f"{named('device', config.device)}: the model is spread over devices (device_map); "
                "leave device unset"
            )
        model.to(device)  # type: ignore[arg-type]  # transformers' stub wants a model
    model.eval()
    source = ModelSource(label, MEMORY, label, None)
    # tokenizer None is allowed for token ids: nothing downstream of the sequences needs it
    loaded = LoadedModel(model, tokenizer, source, layers, heads, positions)  # type: ignore[arg-type]
    return loaded, _model_device(model)


def check_vocabulary(tokenizer: PreTrainedTokenizerBase | None, model: Any) -> None:
    """Refuse a tokenizer whose ids run past the model's embedding table.

    Uses ``lowrank.inputs.models.check_vocabulary`` when that exists, else compares
    ``len(tokenizer)`` with the embedding rows.
    """
    if tokenizer is None:
        return
    from lowrank.inputs import models

    shared = getattr(models, "check_vocabulary", None)
    if shared is not None:
        shared(tokenizer, model)
        return
    rows = _embedding_rows(model)
    if rows is not None and len(tokenizer) > rows:
        raise LowrankError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding table has "
            f"{rows} rows: pass the tokenizer that belongs to this model"
        )


def _embedding_rows(model: Any) -> int | None:
    try:
        table = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    rows = getattr(table, "num_embeddings", None)
    return int(rows) if isinstance(rows, int) else None


def check_token_ids(sequences: Sequences, model: Any) -> None:
    """Refuse token ids outside ``[0, embedding rows)`` (they would crash inside torch)."""
    if sequences.input_ids.size == 0:
        return
    low, high = int(sequences.input_ids.min()), int(sequences.input_ids.max())
    if low < 0:
        raise LowrankError(f"token id {low} is negative: input ids must be >= 0")
    rows = _embedding_rows(model)
    if rows is not None and high >= rows:
        raise LowrankError(
            f"token id {high} is outside the model's embedding table of {rows} rows: the "
            "tokenizer or the input ids do not belong to this model"
        )


# -- together -------------------------------------------------------------------------------


def prepare_any(
    model: ModelInput,
    tokenizer: PreTrainedTokenizerBase | None,
    data: DataInput,
    config: InputConfig,
    *,
    attention_mask: Any = None,
) -> Prepared:
    """The :class:`Prepared` inputs of a run, whatever form model and data take.

    Args:
        model: a preset name, hub id or local folder (loaded as ``prepare`` does), or a
            ``transformers.PreTrainedModel`` (put in eval mode on ``config.device``; call
            inside :func:`preserved`, or use :func:`prepared_inputs`).
        tokenizer: the model object's tokenizer (needed for text; optional for token ids);
            with a model name it replaces the model's own tokenizer.
        data: None, a path or dataset id (``config.dataset``/``config.split`` apply, as in
            the CLI); a list or iterable of strings (a corpus of articles, read lazily); or
            token ids ``[N, n]`` (tensor, array, or mapping with ``input_ids`` and
            ``attention_mask``).
        config: the run's options (see :func:`settle_config` for the fields it fixes).
        attention_mask: ``[N, n]`` 0/1 mask for token ids given as a bare tensor.

    Raises:
        LowrankError: every bad input, in the CLI's one-line form.
    """
    from lowrank.core.device import resolve_device
    from lowrank.inputs.corpora import Corpus, load_corpus
    from lowrank.inputs.models import load_model

    if tokenizer is not None and not hasattr(tokenizer, "all_special_ids"):
        raise LowrankError(
            f"tokenizer= got a {type(tokenizer).__name__}, not a transformers tokenizer: texts "
            "and token ids go in data= (the third argument)"
        )
    if attention_mask is not None:
        if not is_token_data(data) or isinstance(data, Mapping):
            raise LowrankError("attention_mask goes with token ids given as a tensor or array")
        data = {"input_ids": data, "attention_mask": attention_mask}
    in_memory = is_memory_model(model)
    if not in_memory and not is_memory_data(data):
        if data is not None:
            config = replace(config, data=os.fspath(data))  # type: ignore[arg-type]
        prep = prepare(replace(config, model=os.fspath(model)))  # type: ignore[arg-type]
        if tokenizer is not None:
            check_vocabulary(tokenizer, prep.loaded.model)
            prep.loaded.tokenizer = tokenizer
            prep.sequences = _texts_again(prep.corpus, tokenizer, config)
            check_token_ids(prep.sequences, prep.loaded.model)
        return prep
    if in_memory:
        loaded, device = memory_model(model, tokenizer, config)
    else:
        device = resolve_device(config.device)
        if config.dtype != "float32" and device.type == "cpu":
            raise LowrankError(
                f"{named('dtype', config.dtype)} needs {flag('device')} cuda; use float32 on the "
                f"CPU"
            )
        loaded = load_model(os.fspath(model), str(device), config.dtype)  # type: ignore[arg-type]
        if tokenizer is not None:
            loaded.tokenizer = tokenizer
    loaded.check_seq_len(config.seq_len)
    if is_token_data(data):
        sequences = token_sequences(data, config)
        shape = [sequences.policy["available"], sequences.input_ids.shape[1]]
        corpus = Corpus(MEMORY, "articles", f"token ids {shape}", None, [])
    else:
        if loaded.tokenizer is None:
            raise LowrankError("texts need a tokenizer: pass tokenizer= with the model object")
        check_vocabulary(loaded.tokenizer, loaded.model)
        if data is None or not is_memory_data(data):
            corpus = load_corpus(
                config.dataset,
                None if data is None else os.fspath(data),  # type: ignore[arg-type]
                config.split,
            )
        else:
            texts = read_texts(data, loaded.tokenizer, config)  # type: ignore[arg-type]
            corpus = text_corpus(texts, describe(data, len(texts)))
        sequences = _texts_again(corpus, loaded.tokenizer, config)
    check_token_ids(sequences, loaded.model)
    prep = Prepared(corpus, loaded, sequences, device, MEMORY if is_memory_data(data) else None)
    report(prep, config)
    return prep


def _texts_again(
    corpus: Corpus, tokenizer: PreTrainedTokenizerBase, config: InputConfig
) -> Sequences:
    from lowrank.inputs.corpora import build_sequences

    return build_sequences(
        corpus,
        tokenizer,
        config.seq_len,
        config.num_sequences,
        config.seed,
        config.policy,
        config.keep_short,
    )


@contextmanager
def prepared_inputs(
    model: ModelInput,
    tokenizer: PreTrainedTokenizerBase | None,
    data: DataInput,
    config: InputConfig,
    *,
    attention_mask: Any = None,
) -> Iterator[Prepared]:
    """:func:`prepare_any` inside :func:`preserved`: the model object is restored on exit."""
    with preserved(model):
        yield prepare_any(model, tokenizer, data, config, attention_mask=attention_mask)
