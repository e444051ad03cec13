"""Static word embeddings read offline from the ``wordllama`` wheel: texts to unit vectors.

:class:`StaticEmbeddings` is ``wordllama``'s 256-dimension ``l2_supercat`` table (32,000
tokens x 256), shipped inside its wheel, read directly from the package folder with
``safetensors`` and ``tokenizers``; a text's vector is the mean of its tokens' rows,
normalised. wordllama's own loader is not used, since it falls back to downloading from a
model hub when a file is missing (and its inference module reconfigures the root logger on
import). Nothing here opens a connection; a missing file is a
:class:`~model.errors.ModelError` naming it and the install command.

The zero-shot classifier (:mod:`model.zero_shot`) uses it for optional soft matches and for
the cosine baseline of its benchmark.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from model.errors import ModelError

__all__ = ["EMBEDDINGS_PACKAGE", "StaticEmbeddings"]

EMBEDDINGS_PACKAGE = "wordllama"
"""The package whose wheel ships the static embeddings (the ``pretrained`` extra)."""
_WEIGHTS_FILE = Path("weights") / "l2_supercat_256.safetensors"
_TOKENIZER_FILE = Path("tokenizers") / "l2_supercat_tokenizer_config.json"
_TENSOR = "embedding.weight"
_INSTALL = "pip install -e '.[pretrained]'"

FloatArray = NDArray[np.float32]


class StaticEmbeddings:
    """A static word-embedding table and its tokenizer: texts to unit vectors by mean pooling.

    :meth:`load` reads wordllama's packaged ``l2_supercat`` table (32,000 tokens x 256)
    from disk; nothing is downloaded. Thread-safe: the tokenizer is only read.
    """

    def __init__(self, table: FloatArray, tokenizer: Any) -> None:
        """Wrap an embedding ``table`` (tokens x dimensions) and a ``tokenizers.Tokenizer``."""
        if table.ndim != 2 or table.shape[0] == 0:
            raise ModelError(f"an embedding table must be 2-D and non-empty, got {table.shape}")
        self.table = np.ascontiguousarray(table, dtype=np.float32)
        self.tokenizer = tokenizer

    @property
    def dim(self) -> int:
        """The number of dimensions of a vector."""
        return int(self.table.shape[1])

    @staticmethod
    def package_directory() -> Path:
        """The installed ``wordllama`` package folder, found without importing it.

        Raises ModelError when the package is not installed.
        """
        spec = importlib.util.find_spec(EMBEDDINGS_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"the static embeddings come with the {EMBEDDINGS_PACKAGE!r} package, which is "
                f"not installed: {_INSTALL}"
            )
        return Path(next(iter(spec.submodule_search_locations)))

    @classmethod
    def load(cls, directory: Path | None = None) -> StaticEmbeddings:
        """Read the table and tokenizer under ``directory`` (default: the installed package).

        ``directory`` holds ``weights/l2_supercat_256.safetensors`` and
        ``tokenizers/l2_supercat_tokenizer_config.json``, as the wheel ships them. Raises
        ModelError naming a missing or unreadable file; never downloads anything.
        """
        root = cls.package_directory() if directory is None else Path(directory)
        weights, tokenizer_file = root / _WEIGHTS_FILE, root / _TOKENIZER_FILE
        for path in (weights, tokenizer_file):
            if not path.is_file():
                raise ModelError(
                    f"the packaged static embeddings are missing: no {path} (the "
                    f"{EMBEDDINGS_PACKAGE} wheel ships it; reinstall with {_INSTALL}); "
                    "nothing is downloaded"
                )
        try:
            from safetensors import safe_open
            from tokenizers import Tokenizer
        except ImportError as error:
            raise ModelError(f"cannot read the static embeddings: {error}; {_INSTALL}") from error
        try:
            with safe_open(str(weights), framework="np") as tensors:
                table = tensors.get_tensor(_TENSOR)
            tokenizer = Tokenizer.from_file(str(tokenizer_file))
        except Exception as error:  # safetensors and tokenizers raise their own kinds
            raise ModelError(f"cannot read the static embeddings under {root}: {error}") from error
        return cls(np.asarray(table, dtype=np.float32), tokenizer)

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Return one unit vector per text, the mean of its tokens' rows (zeros for none)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        limit = self.table.shape[0] - 1
        for row, encoding in enumerate(encodings):
            ids = [
                min(max(int(i), 0), limit)
                for i, keep in zip(encoding.ids, encoding.attention_mask, strict=True)
                if keep
            ]
            if ids:
                out[row] = self.table[ids].mean(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0.0, norms, 1.0).astype(np.float32)
        return out
