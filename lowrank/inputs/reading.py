"""Bounded, streaming reading of corpus files: plain text, CSV, JSON(L) and parquet.

Every file is read in chunks under two caps (:data:`MAX_CORPUS_BYTES`, :data:`MAX_LINE_CHARS`),
so ``/dev/zero``, a FIFO or an endless stream is refused in one line instead of exhausting
memory; binary files and text that is not UTF-8 are refused naming the file and the offset.
"""

from __future__ import annotations

import codecs
import csv
import html
import io
import json
import re
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import Any

from lowrank.errors import LowrankError
from lowrank.inputs.model_files import first_line

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)

# Bounds on what is read from one corpus file, generous for real corpora (WikiText-103's raw
# training file is ~540 MB, its longest line ~30 k characters; an IMDB review ~14 k) and far
# below what exhausts memory, so that /dev/zero, a FIFO or a stream that never ends is refused
# in one line instead of ending in MemoryError.
MAX_CORPUS_BYTES = 2**30  # 1 GiB read from one file (and from all files of a folder)
MAX_LINE_CHARS = 2**24  # 16 Mi characters in one line, JSONL record or CSV field
_CHUNK = 2**20  # bytes read at a time

# Signatures of binary formats that get passed as corpora by mistake: (magic, what, advice).
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image", "pass a UTF-8 text corpus"),
    (b"\xff\xd8\xff", "a JPEG image", "pass a UTF-8 text corpus"),
    (b"GIF8", "a GIF image", "pass a UTF-8 text corpus"),
    (b"%PDF-", "a PDF document", "extract its text first (e.g. pdftotext)"),
    (b"PK\x03\x04", "a zip archive", "unzip it and pass the text file or folder"),
    (b"PK\x05\x06", "an empty zip archive", "pass a UTF-8 text corpus"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd)"),
    (b"PAR1", "a parquet file", "give it the .parquet suffix"),
    (b"\x7fELF", "an executable", "pass a UTF-8 text corpus"),
    (b"SQLite format 3\x00", "an SQLite database", "export its text first"),
)
_UTF16_32 = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def human_size(n: int) -> str:
    """Bytes or characters in words: ``1 GiB``, ``16 Mi``."""
    for unit, scale in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,}"


def _refuse_binary(path: Path, head: bytes) -> None:
    """Name the format of a file that is not UTF-8 text, from its first bytes."""
    for bom, encoding in _UTF16_32:
        if head.startswith(bom):
            raise LowrankError(
                f"'{path}' is {encoding} text, not UTF-8: re-encode it "
                f"(iconv -f {encoding} -t UTF-8 FILE > FILE.txt)"
            )
    for magic, what, advice in _SIGNATURES:
        if head.startswith(magic) and (magic != b"BZh" or head[4:10] == b"1AY&SY"):
            raise LowrankError(f"'{path}' is a binary file ({what}), not text: {advice}")
    if b"\x00" not in head:
        return
    even, odd = head[0::2].count(0), head[1::2].count(0)  # ASCII as UTF-16: every other byte
    if min(even, odd) < 0.1 * len(head) / 2 < 0.9 * len(head) / 2 < max(even, odd):
        raise LowrankError(
            f"'{path}' looks like UTF-16 text without a byte-order mark, not UTF-8: re-encode "
            "it (iconv -f UTF-16LE -t UTF-8 FILE > FILE.txt)"
        )
    raise LowrankError(
        f"'{path}' is a binary file (a NUL byte at offset {head.index(0)}), not text: pass a "
        "UTF-8 text corpus"
    )


