"""Hostile or unsupported models and hostile corpora (issue 17, classes 4 and 5), through the CLI.

Every case must end in exit code 2 with exactly one line on stderr, ``error: ...``, naming the
file or architecture at fault, with no traceback and no run folder written. Models are tiny
BERTs built from configs (the ``bert_dir`` fixture) and then damaged; nothing downloads.
Endless inputs (``/dev/zero``, a FIFO fed forever) run under a watchdog, so a regression
fails the test instead of hanging the suite.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from lowrank.cli import main
from lowrank.inputs import corpora, reading

SEQ = ["--seq-len", "32"]
COMMANDS = {
    "spectrum": ["spectrum", *SEQ, "--num-sequences", "2"],
    "project": ["project", *SEQ, "--num-sequences", "1", "--k", "8"],
    "compare": ["compare", *SEQ, "--num-sequences", "1", "--budget", "8"],
}
WATCHDOG_S = 120.0  # no case may take longer: an unbounded read would hang here


def invoke(args: list[str], timeout: float = WATCHDOG_S) -> Result:
    """Run the CLI in a daemon thread and fail, rather than hang, past ``timeout``."""
    box: dict[str, Result] = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("res", CliRunner().invoke(main, args)), daemon=True
    )
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"lowrank {' '.join(args)} ran past {timeout} s"
    return box["res"]


def assert_one_line_exit_2(res: Result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr: ``error: ...`` holding every
    fragment; returns that line."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    assert res.stdout == "", res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    (line,) = lines
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, line
    return line


def run_refused(command: str, model: Path | str, data: Path | str | None, out: Path) -> Result:
    """Run ``command`` on a model and corpus; the run must not leave a folder behind."""
    args = [*COMMANDS[command], "--model", str(model), "--out", str(out)]
    if data is not None:
        args += ["--data", str(data)]
    res = invoke(args)
    assert not out.exists(), "a refused run wrote its folder"
    return res


# --- hostile models --------------------------------------------------------------------------


def _copy(bert_dir: Path, root: Path, name: str) -> Path:
    folder = root / name
    shutil.copytree(bert_dir, folder)
    return folder


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _safetensors_cut(keep: float) -> Callable[[Path], None]:
    return lambda f: _truncate(f / "model.safetensors", keep)


def _safetensors_garbage(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"<html>404 Not Found</html>" * 4)


def _to_torch_bin(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(weights, folder / "pytorch_model.bin")


def _bin_cut(folder: Path) -> None:
    _to_torch_bin(folder)
    _truncate(folder / "pytorch_model.bin", 0.6)


def _missing_shard(folder: Path) -> None:
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    (folder / "model.safetensors").rename(folder / first)
    index = {"metadata": {}, "weight_map": {"embeddings.a": first, "encoder.b": second}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _no_tokenizer(folder: Path) -> None:
    for f in folder.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()


def _special_tokens_only(folder: Path) -> None:
    """A BERT tokenizer whose vocab.txt lost every word: all text becomes [UNK]."""
    for f in folder.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            f.unlink()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))


def _vocabulary_too_large(folder: Path) -> None:
    """The MiniLM tokenizer (30,522 tokens) over a model with a 1,000-row embedding table."""
    import torch
    from transformers import BertConfig, BertModel

    for f in ("model.safetensors", "config.json"):
        (folder / f).unlink()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=1000,
        hidden_size=24,
        num_hidden_layers=1,
        num_attention_heads=3,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(folder)


def _t5(folder: Path) -> None:
    from transformers import T5Config, T5Model

    for f in ("model.safetensors", "config.json"):
        (folder / f).unlink()
    config = T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8, vocab_size=64)
    T5Model(config).save_pretrained(folder)


def _mamba_config(folder: Path) -> None:
    from transformers import MambaConfig

    config = MambaConfig(hidden_size=16, num_hidden_layers=1, vocab_size=50).to_dict()
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["MambaModel"]}))


def _nested(name: str) -> Callable[[Path], None]:
    """``name`` holding 100,000 nested ``[``: Python's JSON parser recurses past its limit."""
    return lambda f: (f / name).write_text("[" * 100_000)


def _safetensors_nested_header(folder: Path) -> None:
    header = b"[" * 100_000
    path = folder / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header)


