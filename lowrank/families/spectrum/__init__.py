"""The ``spectrum`` family: singular-value spectra of every attention matrix P (the paper's
Figure 1).

Its folder holds everything it is: options (``options.py``), run format (``format.py``),
result type (``result.py``), Python function (``api.py``), the work itself and its figures.
"""

from lowrank.runs.family import Family

FAMILY = Family(
    name="spectrum",
    format="lowrank-spectrum",
    summary="Singular-value spectra of every attention matrix P (the paper's Figure 1).",
    options="lowrank.families.spectrum.options:OPTIONS",
    api="lowrank.families.spectrum.api:spectrum",
    result="lowrank.families.spectrum.result:SpectrumResult",
    figures="lowrank.families.spectrum.plots:write_figures",
    torchrun=True,
    extras=("lowrank.families.spectrum.api:merge",),
)
