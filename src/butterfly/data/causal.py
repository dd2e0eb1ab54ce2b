"""Question/answer text for causal language models: GSM8K's format, read from local files.

``data.name = gsm8k`` reads a folder (``data.path``) holding ``train`` and ``test`` (or ``dev``
/ ``validation``) splits as ``.jsonl`` (GSM8K's release: one ``{"question": ..., "answer":
...}`` object per line) or ``.tsv`` with ``question`` and ``answer`` columns.
``data.name = arithmetic`` is a generated stand-in in the same format (word problems on small
numbers with a worked answer ending ``#### N``), written once to the cache, so the causal-LM
path runs offline and in tests; it is not a benchmark.

Each example becomes ``prompt + answer + end-of-text``, with the prompt ``"Question: {q}\\n
Answer: "``. Inputs are ``(N, 2, L)`` int64 tensors (token ids, attention mask), right-padded
and truncated to ``data.max_length`` tokens; targets are ``(N, L)`` token ids with -100 on the
prompt and the padding, so the next-token loss and the exact-match accuracy count the answer
only (``butterfly.metrics.evaluate``). ``data.tokenizer = bytes`` is a built-in byte-level
tokenizer (256 byte values, padding and end-of-text: 258 ids) for the built-in ``gpt`` model;
otherwise the tokenizer of the Hugging Face model.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch

from butterfly.atomic import write_atomic
from butterfly.data.dataset import DataError, Dataset, generated_cache
from butterfly.data.glue import find_split, read_rows, text_field

IGNORE = -100  # target id that no loss or accuracy counts (torch's cross_entropy default)
PROMPT = "Question: {q}\nAnswer: "
BYTES = "bytes"


class ByteTokenizer:
    """Bytes of the UTF-8 text as ids 0-255, then padding (256) and end-of-text (257)."""

    pad_id, eos_id, vocab_size = 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class HFTokenizer:
    """A Hugging Face tokenizer behind :class:`ByteTokenizer`'s interface."""

    def __init__(self, tok: Any):
        self.tok = tok
        eos = tok.eos_token_id
        if eos is None:
            raise DataError("the tokenizer has no end-of-text token (eos_token): it cannot mark "
                            "where an answer ends")  # fmt: skip
        self.eos_id = int(eos)
        self.pad_id = int(tok.pad_token_id if tok.pad_token_id is not None else eos)
        self.vocab_size = len(tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])


