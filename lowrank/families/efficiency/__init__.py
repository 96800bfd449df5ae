"""The ``efficiency`` family: linformer's speed and memory against standard attention (paper
Table 3).

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="efficiency",
    format="lowrank-efficiency",
    summary="Linformer's speed and memory against standard attention (paper Table 3).",
    options="lowrank.families.efficiency.options:OPTIONS",
    api="lowrank.families.efficiency.api:efficiency",
    result="lowrank.families.efficiency.result:EfficiencyResult",
    figures="lowrank.families.efficiency.plots:write_figures",
)
