"""What a command can check in a second, before torch and transformers are imported.

Importing torch and transformers takes seconds (5 to 15 on a busy machine), and loading a
hub model that is not cached takes a minute of retries. The command line therefore checks,
in this order and before any of that: the options (:meth:`Options.check`), the paths the user
named (``--data``, a model folder or GGUF file, the run folders a command reads), and whether
a hub model or dataset is cached or the hub reachable. What is found wrong is the same one
line the analysis would give later; what passes is checked again, fully, by the analysis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lowrank.errors import LowrankError

__all__ = ["check_inputs", "check_run_folders"]


def check_inputs(values: Mapping[str, Any]) -> None:
    """``--data``, ``--model`` and ``--dataset`` of a family command: paths that exist, a
    model folder that is one, a hub model or dataset that is cached or reachable.

    Raises:
        LowrankError: the line the analysis would give, at once.
    """
    data = values.get("data")
    if isinstance(data, str | Path):
        from lowrank.inputs.reading import check_data_path

        check_data_path(data)
    model = values.get("model")
    if isinstance(model, str) and model:
        check_model(model)
    dataset = values.get("dataset")
    if data is None and isinstance(dataset, str):
        from lowrank.inputs.corpora import HUB_DATASETS
        from lowrank.inputs.hub import check_hub_dataset

        if dataset in HUB_DATASETS:
            check_hub_dataset(dataset, HUB_DATASETS[dataset][0])


def check_model(name: str) -> None:
    """A ``--model`` name: a preset (a hub preset must be cached or reachable), a GGUF file
    that exists, a model folder (:func:`lowrank.inputs.models.resolve_model`'s checks and
    :func:`lowrank.inputs.model_files.check_model_files`: its files and config.json against
    its weights, from the headers), or a hub id that is cached or reachable."""
    from lowrank.inputs.config import MODEL_PRESETS
    from lowrank.inputs.hub import check_hub_model

    preset = MODEL_PRESETS.get(name)
    if preset is not None:
        if preset.source == "hub":
            check_hub_model(name, preset.target, preset=True)
        return
    if name.lower().endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise LowrankError(f"GGUF file '{path}' does not exist")
        return
    from lowrank.inputs.models import resolve_model

    source = resolve_model(name)  # a folder is checked here; nothing is loaded
    if source.kind == "local":  # its JSON files, config.json against the weights: headers
        from lowrank.inputs.model_files import check_model_files

        # not yet whether weights and tokenizer files are there: a model whose attention
        # cannot be captured (needs transformers to tell) is refused for that first
        check_model_files(Path(source.location), complete=False)
    if source.kind == "hub":
        import difflib

        close = difflib.get_close_matches(name.lower(), list(MODEL_PRESETS), n=1, cutoff=0.75)
        hint = f" (did you mean the preset '{close[0]}'?)" if close else ""
        check_hub_model(name, source.location, preset=False, hint=hint)


def check_run_folders(folders: Sequence[Path], what: str = "part") -> None:
    """Each of ``folders`` exists and holds a run.json (``part 2 'runs/b': ...``).

    Raises:
        LowrankError: naming the first folder that is not a run folder.
    """
    for i, folder in enumerate(folders, 1):
        problem = None
        if not folder.is_dir():
            problem = (
                f"run folder '{folder}' is a file, not a folder"
                if folder.exists()
                else f"run folder '{folder}' does not exist"
            )
        elif not (folder / "run.json").is_file():
            problem = f"'{folder}' is not a run folder: it has no run.json"
        if problem:
            raise LowrankError(f"{what} {i} '{folder}': {problem}")