def read_qa(
    folder: str | Path, max_rows: int | None = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """The train and test examples (``question`` and ``answer`` texts) of a question/answer
    folder: all of them, or the first ``max_rows`` of each split (the rest is not read)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"question/answer folder {folder} does not exist: set data.path to the "
                        "folder holding train.jsonl and test.jsonl")  # fmt: skip
    train = find_split(folder, ("train",))
    test = find_split(folder, ("test", "dev", "validation"))
    if train is None or test is None:
        raise DataError(f"{folder} needs train.jsonl|tsv and test.jsonl|tsv (or dev/validation)")
    out = []
    for path in (train, test):
        rows = read_rows(path, max_rows)
        first = rows[0][1]
        if path.suffix != ".jsonl" and not {"question", "answer"} <= first.keys():
            raise DataError(f"{path}: the header names {sorted(first)}, where a question/answer "
                            "file needs the columns 'question' and 'answer'")  # fmt: skip
        examples = []
        for i, r in rows:
            q, a = r.get("question"), r.get("answer")
            if not (isinstance(q, str) and isinstance(a, str)):  # say which, and why
                q, a = text_field(path, i, r, "question"), text_field(path, i, r, "answer")
            examples.append({"question": q, "answer": a})
        out.append(examples)
    return out[0], out[1]


def encode_qa(
    rows: list[dict[str, str]], tok: ByteTokenizer | HFTokenizer, max_length: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 2, L)`` ids and attention mask, ``(N, L)`` targets (-100 off the answer)."""
    n = len(rows)
    ids = torch.full((n, max_length), tok.pad_id, dtype=torch.int64)
    mask = torch.zeros((n, max_length), dtype=torch.int64)
    target = torch.full((n, max_length), IGNORE, dtype=torch.int64)
    empty = 0
    for i, r in enumerate(rows):
        prompt = tok.encode(PROMPT.format(q=r["question"].strip()))
        answer = [*tok.encode(r["answer"].strip()), tok.eos_id]
        seq = (prompt + answer)[:max_length]
        k = len(seq)
        ids[i, :k] = torch.tensor(seq)
        mask[i, :k] = 1
        lo = min(len(prompt), k)
        target[i, lo:k] = ids[i, lo:k]
        # the first answer token is predicted from the prompt's last: it needs one prompt token
        empty += int(lo >= k or lo == 0)
    if empty:
        raise DataError(
            f"{where}: {empty} of {n} examples have no answer token within data.max_length = "
            f"{max_length}; raise data.max_length"
        )
    return torch.stack([ids, mask], dim=1).contiguous(), target


def qa_dataset(
    name: str, train: list[dict[str, str]], test: list[dict[str, str]],
    tok: ByteTokenizer | HFTokenizer, max_length: int,
) -> Dataset:  # fmt: skip
    x_tr, y_tr = encode_qa(train, tok, max_length, f"{name} train")
    x_te, y_te = encode_qa(test, tok, max_length, f"{name} test")
    return Dataset(name, x_tr, y_tr, x_te, y_te, tok.vocab_size)


# ---- the generated stand-in -----------------------------------------------------------------
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Iris", "Jack"]
THINGS = ["apples", "books", "coins", "pencils", "stamps", "shells", "cards", "marbles"]


def _problem(rng: random.Random) -> dict[str, str]:
    who, thing = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 20)
    op = rng.choice(["gets", "gives away", "triples"])
    if op == "gets":
        q = f"{who} has {a} {thing} and gets {b} more. How many {thing} does {who} have now?"
        work, n = f"{a} + {b} = {a + b}", a + b
    elif op == "gives away":
        a = a + b
        q = f"{who} has {a} {thing} and gives away {b}. How many {thing} are left?"
        work, n = f"{a} - {b} = {a - b}", a - b
    else:
        q = f"{who} has {b} {thing} and then triples them. How many {thing} does {who} have?"
        work, n = f"{b} * 3 = {3 * b}", 3 * b
    return {"question": q, "answer": f"{work}\n#### {n}"}


def write_arithmetic(folder: Path, seed: int = 0, n_train: int = 1000, n_test: int = 200) -> Path:
    """Generated GSM8K-format train.jsonl and test.jsonl in ``folder`` (atomically)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        write_atomic(folder / f"{split}.jsonl",
                     "".join(json.dumps(_problem(rng)) + "\n" for _ in range(n)))  # fmt: skip
    return folder


def load_causal(
    name: str, path: str | None, seed: int, tokenizer: str | None, max_length: int,
    max_rows: int | None = None,
) -> Dataset:  # fmt: skip
    """``gsm8k`` (a local folder) or ``arithmetic`` (generated), tokenised for a causal LM.

    ``max_rows``: for ``gsm8k``, only the first ``max_rows`` examples of each split are read
    and tokenised (a preview); ``arithmetic`` is small and always whole."""
    if name == "arithmetic":
        folder = generated_cache("arithmetic", seed, write_arithmetic, "test.jsonl")
        max_rows = None
    else:
        if path is None:
            raise DataError("data.name = gsm8k needs data.path: the folder holding train.jsonl "
                            "and test.jsonl")  # fmt: skip
        folder = Path(path)
    train, test = read_qa(folder, max_rows)
    if tokenizer in (None, BYTES):
        tok: ByteTokenizer | HFTokenizer = ByteTokenizer()
    else:
        from butterfly.hf_local import HFUnavailable, load_tokenizer

        try:
            tok = HFTokenizer(load_tokenizer(tokenizer))
        except HFUnavailable as err:
            raise DataError(str(err)) from None
    return qa_dataset(name, train, test, tok, max_length)
