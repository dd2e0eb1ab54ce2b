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
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

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


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a TSV (GLUE columns, or CoLA's header-less four columns) or JSONL file."""
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append({k: str(v) for k, v in json.loads(line).items()})
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}, line {i}: not valid JSON ({err.msg})") from None
        return rows
    with open(path, encoding="utf-8", newline="") as fh:
        lines = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        return []
    header = lines[0]
    known = {c for pair in TEXT_COLUMNS for c in pair if c} | set(LABEL_COLUMNS)
    if not known & set(header) and len(header) == 4:  # CoLA: no header row
        return [{"label": r[1], "sentence": r[3]} for r in lines if len(r) == 4]
    return [dict(zip(header, r, strict=False)) for r in lines[1:] if r]


def find_split(folder: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` present in ``folder`` as .tsv or .jsonl."""
    for n in names:
        for ext in (".tsv", ".jsonl"):
            if (folder / f"{n}{ext}").is_file():
                return folder / f"{n}{ext}"
    return None


def load_glue(path: str | Path, name: str | None = None) -> TextDataset:
    """A GLUE task folder: ``train`` and ``dev``/``validation``/``test`` splits, TSV or JSONL."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"GLUE task folder {folder} does not exist: download the task once and set data.path"
        )
    train = find_split(folder, ("train",))
    test = find_split(folder, ("dev", "validation", "test"))
    if train is None or test is None:
        raise DataError(f"{folder} needs train.tsv|jsonl and dev.tsv|jsonl (or validation/test)")
    raw_train, raw_test = read_rows(train), read_rows(test)
    if not raw_train:
        raise DataError(f"{train} holds no examples")
    cols = raw_train[0].keys()
    pair = next(((a, b) for a, b in TEXT_COLUMNS if a in cols and (b is None or b in cols)), None)
    label = next((c for c in LABEL_COLUMNS if c in cols), None)
    if pair is None or label is None:
        raise DataError(f"{train} has columns {sorted(cols)}: no GLUE text and label columns found")
    values = sorted({r[label] for r in raw_train if r.get(label, "") != ""})
    if all(v.lstrip("-").isdigit() for v in values):
        values = sorted(values, key=int)
    index = {v: i for i, v in enumerate(values)}

    def split(rows: list[dict[str, str]], where: Path) -> TextSplit:
        a, b, y = [], [], []
        for i, r in enumerate(rows):
            if r.get(label, "") not in index:
                raise DataError(
                    f"{where}, example {i}: label {r.get(label)!r} is not one of {values}"
                )
            a.append(r[pair[0]])
            if pair[1] is not None:
                b.append(r[pair[1]])
            y.append(index[r[label]])
        return TextSplit(a, b if pair[1] is not None else None, y)

    return TextDataset(name or folder.name, split(raw_train, train), split(raw_test, test), values)
