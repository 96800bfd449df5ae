"""The ``keys`` family: low-rank structure of queries, keys, values and logits, pre- and
post-RoPE, and what it buys for top-k attention (Loki, ShadowKV).

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), figures (``plots.py``), and the
work itself: the maths (``maths.py``), the Q/K/V capture (``qkv.py``), the mergeable
statistics (``accumulate.py``, ``topk.py``), the passes (``passes.py``, ``workflow.py``) and
their arrays and findings (``tables.py``, ``findings.py``).
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="keys",
    format="lowrank-keys",
    summary="Low-rank queries, keys, values and logits, pre/post-RoPE, and top-k from r dims.",
    options="lowrank.families.keys.options:OPTIONS",
    api="lowrank.families.keys.api:keys",
    result="lowrank.families.keys.result:KeysResult",
    figures="lowrank.families.keys.plots:write_figures",
)
