"""Which way the capture sees a model's attention, decided from its config alone.

Three routes, in order of preference:

* ``interface``: the model computes attention through transformers' ``AttentionInterface``;
  lowrank registers its own attention function (:mod:`lowrank.hooks.attention`), which
  computes ``P`` exactly as eager attention does and hands it to the sink one layer at a time.
* ``hooks``: the model computes attention itself (MPNet, DeBERTa, DeBERTa-v2, ...) but each
  attention module returns its probabilities when asked (``output_attentions``, or
  transformers' per-module output recorders); forward hooks on those modules hand ``P`` to the
  sink and drop it from the module's outputs (:mod:`lowrank.hooks.fallback`). One layer's
  ``P`` is alive at a time, as with the interface.
* ``outputs``: only the whole model returns its probabilities (``output_attentions=True``); all
  layers of one batch are handed to the sink after the forward pass, so ``num_layers`` layers'
  ``P`` are alive at once.

What cannot return ``P`` is refused in one line: remote code, encoder-decoder stacks
(cross-attention), models without attention heads (Mamba).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from lowrank.errors import LowrankError

Route = Literal["interface", "hooks", "outputs"]

# The families whose capture is parity-tested against output_attentions=True
# (tests/test_capture.py, tests/test_decoders.py, tests/test_capture_fallback.py).
SUPPORTED_FAMILIES = (
    "BERT (MiniLM), RoBERTa, MPNet, DeBERTa, DeBERTa-v2, GPT-2, Llama, Mistral, Qwen2 (and "
    "other transformers encoders and decoders whose layers return their attention "
    "probabilities)"
)

# Model types whose attention the capture sees but not as the model computes it, found by
# walking transformers 5.25's model list through lowrank.hooks.check.check_capture on tiny
# random models (the check refuses them at run time too; here they are refused before
# their weights are read).
UNFAITHFUL = {
    "diffllama": "computes two softmax maps per layer and subtracts them (differential "
    "attention), so no single P is its attention",
    "granite_swa": "scales its attention output by a learned sink after the softmax, so the "
    "P it returns is not the P that weighs its values",
    "granitemoe_swa": "scales its attention output by a learned sink after the softmax, so "
    "the P it returns is not the P that weighs its values",
    "minimax": "mixes softmax attention with linear-attention layers",
    "git": "computes the attention of its text layers outside transformers' attention "
    "interface, although it declares it",
    "inkling2_text": "adds per-token sinks and extra attention calls that lowrank does not "
    "reproduce",
    "inkling2_loop_text": "adds per-token sinks and extra attention calls that lowrank does "
    "not reproduce",
}


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence transformers' warnings while a config is parsed (it warns on odd fields)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _as_dict(config: Any) -> dict[str, Any]:
    if isinstance(config, Mapping):
        return dict(config)
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        raise LowrankError(f"a model config is a dict or a PretrainedConfig, not {type(config)}")
    return dict(to_dict())


def base_class(config: Any) -> Any:
    """The transformers base model class (``AutoModel``'s) of a parsed config, or None."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        base: Any = MODEL_MAPPING[type(config)]
    except (KeyError, ValueError, ImportError):  # no base model, or a missing backend
        return None
    return base[0] if isinstance(base, tuple) else base  # several: the first is the default


def returns_probs_per_module(model_class: Any) -> bool:
    """True when some attention module of ``model_class``'s modeling file returns P per layer:
    transformers records its ``attentions`` from a module, or a module's forward takes
    ``output_attentions`` (and is not the whole model)."""
    import sys

    import torch
    from transformers import PreTrainedModel

    recorded = getattr(model_class, "_can_record_outputs", None) or {}
    if "attentions" in recorded:
        return True
    module = sys.modules.get(model_class.__module__)
    for obj in vars(module).values() if module else ():
        if (
            inspect.isclass(obj)
            and issubclass(obj, torch.nn.Module)
            and not issubclass(obj, PreTrainedModel)
            and takes_output_attentions(obj)
        ):
            return True
    return False


def takes_output_attentions(cls_or_module: Any) -> bool:
    """True when ``forward`` has an ``output_attentions`` parameter."""
    try:
        return "output_attentions" in inspect.signature(cls_or_module.forward).parameters
    except (TypeError, ValueError):
        return False


def capture_route(config: Any, name: str = "model") -> Route:
    """The route by which the capture sees the self-attention of a model with this config.

    Args:
        config: the model's ``config.json`` as a dict, or a ``PretrainedConfig``.
        name: how messages name the model (what the user typed).

    Returns:
        ``"interface"``, ``"hooks"`` or ``"outputs"`` (see the module docstring).

    Raises:
        LowrankError: no model_type, remote code, an architecture this transformers does not
            ship, an encoder-decoder stack, no attention heads (Mamba), a model type whose
            attention lowrank is known not to reproduce (:data:`UNFAITHFUL`), or a model none
            of whose modules returns attention probabilities; one line naming the
            architecture and the supported families.
    """
    from transformers import CONFIG_MAPPING

    raw = _as_dict(config)
    model_type = str(raw.get("model_type") or "")
    architectures = raw.get("architectures")
    arch = str(architectures[0]) if isinstance(architectures, list) and architectures else None

    def refuse(reason: str) -> LowrankError:
        what = ", ".join([*([arch] if arch else []), f"model_type '{model_type}'"])
        return LowrankError(
            f"model '{name}' ({what}) {reason}: lowrank captures the self-attention of "
            f"{SUPPORTED_FAMILIES}"
        )

    if not model_type:
        raise LowrankError(
            f"model '{name}'{f' ({arch})' if arch else ''} has no model_type in its config.json, "
            f"so its architecture is unknown: lowrank captures the self-attention of "
            f"{SUPPORTED_FAMILIES}"
        )
    if model_type not in CONFIG_MAPPING:
        if raw.get("auto_map"):
            raise refuse("needs remote code (auto_map in its config), which lowrank never runs")
        raise refuse("is not an architecture this transformers version ships")
    settings = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        with _quiet():
            parsed = CONFIG_MAPPING[model_type](**settings)
    except Exception:  # a bad field (a head count "12"): the file checks name it in one line
        parsed = CONFIG_MAPPING[model_type]()
    if raw.get("is_encoder_decoder", getattr(parsed, "is_encoder_decoder", False)):
        raise refuse(
            "is an encoder-decoder stack (relative-position biases added inside the attention, "
            "cross-attention), whose attention cannot be captured"
        )
    try:
        heads = getattr(parsed, "num_attention_heads", None)
    except Exception:  # per-layer configs refuse a global read (transformers' heterogeneity)
        raise refuse("sets its attention heads per layer, which lowrank does not read") from None
    if not isinstance(heads, int) or heads < 1:
        raise refuse("has no attention layers")
    if model_type in UNFAITHFUL:
        raise refuse(UNFAITHFUL[model_type])
    base = base_class(parsed)
    if base is None:
        raise refuse("has no base model class in this transformers version")
    if base.is_backend_compatible() or base._can_set_attn_implementation():
        return "interface"
    if returns_probs_per_module(base):
        return "hooks"
    if takes_output_attentions(base):
        return "outputs"
    raise refuse("computes attention that none of its modules returns, so it cannot be captured")


def model_route(model: Any) -> Route:
    """:func:`capture_route` of a model object, from its config (a task model such as
    ``BertForMaskedLM`` routes as its base model)."""
    return capture_route(model.config, getattr(model, "name_or_path", "") or type(model).__name__)


def layers_alive(model: Any) -> int:
    """How many layers' ``P`` [B, H, n, n] the capture holds at once for ``model``: 1 on the
    interface and hooks routes (each layer's P is dropped when its sink returns), the number of
    layers on the outputs route (the whole pass's ``attentions`` arrive together). Multiply the
    one-layer memory estimate by this."""
    if model_route(model) != "outputs":
        return 1
    layers = getattr(model.config, "num_hidden_layers", None)
    if not isinstance(layers, int) or layers < 1:
        raise LowrankError(f"model type '{model.config.model_type}' has no num_hidden_layers")
    return layers


def route_table() -> dict[str, str]:
    """Every model type of transformers' ``MODEL_MAPPING_NAMES`` -> its route, or the start of
    its refusal (``refused: ...``) or ``unavailable: ...`` when its classes do not import here
    (a missing optional package). For the documentation's table; builds no model."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    table: dict[str, str] = {}
    for model_type in MODEL_MAPPING_NAMES:
        try:
            table[model_type] = capture_route({"model_type": model_type}, model_type)
        except LowrankError as exc:
            reason = str(exc).split(") ", 1)[-1].split(":")[0]
            table[model_type] = f"refused: {reason}"
        except Exception as exc:  # a model file needing an optional package
            table[model_type] = f"unavailable: {type(exc).__name__}"
    return table