# (id, damage applied to a copy of the tiny BERT folder, fragments of the one line)
MODEL_CASES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    (
        "safetensors-half",
        _safetensors_cut(0.5),
        ("model.safetensors' is truncated or corrupt", "re-download or re-save"),
    ),
    ("safetensors-5-bytes", _safetensors_cut(0.000001), ("model.safetensors' is truncated",)),
    ("safetensors-almost-whole", _safetensors_cut(0.999), ("model.safetensors' is truncated",)),
    ("safetensors-not-safetensors", _safetensors_garbage, ("model.safetensors' is truncated",)),
    ("bin-truncated", _bin_cut, ("pytorch_model.bin' is truncated or corrupt",)),
    ("shard-missing", _missing_shard, ("model-00002-of-00002.safetensors", "missing")),
    ("t5", _t5, ("T5Model", "encoder-decoder", "Llama, Mistral, Qwen2")),
    ("no-attention", _mamba_config, ("MambaModel", "no attention layers", "GPT-2")),
    (
        "unknown-model-type",
        lambda f: _edit_config(f, model_type="frobnicator"),
        ("model_type 'frobnicator'", "not an architecture", "BERT (MiniLM)"),
    ),
    ("no-model-type", lambda f: _edit_config(f, model_type=None), ("has no model_type",)),
    ("no-config", lambda f: (f / "config.json").unlink(), ("no config.json",)),
    (
        "config-not-json",
        lambda f: (f / "config.json").write_text('{"model_type": "bert",'),
        ("config.json' is not valid JSON",),
    ),
    (
        "config-a-list",
        lambda f: (f / "config.json").write_text("[1, 2]"),
        ("config.json' is not a JSON object",),
    ),
    (
        "config-binary",
        lambda f: (f / "config.json").write_bytes(b"\xff\xfe\x00garbage"),
        ("config.json' is not valid JSON",),
    ),
    ("no-tokenizer", _no_tokenizer, ("holds no tokenizer", "tokenizer.save_pretrained")),
    (
        "tokenizer-not-json",
        lambda f: (f / "tokenizer.json").write_text("{oops"),
        ("tokenizer.json' is not valid JSON",),
    ),
    ("tokenizer-special-only", _special_tokens_only, ("unknown token", "vocabulary files")),
    (
        "vocabulary-larger-than-embeddings",
        _vocabulary_too_large,
        ("can emit token id 30521", "embedding table has 1000 rows"),
    ),
    (
        "weights-wrong-shapes",
        lambda f: _edit_config(f, hidden_size=48, intermediate_size=96),
        ("do not have the shapes its config.json gives",),
    ),
    ("no-weights", lambda f: (f / "model.safetensors").unlink(), ("holds no weights",)),
    # issue 28, items 8, 9 and 16: refused from the files, before transformers builds anything
    (
        "config-100000-layers",  # used to build for minutes without a word
        lambda f: _edit_config(f, num_hidden_layers=100_000),
        ("config.json': num_hidden_layers is 100000, not between 1 and 2000",),
    ),
    (
        "config-more-layers-than-weights",
        lambda f: _edit_config(f, num_hidden_layers=40),
        ("weights lack", "attention tensors", "encoder.layer.2.", "(40 layers)"),
    ),
    (
        "config-heads-a-string",  # used to be an internal error from transformers' validation
        lambda f: _edit_config(f, num_attention_heads="3"),
        ("config.json': num_attention_heads must be a whole number, got '3'",),
    ),
    (
        "config-no-layers",  # used to print status lines before its error
        lambda f: _edit_config(f, num_hidden_layers=0),
        ("num_hidden_layers is 0",),
    ),
    ("config-nested", _nested("config.json"), ("config.json' nests its JSON deeper",)),
    (
        "tokenizer-config-nested",
        _nested("tokenizer_config.json"),
        ("tokenizer_config.json' nests its JSON deeper",),
    ),
    (
        "safetensors-header-nested",
        _safetensors_nested_header,
        ("model.safetensors' is truncated or corrupt: its header is not a JSON object",),
    ),
]