def read_text(path: Path) -> str:
    """A whole UTF-8 text file, read in bounded chunks so that no input can exhaust memory.

    A leading UTF-8 byte-order mark is dropped. The file (a regular file, a FIFO or a device)
    is read at most :data:`MAX_CORPUS_BYTES` (1 GiB) and no line may exceed
    :data:`MAX_LINE_CHARS` (16 Mi characters; LF, CR and CRLF end a line), so ``/dev/zero``
    or an endless stream ends in one line, not in MemoryError.

    Raises:
        LowrankError: unreadable; binary (NUL bytes, or the signature of an image, archive,
            compressed or parquet file); UTF-16/32; not UTF-8 (the offset of the first bad
            byte); larger than the size cap; or a line longer than the line cap.
    """
    line_cap = MAX_LINE_CHARS
    parts: list[str] = []
    line = 0  # characters since the last line break
    number = 1  # of the current line
    after_cr = False  # the text so far ends in CR: an LF next completes a CRLF
    # a line inside one chunk is no longer than the chunk, so only lines across chunks can
    # pass the cap: ``line`` carries their length over
    chunks = _decoded_chunks(path, MAX_CORPUS_BYTES, min(_CHUNK, line_cap))
    with closing(chunks):  # closes the file at once on a refusal (a FIFO writer gets EPIPE)
        for text in chunks:
            if not text:
                continue
            last = max(text.rfind("\n"), text.rfind("\r"))
            if line + (_first_break(text) if last >= 0 else len(text)) > line_cap:
                raise LowrankError(
                    f"line {number} of '{path}' is longer than {human_size(line_cap)} "
                    "characters, the most lowrank reads in one line or record: this is not a "
                    "line-based text corpus (or split its lines)"
                )
            line = len(text) - last - 1 if last >= 0 else line + len(text)
            number += _breaks(text) - (after_cr and text[0] == "\n")
            after_cr = text[-1] == "\r"
            parts.append(text)
    return "".join(parts)


def _decoded_chunks(path: Path, size_cap: int, chunk_size: int) -> Generator[str, None, None]:
    """The UTF-8 text of a file, ``chunk_size`` bytes at a time, refusing binary data,
    UTF-16/32, bytes that are not UTF-8 and more than ``size_cap`` bytes."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    done = 0  # bytes read
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                if done == 0:
                    _refuse_binary(path, chunk)
                elif b"\x00" in chunk:
                    raise LowrankError(
                        f"'{path}' is a binary file (a NUL byte at offset "
                        f"{done + chunk.index(0)}), not text: pass a UTF-8 text corpus"
                    )
                if done + len(chunk) > size_cap:
                    stream = "" if path.is_file() else " (an endless stream?)"
                    raise LowrankError(
                        f"'{path}' holds more than {human_size(size_cap)}B{stream}, the most "
                        "lowrank reads from one corpus: pass a part of it (e.g. head -c 500M "
                        "FILE > part.txt)"
                    )
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the chunk
                try:
                    yield decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise _not_utf8(path, done - pending + exc.start, exc) from exc
                done += len(chunk)
            pending = len(decoder.getstate()[0])
            try:
                yield decoder.decode(b"", final=True)
            except UnicodeDecodeError as exc:
                raise _not_utf8(path, done - pending, exc) from exc
    except OSError as exc:
        raise LowrankError(f"cannot read '{path}': {exc.strerror or exc}") from exc


def _breaks(text: str) -> int:
    """Line breaks in ``text``: LF, CR and CRLF (one break each)."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def _first_break(text: str) -> int:
    found = [i for i in (text.find("\n"), text.find("\r")) if i >= 0]
    return min(found) if found else len(text)


def _not_utf8(path: Path, offset: int, exc: UnicodeDecodeError) -> LowrankError:
    byte = exc.object[exc.start : exc.start + 1].hex() if exc.object else "??"
    return LowrankError(
        f"'{path}' is not UTF-8 text (bad byte 0x{byte} at offset {offset}): re-encode it as "
        "UTF-8 (e.g. iconv -f latin1 -t UTF-8 FILE > FILE.txt)"
    )


_TEXT_COLUMNS = ("text", "review")
_TABLE_HELP = "a CSV/JSONL/parquet file with a 'text' or 'review' column, one document a row"


