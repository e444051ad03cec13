"""The error the dataset builder raises on purpose."""

from model.errors import EnrichError

__all__ = ["DatasetError"]


class DatasetError(EnrichError):
    """The labels, the output folder or a shard cannot be read or written as a dataset."""
