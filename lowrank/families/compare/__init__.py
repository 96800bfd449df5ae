"""The ``compare`` family: low-rank against sparse, LSH, local, kernel and Nystrom attention,
head by head.

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="compare",
    format="lowrank-compare",
    summary="Low-rank against sparse, LSH, local, kernel and Nystrom attention, head by head.",
    options="lowrank.families.compare.options:OPTIONS",
    api="lowrank.families.compare.api:compare",
    result="lowrank.families.compare.result:CompareResult",
    figures="lowrank.families.compare.plots:write_figures",
)
