"""Text classification data as token-id tensors, for Hugging Face classifiers.

* ``glue``: a GLUE task folder (``data.path``) read by :func:`butterfly.data.glue.load_glue`.
* ``sentiment``: a procedurally generated two-class sentiment task (templated sentences with
  positive/negative words, negation and distractor clauses), written once to the cache as
  SST-2-format TSV files and read back through the same GLUE reader. It exists so the
  fine-tuning path runs offline and in tests; it is not a benchmark.
* ``pairs``: the same sentences in pairs (RTE-format TSV: ``sentence1``, ``sentence2``,
  ``label``), label 1 when both judge the film the same way: a sentence-pair stand-in for
  QNLI, MRPC and RTE.

Examples are tokenised with the model's tokenizer to ``data.max_length`` tokens (padding and
truncation) and stored as ``(N, 2, L)`` int64 tensors: token ids and token type ids.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from butterfly.atomic import atomic_path
from butterfly.data.dataset import DataError, Dataset, generated_cache
from butterfly.data.glue import TextDataset, TextSplit, load_glue
from butterfly.hf_local import HFUnavailable, load_tokenizer

POSITIVE = [
    "great", "wonderful", "moving", "delightful", "brilliant", "charming", "superb",
    "touching", "funny", "gripping", "beautiful", "clever", "fresh", "memorable",
]  # fmt: skip
NEGATIVE = [
    "dull", "tedious", "clumsy", "awful", "boring", "bland", "messy", "lifeless",
    "predictable", "shallow", "forgettable", "tiresome", "weak", "pointless",
]  # fmt: skip
SUBJECTS = [
    "the film", "this movie", "the story", "the acting", "the script", "the soundtrack",
    "the direction", "the ending", "the cast", "the dialogue", "the pacing", "the plot",
]  # fmt: skip
FILLERS = [
    "even though the theatre was cold", "according to my friend", "on the whole",
    "from start to finish", "for most of its running time", "as far as i can tell",
    "despite the long queue", "in the second half", "by any standard", "to my surprise",
]  # fmt: skip


def _sentence(rng: random.Random) -> tuple[str, int]:
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE if positive else NEGATIVE)
    negated = rng.random() < 0.3
    verb = rng.choice(["is", "was", "felt", "seemed"])
    adverb = rng.choice(["", "really ", "rather ", "quite ", "very "])
    neg = "not " if negated else ""
    core = f"{rng.choice(SUBJECTS)} {verb} {neg}{adverb}{word}"
    if rng.random() < 0.5:
        core = (
            f"{core} {rng.choice(FILLERS)}"
            if rng.random() < 0.5
            else f"{rng.choice(FILLERS)}, {core}"
        )
    return core + rng.choice([".", "!", " ."]), int(positive != negated)


def _write_tsv(
    folder: Path, header: list[str], row: Callable[[random.Random], list[object]], seed: str,
    n_train: int, n_dev: int,
) -> Path:  # fmt: skip
    """``train.tsv`` and ``dev.tsv`` of generated rows, each written atomically."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        with atomic_path(folder / f"{name}.tsv") as tmp, open(tmp, "w", encoding="utf-8",
                                                             newline="") as fh:  # fmt: skip
            w = csv.writer(fh, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            w.writerow(header)
            for _ in range(n):
                w.writerow(row(rng))
    return folder


def write_sentiment(folder: Path, seed: int = 0, n_train: int = 2000, n_dev: int = 500) -> Path:
    """Write the generated sentiment task as SST-2 TSV files (``sentence``, ``label``)."""
    return _write_tsv(folder, ["sentence", "label"], lambda rng: list(_sentence(rng)),
                      f"sentiment-{seed}", n_train, n_dev)  # fmt: skip


def _pair(rng: random.Random) -> list[object]:
    (a, la), (b, lb) = _sentence(rng), _sentence(rng)
    return [a, b, int(la == lb)]


def write_pairs(folder: Path, seed: int = 0, n_train: int = 2000, n_dev: int = 500) -> Path:
    """Write the generated sentence-pair task as RTE-style TSV files (``sentence1``,
    ``sentence2``, ``label``): label 1 when both sentences judge the film the same way."""
    return _write_tsv(folder, ["sentence1", "sentence2", "label"], _pair, f"pairs-{seed}",
                      n_train, n_dev)  # fmt: skip


def generated_folder(name: str, seed: int = 0) -> Path:
    """The folder of a generated text task (``sentiment`` or ``pairs``), written once."""
    return generated_cache(name, seed, write_pairs if name == "pairs" else write_sentiment,
                           "dev.tsv")  # fmt: skip


def sentiment_folder(seed: int = 0) -> Path:
    return generated_folder("sentiment", seed)


def tokenize(split: TextSplit, tokenizer: object, max_length: int) -> torch.Tensor:
    """``(N, 2, L)`` int64: token ids and token type ids, padded and truncated to ``max_length``."""
    args = (split.text_a,) if split.text_b is None else (split.text_a, split.text_b)
    enc = tokenizer(  # type: ignore[operator]
        *args, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt"
    )
    ids = enc["input_ids"].to(torch.int64)
    types = enc.get("token_type_ids")
    types = torch.zeros_like(ids) if types is None else types.to(torch.int64)
    return torch.stack([ids, types], dim=1).contiguous()


class ByteTextTokenizer:
    """``data.tokenizer = bytes`` for classification text (any model of your own): the UTF-8
    bytes of each text as ids 0-255, padding 256, a separator 257 between the two texts of a
    pair, token types 0 and 1; called as a Hugging Face tokenizer is."""

    pad_id, sep_id, vocab_size = 256, 257, 258

    def __call__(self, texts: list[str], pairs: list[str] | None = None, *, max_length: int,
                 **_: Any) -> dict[str, torch.Tensor]:  # fmt: skip
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.int64)
        types = torch.zeros_like(ids)
        for i, a in enumerate(texts):
            row = list(a.encode("utf-8"))
            kinds = [0] * len(row)
            if pairs is not None:
                b = [self.sep_id, *pairs[i].encode("utf-8")]
                row, kinds = row + b, kinds + [1] * len(b)
            row, kinds = row[:max_length], kinds[:max_length]
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
            types[i, : len(kinds)] = torch.tensor(kinds, dtype=torch.int64)
        return {"input_ids": ids, "token_type_ids": types}


