"""Data sets (built-in, files, text, user tensors) and the step-indexed batch stream."""

from butterfly.data.dataset import DataError, Dataset, cache_dir
from butterfly.data.files import from_tensors
from butterfly.data.sources import load_dataset
from butterfly.data.stream import BatchStream, independent_batch

__all__ = [
    "BatchStream",
    "DataError",
    "Dataset",
    "cache_dir",
    "from_tensors",
    "independent_batch",
    "load_dataset",
]
