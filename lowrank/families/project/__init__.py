"""The ``project`` family: how well JL and Linformer projections approximate real attention,
against k.

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="project",
    format="lowrank-projection",
    summary="How well JL and Linformer projections approximate real attention, against k.",
    options="lowrank.families.project.options:OPTIONS",
    api="lowrank.families.project.api:project",
    result="lowrank.families.project.result:ProjectionResult",
    figures="lowrank.families.project.plots:write_figures",
)