def read_table(path: Path) -> list[str]:
    """The documents of a CSV, JSONL (or JSON list) or parquet file, from its first column
    named ``text`` or ``review``, cleaned with :func:`clean_review`."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        texts = _read_parquet(path)
    elif suffix in (".jsonl", ".json", ".csv"):
        text = read_text(path)
        if not text.strip():
            raise no_text(path)
        names, rows = _read_csv(path, text) if suffix == ".csv" else _read_json(path, text)
        column = _text_column(path, names)
        texts = [r.get(column) for r in rows]
    else:
        raise LowrankError(
            f"'{path}': review data must be an aclImdb folder or a .csv/.jsonl/.parquet file"
        )
    return [clean_review(str(t)) for t in texts if t is not None]


def _text_column(path: Path, names: list[str]) -> str:
    column = next((c for c in _TEXT_COLUMNS if c in names), None)
    if column is None:
        found = ", ".join(repr(n) for n in names[:8]) + (", ..." if len(names) > 8 else "")
        raise LowrankError(
            f"'{path}' has no 'text' or 'review' column (its columns: {found or 'none'}): "
            f"pass {_TABLE_HELP}"
        )
    return column


def _read_csv(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Header names and rows; fields may hold up to :data:`MAX_LINE_CHARS` characters (the
    csv module's default limit, 131,072, is raised for the read and restored after)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(MAX_LINE_CHARS)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = list(reader)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise LowrankError(
                f"line {reader.line_num} of '{path}' holds a field longer than "
                f"{human_size(MAX_LINE_CHARS)} characters, the most lowrank reads in one CSV "
                "field: split that document"
            ) from exc
        raise LowrankError(
            f"line {reader.line_num} of '{path}' is not valid CSV ({exc}): fix the file or pass "
            "it as JSONL"
        ) from exc
    finally:
        csv.field_size_limit(previous)
    return list(reader.fieldnames or []), rows


def _read_json(path: Path, text: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of a JSONL file (one object a line), or of a ``.json`` file holding one JSON
    document (a list of objects, or one object); the column names are the keys of the first
    row."""
    document = _json_document(path, text) if path.suffix.lower() == ".json" else None
    items: list[tuple[str, int, object]] = []
    if document is not None:
        items = [("item", i, row) for i, row in enumerate(document, 1)]
    else:
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(("line", i, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise LowrankError(
                    f"'{path}' line {i} is not JSON ({exc.msg}): fix or remove that line"
                ) from exc
    rows: list[dict[str, Any]] = []
    for where, i, row in items:
        if not isinstance(row, dict):
            raise LowrankError(
                f"'{path}' {where} {i} is not a JSON object: pass one object a row, e.g. "
                '{"text": "..."}'
            )
        rows.append(row)
    return (list(rows[0]) if rows else []), rows


def _json_document(path: Path, text: str) -> list[object] | None:
    """The rows of a file that is one JSON document, or None for JSON Lines named ``.json``."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("["):
            raise LowrankError(
                f"'{path}' is not valid JSON (line {exc.lineno}: {exc.msg}): fix it, or pass "
                "JSONL, one object a line"
            ) from exc
        return None
    return whole if isinstance(whole, list) else [whole]


def _read_parquet(path: Path) -> list[object]:
    """The text column of a parquet file; only that column is read."""
    import pyarrow.parquet as pq

    if not path.is_file():
        raise LowrankError(f"'{path}' is not a regular file: parquet is read from a file on disk")
    if path.stat().st_size > MAX_CORPUS_BYTES:
        raise LowrankError(
            f"'{path}' holds more than {human_size(MAX_CORPUS_BYTES)}B, the most lowrank reads "
            "from one corpus: pass a part of it"
        )
    try:
        names = list(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises many types for a file that is not parquet
        raise LowrankError(
            f"'{path}' is not a readable parquet file ({first_line(exc)}): write it with "
            "pandas.DataFrame.to_parquet, or pass CSV/JSONL"
        ) from exc
    column = _text_column(path, names)
    try:
        return list(pq.read_table(path, columns=[column]).column(column).to_pylist())
    except Exception as exc:  # a damaged body behind a good footer
        raise LowrankError(
            f"'{path}' is a damaged parquet file ({first_line(exc)}): write it again"
        ) from exc


def clean_review(text: str) -> str:
    """Strip IMDB's ``<br />`` markup and HTML entities, collapse white space."""
    return " ".join(html.unescape(_BREAK.sub(" ", text)).split())


def no_text(source: str | Path) -> LowrankError:
    return LowrankError(
        f"corpus '{source}' holds no text (it is empty or only white space): pass a corpus "
        "with at least one non-blank document"
    )


def check_data_path(data: str | Path) -> None:
    """Refuse at once a corpus path that does not exist (or cannot be a path), as
    :func:`lowrank.inputs.corpora.load_corpus` would after its imports.

    Raises:
        LowrankError: naming the path.
    """
    try:
        missing = not Path(data).expanduser().exists()
    except OSError as exc:  # a name too long, a loop of links
        shown = str(data) if len(str(data)) <= 60 else f"{str(data)[:57]}..."
        raise LowrankError(
            f"data '{shown}' is not a usable path ({exc.strerror or exc}): a string is read "
            "as a file or folder; pass texts as a list of strings"
        ) from None
    if missing:
        raise LowrankError(f"data path '{data}' does not exist")
