"""Shared fixtures: tiny random models built from configs, saved as local model folders.

Nothing here downloads: the RoBERTa tokenizer is a byte-level BPE trained on the embedded
sample text, the BERT tokenizer is the real MiniLM vocabulary from the installed package.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lowrank.inputs.corpora import data_dir, split_articles
from tests.helpers import SEQ_LEN, tiny_model_folder


def _sample_text() -> str:
    return (data_dir() / "sample_wiki.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def roberta_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-roberta")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        split_articles(_sample_text()),
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        show_progress=False,
    )
    tokenizer = RobertaTokenizerFast(tokenizer_object=bpe._tokenizer)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN + 2,
        initializer_range=0.3,  # peaked attention, so spectra are not trivially flat
    )
    RobertaModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import BertConfig, BertModel

    return tiny_model_folder(
        tmp_path_factory.mktemp("tiny-bert"), BertModel, BertConfig, seed=1,
        hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=48,
        max_position_embeddings=64, initializer_range=0.3,
    )  # fmt: skip


@pytest.fixture(scope="session")
def mpnet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MPNet: relative-position biases in its scores, so P is captured (by hooks) but
    cannot be rebuilt from Q and K (``probs_from_qk`` is False)."""
    from transformers import MPNetConfig, MPNetModel

    return tiny_model_folder(
        tmp_path_factory.mktemp("tiny-mpnet"), MPNetModel, MPNetConfig, seed=2,
        hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=64,
    )  # fmt: skip


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2Model, GPT2TokenizerFast

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        split_articles(_sample_text()),
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    end = "<|endoftext|>"
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=end, eos_token=end)
    torch.manual_seed(2)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    GPT2Model(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
