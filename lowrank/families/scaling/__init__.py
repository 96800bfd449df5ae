"""The ``scaling`` family: does the rank of attention grow like log n? One spectrum run per n,
on the same text.

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="scaling",
    format="lowrank-scaling",
    summary="Does the rank of attention grow like log n? One spectrum run per n, on the same text.",
    options="lowrank.families.scaling.options:OPTIONS",
    api="lowrank.families.scaling.api:scaling",
    result="lowrank.families.scaling.result:ScalingResult",
    figures="lowrank.families.scaling.plots:write_figures",
)
