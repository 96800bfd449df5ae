"""The ``verify`` family: check Theorems 1 and 2 numerically: bounds against measured failure rates.

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="verify",
    format="lowrank-verify",
    summary="Check Theorems 1 and 2 numerically: bounds against measured failure rates.",
    options="lowrank.families.verify.options:OPTIONS",
    api="lowrank.families.verify.api:verify",
    result="lowrank.families.verify.result:VerifyResult",
    figures="lowrank.families.verify.plots:write_figures",
)
