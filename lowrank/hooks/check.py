"""Is the captured P the model's own? One small batch through the capture and through eager.

Every statistic lowrank reports is a statistic of the captured ``P``. If the capture computes
something else than the model does (a softmax without gpt-oss's sink logit, a missed
relative bias or soft-cap, a model type whose attention transformers changed), the
numbers are of a matrix the model never uses, and nothing downstream can tell. So
:func:`check_capture` runs the model twice on the same small batch -- once through the
capture, once with transformers' eager attention and ``output_attentions=True`` (the
reference of tests/test_capture.py) -- and refuses in one line when any layer's ``P`` or the
model's output differ by more than float rounding.

Tolerance (the largest ``|P_capture - P_eager|`` entry): :data:`TOLERANCES`. In float32 both
paths run the same operations in the same order, so they agree to within a few float32 ulps
of numbers <= 1 (measured 0 on tiny random BERT, MPNet, DeBERTa-v2, GPT-2, Llama, gpt-oss,
and on MiniLM at n = 512); 1e-5 is ~100 ulps of 1, far below what a wrong ``P`` does (a
dropped sink logit: 0.1 to 0.9 on a tiny random gpt-oss; a dropped position bias or
soft-cap: 1e-2 and up). Half precision gets its rounding scale: ``softmax`` is computed in
float32 by the capture and in the model's dtype by some eager functions (BERT's), so the
paths may differ by a few ulps of the half type, 8 x eps.

Cost: one extra forward pass with ``output_attentions=True`` of ``rows`` sequences (default 1)
and that pass's ``P`` of every layer: ``layers x heads x n^2 x 4`` bytes (MiniLM, n = 512: 6 x
12 x 512^2 x 4 B = 75 MB), plus one capture pass of the same rows; the capture's ``P`` is
compared layer by layer and dropped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lowrank.errors import LowrankError
from lowrank.hooks.attention import capture
from lowrank.hooks.calls import AttentionCall
from lowrank.inputs.routes import model_route
from lowrank.inputs.state import preserved

# Largest |P_capture - P_eager| accepted, per dtype (see the module docstring).
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 8 * torch.finfo(torch.float16).eps,  # 7.8e-3
    torch.bfloat16: 8 * torch.finfo(torch.bfloat16).eps,  # 6.3e-2
}


@dataclass(frozen=True)
class CaptureCheck:
    """What :func:`check_capture` measured.

    Attributes:
        model_type: the model's ``config.model_type``.
        route: how the capture saw P (``interface``, ``hooks``, ``outputs``).
        layers: attention layers compared.
        probs_error: largest ``|P_capture - P_eager|`` entry over all layers.
        worst_layer: 0-based layer of ``probs_error``.
        output_error: ``||y_capture - y_eager||_F / ||y_eager||_F`` of the model's first output
            (the last hidden state, or the logits of a task model).
        tolerance: the bound both errors were held to.
        seconds: wall time of the two passes.
    """

    model_type: str
    route: str
    layers: int
    probs_error: float
    worst_layer: int
    output_error: float
    tolerance: float
    seconds: float


def _first_rows(inputs: Mapping[str, Any], rows: int | None) -> dict[str, Any]:
    """The first ``rows`` sequences of every batched tensor of ``inputs``."""
    if rows is None:
        return dict(inputs)
    if rows < 1:
        raise LowrankError(f"check rows {rows}: use at least 1")
    return {
        k: v[:rows] if isinstance(v, torch.Tensor) and v.dim() >= 1 else v
        for k, v in inputs.items()
    }


def _first_output(output: Any) -> torch.Tensor:
    first = output[0] if isinstance(output, tuple | list) else next(iter(output.values()))
    if not isinstance(first, torch.Tensor):
        raise LowrankError(f"the model's first output is {type(first).__name__}, not a tensor")
    return first.float()


def _reference(model: Any, inputs: dict[str, Any]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Eager attention's P per layer and the first output, with ``output_attentions=True``."""
    if model_route(model) == "interface":
        model.set_attn_implementation("eager")
    with torch.inference_mode():
        out = model(**inputs, output_attentions=True, return_dict=True)
    attentions = [a for a in (getattr(out, "attentions", None) or ()) if a is not None]
    if not attentions:
        raise LowrankError(
            f"model type '{model.config.model_type}' returned no attention probabilities "
            "with eager attention and output_attentions=True: lowrank cannot check its capture"
        )
    return attentions, _first_output(out)


def check_capture(
    model: Any,
    inputs: Mapping[str, Any],
    *,
    rows: int | None = 1,
    tolerance: float | None = None,
) -> CaptureCheck:
    """Run ``inputs`` through the capture and through eager attention; refuse a difference.

    Args:
        model: a transformers ``PreTrainedModel``; left exactly as found
            (:func:`lowrank.inputs.state.preserved`), also when the check fails.
        inputs: keyword arguments of ``model(**inputs)`` for one batch (e.g.
            :func:`lowrank.hooks.attention.padded_inputs`), tensors [B, n].
        rows: check the first ``rows`` sequences only (None: all of them).
        tolerance: the largest accepted ``|P_capture - P_eager|`` entry, which also bounds the
            relative error of the model's output; default :data:`TOLERANCES` for the
            model's dtype.

    Returns:
        A :class:`CaptureCheck`, whose errors are within ``tolerance``.

    Raises:
        LowrankError: one line naming the model type, the layer and the largest difference,
            when the layer counts, a layer's P or the output differ.
    """
    dtype = getattr(model, "dtype", torch.float32)
    tol = TOLERANCES.get(dtype, 1e-5) if tolerance is None else tolerance
    kind = model.config.model_type
    batch = _first_rows(inputs, rows)
    began = time.perf_counter()
    with preserved(model):
        model.eval()
        reference, expected = _reference(model, batch)
        errors: list[float] = []

        def compare(call: AttentionCall) -> None:
            if call.layer < len(reference):
                want = reference[call.layer]
                if want.shape != call.probs.shape:
                    raise LowrankError(
                        f"model type '{kind}': the capture's P of layer {call.layer + 1} has "
                        f"shape {tuple(call.probs.shape)}, eager attention's "
                        f"{tuple(want.shape)}"
                    )
                errors.append(float((call.probs.float() - want.float()).abs().max()))

        with torch.inference_mode(), capture(model, compare) as seen:
            got = _first_output(model(**batch))
            calls = seen()
    seconds = time.perf_counter() - began
    if calls != len(reference):
        raise LowrankError(
            f"model type '{kind}': the capture saw {calls} attention layers, eager attention "
            f"returned {len(reference)}: lowrank cannot analyse this model's attention"
        )
    worst = max(range(len(errors)), key=errors.__getitem__)
    output_error = float((got - expected).norm() / expected.norm().clamp_min(1e-30))
    if errors[worst] > tol:
        raise LowrankError(
            f"model type '{kind}': the captured P of layer {worst + 1} differs from the "
            f"model's eager attention by up to {errors[worst]:.3g} (tolerance {tol:.1g}): "
            "lowrank does not compute this model's attention as the model does"
        )
    if output_error > tol:
        raise LowrankError(
            f"model type '{kind}': with the capture the model's output differs from eager "
            f"attention's by {output_error:.3g} (relative, tolerance {tol:.1g}): lowrank "
            "changes what this model computes"
        )
    route = model_route(model)
    return CaptureCheck(kind, route, calls, errors[worst], worst, output_error, tol, seconds)
