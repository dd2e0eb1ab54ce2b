"""Which data set a config names, built and filtered: the one entry point of ``data``.

Nothing below imports this module (the loaders only know :class:`~butterfly.data.dataset.Dataset`),
so there are no cycles between the dispatcher and the loaders.
"""

from __future__ import annotations

from pathlib import Path

import torch

from butterfly.config import STORED, DataConfig
from butterfly.data import builtin, causal, files, text, user
from butterfly.data.dataset import DataError, Dataset
from butterfly.imports import ImportPathError, resolve
from butterfly.safepath import inside


def load_dataset(
    cfg: DataConfig, tokenizer: str | None = None, run_dir: Path | None = None, *,
    max_rows: int | None = None,
) -> Dataset:  # fmt: skip
    """Build the data set a config names (``tokenizer``: for text data sets; ``run_dir``: the
    run folder that holds stored data), then keep only ``cfg.classes`` (relabelled 0..k-1 in
    the order given) and the first ``cfg.max_train`` training examples.

    ``max_rows``: a preview for planning: the text and question/answer files (``glue``,
    ``gsm8k``) are read only up to their first ``max_rows`` examples of each split, streamed,
    so a preview of a huge file is quick; every other data set (generated, images, stored,
    a user's loader) is loaded whole as without it. ``None``: everything."""
    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int)
                                 or max_rows < 1):  # fmt: skip
        raise ValueError(f"max_rows must be a positive integer or None, not {max_rows!r}")
    data = _load(cfg, tokenizer, run_dir, max_rows)
    if cfg.classes is not None:
        data = select_classes(data, cfg.classes)
    if cfg.max_train is not None and cfg.max_train < len(data.y_train):
        n = cfg.max_train
        data = Dataset(data.name, data.x_train[:n], data.y_train[:n], data.x_test, data.y_test,
                       data.n_classes)  # fmt: skip
    return data


def select_classes(data: Dataset, classes: list[int]) -> Dataset:
    """The examples of ``classes`` only, relabelled ``classes[i] -> i`` (e.g. a task split)."""
    bad = [c for c in classes if c >= data.n_classes]
    if bad:
        raise DataError(
            f"data.classes {bad} do not exist: '{data.name}' has classes 0..{data.n_classes - 1}"
        )
    lut = torch.full((data.n_classes,), -1, dtype=torch.int64)
    lut[torch.tensor(classes)] = torch.arange(len(classes))

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        new = lut[y]
        keep = new >= 0
        return x[keep].contiguous(), new[keep]

    xtr, ytr = pick(data.x_train, data.y_train)
    xte, yte = pick(data.x_test, data.y_test)
    return Dataset(f"{data.name}[{','.join(map(str, classes))}]", xtr, ytr, xte, yte, len(classes))


def _load(
    cfg: DataConfig, tokenizer: str | None, run_dir: Path | None, max_rows: int | None
) -> Dataset:
    if cfg.name == STORED:
        kept = user.recall(cfg.fingerprint)
        if kept is not None:
            return kept
        if run_dir is None:
            raise DataError("stored data lives in a run folder: give the run folder")
        return user.load_stored(inside(Path(run_dir), cfg.path or user.STORED_FILE),
                                cfg.fingerprint)  # fmt: skip
    if not cfg.builtin:
        try:
            loader = resolve(cfg.name, "data.name")
        except ImportPathError as err:
            raise DataError(str(err)) from None
        if not callable(loader):
            raise DataError(f"data.name '{cfg.name}' is a {type(loader).__name__}, not a loader")
        try:
            obj = loader(**cfg.kwargs)
        except TypeError as err:
            raise DataError(f"data loader '{cfg.name}' cannot take data.kwargs: {err}") from None
        except Exception as err:
            first = str(err).splitlines()[0] if str(err) else ""
            raise DataError(
                f"data loader '{cfg.name}' failed: {type(err).__name__}: {first}"
            ) from None
        return user.as_dataset(obj, cfg.name.split(":")[-1])
    if cfg.name == "mnist1d":
        return builtin.load_mnist1d(cfg.seed)
    if cfg.name == "digits":
        return builtin.load_digits(cfg.seed)
    if cfg.name == "synthetic":
        return builtin.make_synthetic(cfg)
    if cfg.causal:
        return causal.load_causal(cfg.name, cfg.path, cfg.seed, tokenizer, cfg.max_length,
                                  max_rows)  # fmt: skip
    if cfg.name in ("glue", "sentiment", "pairs"):
        return text.load_text(cfg.name, cfg.path, cfg.seed, tokenizer, cfg.max_length,
                              max_rows)  # fmt: skip
    if cfg.name in ("cifar10", "cifar100"):
        return files.load_cifar(cfg.path, 10 if cfg.name == "cifar10" else 100)
    if cfg.name == "mnist":
        return files.load_mnist(cfg.path)
    raise DataError(f"unknown data set '{cfg.name}'")  # unreachable after validation
