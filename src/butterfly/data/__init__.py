"""Data sources and the step-indexed batch stream."""

from butterfly.data.sources import DataError, Dataset, cache_dir, load_dataset
from butterfly.data.stream import BatchStream, independent_batch

__all__ = ["BatchStream", "DataError", "Dataset", "cache_dir", "independent_batch", "load_dataset"]
