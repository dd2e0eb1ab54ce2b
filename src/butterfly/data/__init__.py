"""Data sets (built-in, files, text, user tensors) and the step-indexed batch stream."""

from butterfly.data.dataset import DataError, Dataset, cache_dir
from butterfly.data.sources import load_dataset
from butterfly.data.stream import BatchStream, independent_batch
from butterfly.data.user import as_dataset, from_tensors, from_torch

__all__ = [
    "BatchStream",
    "DataError",
    "Dataset",
    "as_dataset",
    "cache_dir",
    "from_tensors",
    "from_torch",
    "independent_batch",
    "load_dataset",
]
