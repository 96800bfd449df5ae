"""The options of ``lowrank efficiency`` / ``lowrank.efficiency``, declared once."""

from __future__ import annotations

from lowrank.core.options import MAX_GIB, MAX_REPEATS, Option, Options, merge
from lowrank.inputs.options import API_ONLY, device_and_dtype, output

HELP = """Linformer's speed and memory against standard attention (paper Table 3).

For each n and k: forward time per token and peak memory of a small encoder stack with
Linformer attention (layerwise sharing) against the same stack with standard attention
(explicit softmax, and PyTorch's fused scaled_dot_product_attention), same weights, dtype
and threads. The stacks take turns in --repeats interleaved rounds after --warmup ones;
speed-ups are the median [min, max] over the rounds. Memory saving: the ratio of peak
memory per sequence at equal batch, and with --memory-budget also the ratio of the largest
batches that fit (the paper's measure). Prints one table per measure (rows n, columns k)
and writes efficiency.csv/json/npz, run.json.
"""

OPTIONS = Options(
    "efficiency",
    HELP,
    merge(
        (
            Option("n", (512, 1024, 2048, 4096), "Sequence lengths (each >= 2).", "ints", low=2),
            Option("k", (64, 128, 256), "Linformer projected lengths.", "ints", low=1),
        ),
        device_and_dtype(),
        (
            Option(
                "batch_size",
                None,
                "Fixed batch (default 1, or the largest that fits --memory-budget).",
                low=1,
                optional=True,
            ),
            Option(
                "memory_budget",
                None,
                "GiB: time each stack at the largest power-of-two batch whose peak memory "
                "fits, and report the ratio of those batches as the memory saving (the "
                "paper's setting).",
                "float",
                low=0.0,
                open_low=True,
                high=MAX_GIB,
                optional=True,
            ),
            Option("layers", 2, "Encoder blocks in each stack.", low=1),
            Option("hidden", 256, "Model width D (a multiple of --heads).", low=1),
            Option("heads", 4, "Attention heads.", low=1),
            Option("ffn", 1024, "Width of each block's MLP.", low=1),
            Option("warmup", 2, "Untimed rounds before the timed ones.", low=0, high=MAX_REPEATS),
            Option(
                "repeats",
                5,
                "Timed rounds, one forward pass per stack each, in an order reversed every "
                "round; the median and the min-max spread are reported.",
                low=1,
                high=MAX_REPEATS,
            ),
        ),
        output("efficiency", plot="Draw speed-up and memory saving against n."),
        API_ONLY,
        replace=(
            Option(
                "dtype",
                "float32",
                "float32, or float16/bfloat16 on CUDA.",
                "choice",
                choices=("float32", "float16", "bfloat16"),
            ),
        ),
    ),
)
