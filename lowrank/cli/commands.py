"""One click command per analysis family, built from the family's option declaration.

The flags, types, defaults, choices and help of ``lowrank <family>`` all come from its
:class:`~lowrank.core.options.Options` table; click only parses the words into values of the
right type, and the family's API function checks them (with messages that name the flags,
:func:`lowrank.core.options.naming`). A command checks its options, then the paths and hub names
they give (:mod:`lowrank.cli.preflight`, before torch is imported), takes the lock of its
``--out`` (:mod:`lowrank.runs.locks`), runs the API function with the command line as the
run's ``command`` and prints the result's report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from lowrank.cli.common import CommaList, command_line, handle_errors, say
from lowrank.cli.preflight import check_inputs
from lowrank.core.options import SAME, Option, Options, naming
from lowrank.errors import LowrankError
from lowrank.registry import families
from lowrank.runs.distributed import launch_from_env
from lowrank.runs.family import Family

_SCALAR: dict[str, Any] = {"int": int, "float": float, "str": str, "any": str}
_LISTS: dict[str, type] = {"ints": int, "floats": float, "choices": str}


def click_option(option: Option) -> click.Option:
    """The click option of one declared option (its flag, type, default and help)."""
    default = option.command_default
    if callable(default):  # computed from the other options once they are parsed
        default = None
    names = [option.flag]
    extra: dict[str, Any] = {}
    if option.kind == "bool":
        if option.negatable:
            names = [f"{option.flag}/--no-{option.flag[2:]}"]
        else:
            extra["is_flag"] = True
    elif option.kind == "choice":
        extra["type"] = click.Choice(option.choices)
    elif option.kind in _LISTS:
        choices = option.choices if option.kind == "choices" else None
        extra["type"] = CommaList(_LISTS[option.kind], choices)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
    elif option.kind == "path":
        extra["type"] = click.Path(path_type=Path)
    else:
        extra["type"] = _SCALAR[option.kind]
    return click.Option(
        [*names, option.name],
        default=default,
        show_default=default is not None and default is not False,
        help=option.help,
        hidden=option.hidden,
        metavar=option.metavar,
        **extra,
    )


def build_command(family: Family) -> click.Command:
    """``lowrank <family.name>``: parse its declared options, call its API function with the
    options named as flags in every message, print the report (rank 0 only under
    torchrun). Ctrl-C or SIGTERM in a run that saved a checkpoint prints how to resume and
    exits with 130."""
    options: Options = family.load_options()
    computed = [
        o for o in options if o.cli and o.cli_default is not SAME and callable(o.cli_default)
    ]

    @handle_errors
    def callback(**given: Any) -> None:
        from lowrank.runs.checkpoints import RunInterrupted
        from lowrank.runs.locks import hold

        ctx = click.get_current_context()
        values = dict(given)
        for option in computed:
            if values.get(option.name) is None:
                values[option.name] = option.cli_default(values)
        with naming("cli"):
            try:  # each option alone, before any work: a usage mistake points at --help
                options.check(values)
            except LowrankError as exc:
                raise click.UsageError(str(exc), ctx) from None
            check_inputs(values)  # paths and the hub, before torch is imported
            run = family.load_api()
            lead = _lead_rank()
            out = values.get("out") if lead else None  # rank 0 alone writes the folder
            try:
                with hold(Path(out) if out is not None else None):  # one writer per folder
                    res = run(**values, command=command_line(ctx))
            except RunInterrupted as stop:
                say(str(stop), err=True)
                sys.exit(130)
            if lead:
                say(res.report())

    return click.Command(
        family.name,
        params=[click_option(o) for o in options if o.cli],
        callback=callback,
        help=options.help,
        short_help=family.summary,
    )


def _lead_rank() -> bool:
    """False on the ranks of a torchrun launch other than rank 0 (only rank 0 prints and
    writes); a launch the variables describe badly is the family's to refuse."""
    try:
        launch = launch_from_env()
    except LowrankError:
        return True
    return launch is None or launch.rank == 0


def add_family_commands(group: click.Group) -> None:
    """Add one command per registered family to ``group``."""
    for family in families():
        group.add_command(build_command(family))