@pytest.fixture(scope="module")
def hostile_models(bert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-models")
    folders = {}
    for case, damage, _ in MODEL_CASES:
        folders[case] = _copy(bert_dir, root, case)
        damage(folders[case])
    return folders


@pytest.mark.parametrize(("case", "fragments"), [(c, f) for c, _, f in MODEL_CASES])
def test_hostile_model_is_one_line(hostile_models, tmp_path, case, fragments):
    res = run_refused("spectrum", hostile_models[case], None, tmp_path / "out")
    assert_one_line_exit_2(res, *fragments)


@pytest.mark.parametrize("command", ["project", "compare"])
@pytest.mark.parametrize(
    "case", ["safetensors-half", "t5", "vocabulary-larger-than-embeddings", "no-tokenizer"]
)
def test_hostile_models_are_refused_by_every_command(hostile_models, tmp_path, command, case):
    fragments = dict((c, f) for c, _, f in MODEL_CASES)[case]
    res = run_refused(command, hostile_models[case], None, tmp_path / "out")
    assert_one_line_exit_2(res, *fragments)


def test_truncated_weights_are_named_with_their_path(hostile_models, tmp_path):
    res = run_refused("spectrum", hostile_models["safetensors-half"], None, tmp_path / "o")
    path = hostile_models["safetensors-half"].resolve() / "model.safetensors"
    assert_one_line_exit_2(res, f"'{path}' is truncated or corrupt: ")


# --- hostile corpora -------------------------------------------------------------------------


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("wiki.test.raw", "some text " * 100)
    return buf.getvalue()


def _png_bytes() -> bytes:
    return b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


def _parquet_without_text(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a review"] * 3, "label": [1, 0, 1]}), path)


def _multiline_field(path: Path) -> None:
    """One quoted CSV field of many short lines, longer in all than the (lowered) field cap."""
    field = "\n".join(["a line of a very long review"] * 400)
    path.write_text(f'text,label\n"{field}",1\n')


# (id, file name, content (bytes, str, or a writer), fragments of the one line)
CORPUS_CASES: list[tuple[str, str, bytes | str | Callable[[Path], None], tuple[str, ...]]] = [
    ("empty", "empty.txt", b"", ("empty.txt", "holds no text")),
    ("white-space", "blank.txt", " \n\t\n  \r\n", ("blank.txt", "holds no text")),
    ("png-as-txt", "photo.txt", _png_bytes(), ("photo.txt", "binary file (a PNG image)")),
    ("zip-as-txt", "corpus.txt", _zip_bytes(), ("corpus.txt", "zip archive", "unzip")),
    ("gzip-as-raw", "wiki.test.raw", gzip.compress(b"text " * 99), ("gzip-compressed",)),
    ("nul-bytes", "nul.txt", b"good text\n" * 3 + b"\x00\x01\x02", ("nul.txt", "NUL byte")),
    ("latin-1", "latin.txt", "caf\xe9 cr\xe8me".encode("latin-1"), ("latin.txt", "not UTF-8")),
    ("utf-16", "utf16.txt", "some text".encode("utf-16"), ("utf16.txt", "UTF-16 text")),
    ("utf-16-no-bom", "le.txt", "some text".encode("utf-16-le"), ("le.txt", "UTF-16")),
    ("utf-32", "utf32.txt", "some text".encode("utf-32"), ("utf32.txt", "UTF-32 text")),
    (
        "jsonl-bad-line",
        "bad.jsonl",
        '{"text": "fine"}\n{"text": nope}\n',
        ("bad.jsonl' line 2 is not JSON",),
    ),
    ("jsonl-not-objects", "list.jsonl", "[1, 2]\n", ("list.jsonl' line 1 is not a JSON object",)),
    ("json-list-broken", "rows.json", '[{"text": "a"},', ("rows.json' is not valid JSON",)),
    (
        "csv-no-text-column",
        "notext.csv",
        "title,body\nA,B\n",
        ("notext.csv' has no 'text' or 'review' column", "'title', 'body'"),
    ),
    ("csv-header-only", "header.csv", "text,label\n", ("header.csv", "holds no text")),
    ("csv-binary", "table.csv", b"text\n\x00\x00", ("table.csv", "binary")),
    (
        "parquet-not-parquet",
        "fake.parquet",
        b"PAR1 this is not parquet",
        ("fake.parquet' is not a readable parquet file",),
    ),
    (
        "parquet-without-text",
        "nocol.parquet",
        _parquet_without_text,
        ("nocol.parquet' has no 'text' or 'review' column", "'body'"),
    ),
]


@pytest.fixture(scope="module")
def hostile_corpora(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile-corpora")
    paths = {}
    for case, name, content, _ in CORPUS_CASES:
        path = root / case / name
        path.parent.mkdir()
        if isinstance(content, bytes):
            path.write_bytes(content)
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            content(path)
        paths[case] = path
    for folder in ("empty-folder", "folder-of-notes"):
        (root / folder).mkdir()
        paths[folder] = root / folder
    (root / "folder-of-notes" / "notes.md").write_text("not a corpus")
    (root / "folder-of-notes" / "pos").mkdir()
    (root / "folder-of-notes" / "pos" / "review.txt").write_text("misnamed review")
    return paths


CORPUS_IDS = [c for c, *_ in CORPUS_CASES]
FOLDER_CASES = {
    "empty-folder": ("empty-folder' holds no reviews or articles", "wiki.test.raw"),
    "folder-of-notes": ("folder-of-notes' holds no reviews or articles",),
}


@pytest.mark.parametrize("case", CORPUS_IDS + list(FOLDER_CASES))
def test_hostile_corpus_is_one_line(hostile_corpora, bert_dir, tmp_path, case):
    fragments = dict((c, f) for c, *_, f in CORPUS_CASES) | FOLDER_CASES
    res = run_refused("spectrum", bert_dir, hostile_corpora[case], tmp_path / "out")
    assert_one_line_exit_2(res, *fragments[case])


@pytest.mark.parametrize("command", ["project", "compare"])
@pytest.mark.parametrize("case", ["png-as-txt", "latin-1", "jsonl-bad-line", "empty-folder"])
def test_hostile_corpora_are_refused_by_every_command(
    hostile_corpora, bert_dir, tmp_path, command, case
):
    fragments = dict((c, f) for c, *_, f in CORPUS_CASES) | FOLDER_CASES
    res = run_refused(command, bert_dir, hostile_corpora[case], tmp_path / "out")
    assert_one_line_exit_2(res, *fragments[case])


@pytest.mark.parametrize("command", ["spectrum", "project", "compare"])
def test_dev_zero_is_refused_at_once(bert_dir, tmp_path, command):
    res = run_refused(command, bert_dir, "/dev/zero", tmp_path / "out")
    assert_one_line_exit_2(res, "'/dev/zero' is a binary file")


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """Caps small enough to reach in a test: 256 KiB a corpus, 4 Ki characters a line."""
    caps = (2**18, 2**12)
    monkeypatch.setattr(reading, "MAX_CORPUS_BYTES", caps[0])
    monkeypatch.setattr(reading, "MAX_LINE_CHARS", caps[1])
    return caps


@pytest.mark.parametrize(
    ("case", "content", "fragments"),
    [
        ("long-line", "word " * 1000, ("line 1 of", "longer than 4 Ki characters")),
        ("long-third-line", "a\nb\n" + "x" * 5000 + "\n", ("line 3 of", "4 Ki characters")),
        ("too-large", "a short line\n" * 30_000, ("holds more than 256 KiB", "head -c")),
        ("csv-field", _multiline_field, ("holds a field longer than 4 Ki", "split")),
    ],
)
def test_caps_on_lines_and_size_are_one_line(
    bert_dir, tmp_path, small_caps, case, content, fragments
):
    path = tmp_path / ("data.csv" if case == "csv-field" else "data.txt")
    if callable(content):
        content(path)
    else:
        path.write_text(content)
    res = run_refused("spectrum", bert_dir, path, tmp_path / "out")
    assert_one_line_exit_2(res, str(path), *fragments)


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, Callable[[bytes, bool], None]]]:
    """A FIFO and a way to feed it from a writer thread: ``feed(block, forever)`` writes
    ``block`` once or until the reader goes away (EPIPE). The writer is always released."""
    path = tmp_path / "stream.txt"
    os.mkfifo(path)
    writers: list[threading.Thread] = []

    def write(block: bytes, forever: bool) -> None:
        try:
            with path.open("wb") as fh:
                fh.write(block)
                while forever:
                    fh.write(block)
        except BrokenPipeError:
            pass  # the reader stopped reading: what a bounded reader does

    def feed(block: bytes, forever: bool) -> None:
        thread = threading.Thread(target=write, args=(block, forever), daemon=True)
        thread.start()
        writers.append(thread)

    yield path, feed
    for thread in writers:
        if thread.is_alive():  # a writer blocked in open(): give it a reader that leaves
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            os.close(fd)
        thread.join(10)
        assert not thread.is_alive(), "the FIFO writer never finished"


def test_endless_fifo_without_line_breaks_stops_at_the_line_cap(bert_dir, tmp_path, fifo):
    path, feed = fifo
    feed(b"word " * 20_000, True)  # 100 kB blocks, no line break, forever
    res = run_refused("spectrum", bert_dir, path, tmp_path / "out")
    assert_one_line_exit_2(res, str(path), "longer than 16 Mi characters")


def test_endless_fifo_of_lines_stops_at_the_size_cap(bert_dir, tmp_path, fifo, small_caps):
    path, feed = fifo
    feed(b"a line of text\n" * 1000, True)
    res = run_refused("compare", bert_dir, path, tmp_path / "out")
    assert_one_line_exit_2(res, str(path), "more than 256 KiB (an endless stream?)")


def test_a_finite_fifo_is_read_like_a_file(bert_dir, tmp_path, fifo):
    """Streaming is not refusal: a pipe that ends holds a corpus like any file."""
    path, feed = fifo
    text = (corpora.data_dir() / "sample_wiki.txt").read_bytes()
    feed(text, False)
    out = tmp_path / "out"
    res = invoke(
        [*COMMANDS["spectrum"], "--model", str(bert_dir), "--data", str(path), "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "run.json").read_text())
    assert meta["corpus"]["source"] == str(path)
    assert meta["sequence_policy"]["num_sequences"] == 2
