"""GLUE-style text classification from local files (TSV with the GLUE columns, or JSONL).

Reads a task folder holding ``train`` and ``dev`` (or ``validation``/``test``) splits as
``.tsv`` or ``.jsonl``, and returns the texts (one or two segments per example) and integer
labels. Tokenisation is left to the model's tokenizer. Column names follow the GLUE release:

    task   text columns                 label
    SST-2  sentence                     label (0/1)
    CoLA   4 columns, no header: source, label, original label, sentence
    MRPC   #1 String, #2 String         Quality (0/1)
    RTE    sentence1, sentence2         label (entailment / not_entailment)
    QNLI   question, sentence           label (entailment / not_entailment)
    MNLI   sentence1, sentence2         gold_label
    QQP    question1, question2         is_duplicate

Files are streamed line by line as UTF-8 (a byte-order mark is dropped); anything malformed is
refused with one sentence (:class:`DataError`) naming the file and the line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from butterfly.data.dataset import DataError

TEXT_COLUMNS = [
    ("sentence1", "sentence2"),
    ("question", "sentence"),
    ("question1", "question2"),
    ("#1 String", "#2 String"),
    ("premise", "hypothesis"),
    ("sentence", None),
    ("text", None),
]
LABEL_COLUMNS = ["label", "gold_label", "is_duplicate", "Quality"]


@dataclass(frozen=True)
class TextSplit:
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int]


@dataclass(frozen=True)
class TextDataset:
    name: str
    train: TextSplit
    test: TextSplit
    label_names: list[str]

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


FIELD_LIMIT = csv.field_size_limit()  # the csv module's longest field: 131,072 characters
KNOWN_COLUMNS = {c for pair in TEXT_COLUMNS for c in pair if c} | set(LABEL_COLUMNS)
COLA_COLUMNS = ["source", "label", "original label", "sentence"]

# One example's fields: text (TSV), or the values of a JSON object as given (JSONL). Whoever
# reads a field takes it through :func:`text_field`, which gives numbers and true/false as text
# (as ``str`` writes them) and refuses null, arrays and objects with a sentence; fields nobody
# reads may hold anything.
Row = dict[str, Any]


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file (each ending at a newline), numbered from 1, read as a
    stream; a byte-order mark at the start is dropped."""
    with open(path, encoding="utf-8-sig", newline="\n") as fh:
        try:
            for i, line in enumerate(fh, 1):
                if "\x00" in line:
                    raise DataError(f"{path}, line {i}: holds a NUL byte, so it is a binary "
                                    "file, not UTF-8 text")  # fmt: skip
                yield i, line
        except UnicodeDecodeError:
            raise _not_utf8(path) from None


def _not_utf8(path: Path) -> DataError:
    """The sentence for a file that is not UTF-8: the first line that is not, and where."""
    with open(path, "rb") as fh:
        for i, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8-sig" if i == 1 else "utf-8")
            except UnicodeDecodeError as err:
                return DataError(
                    f"{path}, line {i}: not UTF-8 text (byte 0x{raw[err.start]:02x} at position "
                    f"{err.start + 1} of the line): give the file as UTF-8 text"
                )
    return DataError(f"{path} is not UTF-8 text: give the file as UTF-8 text")


def _json_kind(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true/false"
    return {dict: "object", list: "array", str: "string"}.get(type(v), "number")


def _jsonl_rows(path: Path) -> Generator[tuple[int, Row], None, None]:
    seen = False
    for i, line in _lines(path):
        if not line.strip():
            continue
        seen = True
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            whole = i == 1 and line.strip() in ("[", "{")
            hint = ": one JSON object per line is expected, not one JSON document" if whole else ""
            raise DataError(f"{path}, line {i}: not valid JSON ({err.msg}){hint}") from None
        if not isinstance(obj, dict):
            raise DataError(
                f"{path}, line {i}: a JSON {_json_kind(obj)} where a JSON object of named "
                "fields is expected (one object per line)"
            )
        yield i, obj
    if not seen:
        raise DataError(f"{path} is empty: it holds no examples")


def _tsv_rows(path: Path) -> Generator[tuple[int, Row], None, None]:
    reader = csv.reader((line for _, line in _lines(path)), delimiter="\t",
                        quoting=csv.QUOTE_NONE)  # fmt: skip
    header: list[str] | None = None
    head_line = 0
    cola = examples = False
    try:
        for r in reader:
            i = reader.line_num
            if not r or (len(r) == 1 and not r[0].strip()):
                continue  # a blank line
            if header is None:
                header, head_line = r, i
                if not KNOWN_COLUMNS & set(r) and len(r) == 4:  # CoLA: no header row
                    header, cola = COLA_COLUMNS, True
                else:
                    _check_header(path, i, r)
                    continue
            if len(r) != len(header):
                raise DataError(_width_sentence(path, i, len(r), header, head_line, cola))
            examples = True
            row = {"label": r[1], "sentence": r[3]} if cola else dict(zip(header, r, strict=True))
            yield i, row
    except csv.Error as err:
        i = reader.line_num
        if "field limit" in str(err):
            raise DataError(
                f"{path}, line {i}: a field longer than {FIELD_LIMIT:,} characters, the most a "
                "TSV field may hold (give very long texts as .jsonl)"
            ) from None
        raise DataError(f"{path}, line {i}: not a readable TSV line ({err})") from None
    if header is None:
        raise DataError(f"{path} is empty: it holds no header and no examples")
    if not examples:
        raise DataError(f"{path} holds a header (line {head_line}) but no examples")


def _check_header(path: Path, line: int, header: list[str]) -> None:
    """Refuse a header that shows the file is not tab-separated at all."""
    if len(header) != 1:
        return
    first = header[0].strip()
    if first.startswith("{"):
        raise DataError(f"{path}, line {line}: a JSON object where a tab-separated header is "
                        "expected; name the file .jsonl")  # fmt: skip
    if "," in first:
        raise DataError(
            f"{path}, line {line}: the header {first[:80]!r} holds commas and no tab: a "
            "comma-separated file, where tab-separated columns are expected"
        )


def _width_sentence(
    path: Path, line: int, n: int, header: list[str], head_line: int, cola: bool
) -> str:
    fields = f"{n} tab-separated field{'' if n == 1 else 's'}"
    if cola:
        return (f"{path}, line {line}: {fields}, where CoLA's header-less format has 4 (source, "
                "label, original label, sentence)")  # fmt: skip
    why = "a tab inside a text" if n > len(header) else "a tab missing, or a line break in a text"
    return (f"{path}, line {line}: {fields}, where the header (line {head_line}) names "
            f"{len(header)} ({why})")  # fmt: skip


def iter_rows(path: Path) -> Generator[tuple[int, Row], None, None]:
    """``(line number, fields)`` of each example of a TSV (GLUE columns under a header row, or
    CoLA's header-less four columns) or JSONL file (one JSON object per line), read as a
    stream. Every malformed input raises :class:`DataError` naming the file and line."""
    return _jsonl_rows(path) if path.suffix == ".jsonl" else _tsv_rows(path)


def read_rows(path: Path, max_rows: int | None = None) -> list[tuple[int, Row]]:
    """The numbered rows of a TSV or JSONL file (:func:`iter_rows`): all of them, or the first
    ``max_rows`` (the rest of the file is not read)."""
    rows = iter_rows(path)
    try:
        return list(islice(rows, max_rows))
    finally:
        rows.close()


def text_field(path: Path, line: int, row: Row, key: str, what: str = "text") -> str:
    """The field ``key`` of an example, which must be ``what`` (text, a label): a sentence
    naming the file and line if it is absent, null, a list or an object."""
    if key not in row:
        raise DataError(f"{path}, line {line}: no '{key}' field (the example has "
                        f"{sorted(row)})")  # fmt: skip
    v = row[key]
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)):  # a JSON number or true/false, as text
        return str(v)
    kind = "null" if v is None else f"a JSON {_json_kind(v)}"
    raise DataError(f"{path}, line {line}: '{key}' is {kind}, where it must be {what}")


