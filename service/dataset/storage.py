"""Files of a dataset under a local path or any `tf.io.gfile` URL, each written atomically.

A file is written to a temporary name beside it and renamed into place, so a reader (or a
resumed build) sees either the whole file or none.
"""

import uuid
from collections.abc import Iterable
from typing import Any

from service.dataset.errors import DatasetError

__all__ = [
    "exists",
    "join",
    "list_names",
    "read_text",
    "write_bytes",
    "write_records",
    "write_text",
]


def _gfile() -> Any:
    import tensorflow as tf

    return tf.io.gfile


def _errors() -> tuple[type[BaseException], ...]:
    import tensorflow as tf

    return (OSError, tf.errors.OpError)


def join(root: str, *names: str) -> str:
    """`root/name/...` for local paths and URLs alike."""
    return "/".join([root.rstrip("/"), *names])


def exists(path: str) -> bool:
    """True if a file or folder is there."""
    return bool(_gfile().exists(path))


def list_names(folder: str) -> list[str]:
    """The names in `folder`, sorted; none when it does not exist."""
    gfile = _gfile()
    if not gfile.exists(folder):
        return []
    return sorted(str(name).rstrip("/") for name in gfile.listdir(folder))


def read_text(path: str) -> str:
    """The text of a file; `DatasetError` when it cannot be read."""
    try:
        with _gfile().GFile(path, "r") as stream:
            return str(stream.read())
    except _errors() as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


def _publish(tmp: str, path: str) -> None:
    gfile = _gfile()
    try:
        gfile.rename(tmp, path, overwrite=True)
    except _errors() as exc:
        raise DatasetError(f"cannot move {tmp} to {path}: {exc}") from exc


def _tmp_name(path: str) -> str:
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` atomically, making its folder."""
    gfile = _gfile()
    tmp = _tmp_name(path)
    try:
        gfile.makedirs(path.rpartition("/")[0] or ".")
        with gfile.GFile(tmp, "w") as stream:
            stream.write(text)
    except _errors() as exc:
        raise DatasetError(f"cannot write {path}: {exc}") from exc
    _publish(tmp, path)


def write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` atomically, making its folder."""
    gfile = _gfile()
    tmp = _tmp_name(path)
    try:
        gfile.makedirs(path.rpartition("/")[0] or ".")
        with gfile.GFile(tmp, "wb") as stream:
            stream.write(data)
    except _errors() as exc:
        raise DatasetError(f"cannot write {path}: {exc}") from exc
    _publish(tmp, path)


def write_records(path: str, records: Iterable[bytes]) -> int:
    """Write a TFRecord file atomically; returns how many records it holds."""
    import tensorflow as tf

    tmp = _tmp_name(path)
    count = 0
    try:
        _gfile().makedirs(path.rpartition("/")[0] or ".")
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in records:
                writer.write(record)
                count += 1
    except _errors() as exc:
        raise DatasetError(f"cannot write shard {path}: {exc}") from exc
    _publish(tmp, path)
    return count