def text_dataset(text: TextDataset, tokenizer: object, max_length: int) -> Dataset:
    return Dataset(
        text.name,
        tokenize(text.train, tokenizer, max_length),
        torch.tensor(text.train.labels, dtype=torch.int64),
        tokenize(text.test, tokenizer, max_length),
        torch.tensor(text.test.labels, dtype=torch.int64),
        text.n_classes,
    )


def load_text(
    name: str, path: str | None, seed: int, tokenizer: str | None, max_length: int,
    max_rows: int | None = None,
) -> Dataset:  # fmt: skip
    """A text data set tokenised by ``tokenizer`` (a model folder, cached id, or ``minilm``).

    ``max_rows``: for ``glue``, only the first ``max_rows`` examples of each split are read and
    tokenised (a preview; see :func:`~butterfly.data.glue.load_glue`); the generated
    ``sentiment`` and ``pairs`` are small and always whole."""
    if tokenizer is None:
        raise DataError(
            f"data.name = {name} needs a tokenizer: set data.tokenizer or use model.name = hf"
        )
    if name in ("sentiment", "pairs"):
        text = load_glue(generated_folder(name, seed), name)
    else:
        if path is None:
            raise DataError("data.name = glue needs data.path: the folder of one GLUE task")
        text = load_glue(Path(path), name, max_rows=max_rows)
    if tokenizer == "bytes":
        return text_dataset(text, ByteTextTokenizer(), max_length)
    try:  # the files are read first: what is wrong with them is said before the tokenizer loads
        tok = load_tokenizer(tokenizer)
    except HFUnavailable as err:
        raise DataError(str(err)) from None
    return text_dataset(text, tok, max_length)
