"""How every figure of the project family draws its references and baselines."""

from __future__ import annotations

from typing import Any

# references (black) bound what a rank-k answer can reach; baselines (grey, drawn under the
# methods) are the trivial answers a method must beat. Zero attention's error is exactly 1
# and uniform's is close to it, as are weak methods': the baselines differ in dash and
# width so that all three stay apart where they meet.
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "svd": {"color": "k", "ls": "--", "lw": 1.0, "label": "reference: best rank-k of P (SVD)"},
    "output-floor": {
        "color": "k",
        "ls": ":",
        "lw": 1.0,
        "marker": "x",
        "ms": 3,
        "label": r"reference: output floor $\|PV - (PV)_k\|$",
    },
    "zero": {
        "color": "0.3",
        "ls": (0, (5, 2, 1, 2)),
        "lw": 1.0,
        "zorder": 1.6,
        "label": "baseline: zero attention",
    },
    "uniform": {
        "color": "0.75",
        "ls": "-",
        "lw": 3.0,
        "zorder": 1.5,
        "label": "baseline: uniform attention",
    },
}
