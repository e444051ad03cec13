"""The images a model got wrong, for people to look at: a table of every mistake and a gallery
of the most confident ones.

A figure says how often the model is wrong; the gallery says *how*: a dress laid flat that
reads as a top, an oat-milk carton taken for yogurt, a label that is itself debatable. The
most confident mistakes come first, since those are the ones abstention cannot catch.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from model.data import LabelRow
from model.decode import Prediction
from model.errors import ModelError
from model.plots import save_png
from model.taxonomy import TruncatedTaxonomy

__all__ = ["GALLERY_SIZE", "Mistake", "find_mistakes", "plot_mistakes", "write_mistakes_csv"]

GALLERY_SIZE = 24
"""Images in the gallery at most (4 rows of 6)."""

_COLUMNS = 6
_NAME_CHARS = 24


@dataclass(frozen=True)
class Mistake:
    """One image whose decoded leaf is not its true category (truncated to the model's depth).

    ``index`` is the image's position among the evaluated images; ``confidence`` is the
    decoded leaf's.
    """

    index: int
    image: str
    source: str
    true_id: int
    true_name: str
    predicted_id: int
    predicted_name: str
    confidence: float


def find_mistakes(
    rows: Sequence[LabelRow],
    true_nodes: Sequence[int],
    predictions: Sequence[Prediction],
    truncated: TruncatedTaxonomy,
) -> list[Mistake]:
    """Every wrong prediction, the most confident first (ties in image order)."""
    if not len(rows) == len(true_nodes) == len(predictions):
        raise ModelError(
            f"{len(rows)} rows, {len(true_nodes)} labels and {len(predictions)} predictions"
        )
    found = [
        Mistake(
            index=index,
            image=row.image,
            source=row.source,
            true_id=true,
            true_name=truncated.name(true),
            predicted_id=prediction.leaf_id,
            predicted_name=truncated.name(prediction.leaf_id),
            # As evaluate's reliability: the decoded path's last node (the leaf at threshold 0).
            confidence=float(
                prediction.path[-1].confidence if prediction.path else prediction.confidence
            ),
        )
        for index, (row, true, prediction) in enumerate(
            zip(rows, true_nodes, predictions, strict=True)
        )
        if prediction.leaf_id != true
    ]
    return sorted(found, key=lambda m: (-m.confidence, m.index))


def write_mistakes_csv(mistakes: Sequence[Mistake], path: str | os.PathLike[str]) -> None:
    """Write one row per mistake (a header only when there is none)."""
    file = Path(path)
    try:
        with file.open("w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow([f.name for f in fields(Mistake)])
            for mistake in mistakes:
                row = list(astuple(mistake))
                row[-1] = f"{mistake.confidence:.4f}"
                writer.writerow(row)
    except OSError as error:
        raise ModelError(f"{file}: cannot write the mistakes: {error}") from error


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def plot_mistakes(
    mistakes: Sequence[Mistake],
    images: NDArray[np.uint8],
    path: str | os.PathLike[str],
    *,
    title: str,
    limit: int = GALLERY_SIZE,
) -> int:
    """Draw the first ``limit`` mistakes (pixels from ``images[mistake.index]``), each with
    its true category, what the model said and its confidence; returns how many are drawn.
    Nothing to draw is a :class:`ModelError`."""
    shown = list(mistakes[:limit])
    if not shown:
        raise ModelError("no mistakes to draw")
    columns = min(_COLUMNS, len(shown))
    rows = math.ceil(len(shown) / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(2.3 * columns, 2.75 * rows + 0.5), squeeze=False
    )
    try:
        for axis in axes.flat:
            axis.axis("off")
        for axis, mistake in zip(axes.flat, shown, strict=False):
            axis.imshow(images[mistake.index])
            axis.set_title(
                f"{_short(mistake.true_name)}\n→ {_short(mistake.predicted_name)} "
                f"({mistake.confidence:.2f})",
                fontsize=8,
                color="firebrick",
            )
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
    except BaseException:
        plt.close(figure)
        raise
    save_png(figure, path)
    return len(shown)