def find_split(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` present in ``folder`` as .tsv or .jsonl."""
    for n in names:
        for ext in (".tsv", ".jsonl"):
            if (folder / f"{n}{ext}").is_file():
                return folder / f"{n}{ext}"
    return None


def load_glue(
    path: str | Path, name: str | None = None, *, max_rows: int | None = None
) -> TextDataset:
    """A GLUE task folder: ``train`` and ``dev``/``validation``/``test`` splits, TSV or JSONL.

    ``max_rows``: read only the first ``max_rows`` examples of each split (a preview: the rest
    of each file is not read). The class names are then those the two previews show (the
    training file's labels are read to its end only if its preview shows a single class), so
    a preview may know fewer classes than the whole task.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"GLUE task folder {folder} does not exist: download the task once and set data.path"
        )
    train = find_split(folder, ("train",))
    test = find_split(folder, ("dev", "validation", "test"))
    if train is None or test is None:
        raise DataError(f"{folder} needs train.tsv|jsonl and dev.tsv|jsonl (or validation/test)")
    raw_train, raw_test = read_rows(train, max_rows), read_rows(test, max_rows)
    cols = raw_train[0][1].keys()
    pair = next(((a, b) for a, b in TEXT_COLUMNS if a in cols and (b is None or b in cols)), None)
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    if pair is None or label is None:
        texts = ", ".join(a if b is None else f"{a} + {b}" for a, b in TEXT_COLUMNS)
        raise DataError(
            f"{train} has columns {sorted(cols)}: no GLUE text and label columns found (text: "
            f"{texts}; label: {', '.join(LABEL_COLUMNS)})"
        )

    def labels(rows: list[tuple[int, Row]] | Iterator[tuple[int, Row]], where: Path) -> set[str]:
        return {text_field(where, i, r, label, "a class label") for i, r in rows} - {""}

    found = labels(raw_train, train)
    if max_rows is not None:  # a preview: the test split's labels count too
        found |= labels(raw_test, test)
        if len(found) < 2:  # the preview may have caught one class only: read on for labels
            rest = iter_rows(train)
            try:
                found |= labels(rest, train)
            finally:
                rest.close()
    if len(found) < 2:
        what = f"every '{label}' is {next(iter(found))!r}" if found else f"every '{label}' is empty"
        raise DataError(f"{train} holds only one class ({what}): a classification task needs "
                        "examples of two classes or more")  # fmt: skip
    values = sorted(found)
    if all(v.lstrip("-").isdigit() for v in values):
        values = sorted(values, key=int)
    index = {v: i for i, v in enumerate(values)}

    def split(rows: list[tuple[int, Row]], where: Path) -> TextSplit:
        a, b, y = [], [], []
        for i, r in rows:
            v = text_field(where, i, r, label, "a class label")
            if v not in index:
                unlabelled = " (the label is empty: an unlabelled test split?)" if v == "" else ""
                raise DataError(
                    f"{where}, line {i}: label {v!r} is not one of {values}{unlabelled}"
                )
            a.append(text_field(where, i, r, pair[0]))
            if pair[1] is not None:
                b.append(text_field(where, i, r, pair[1]))
            y.append(index[v])
        return TextSplit(a, b if pair[1] is not None else None, y)

    return TextDataset(name or folder.name, split(raw_train, train), split(raw_test, test), values)
