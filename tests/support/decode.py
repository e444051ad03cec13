"""The hand-made taxonomy the decoder's tests decode over, and helpers that build head outputs
and compare predictions with hand values."""

from dataclasses import replace
from typing import Any

import numpy as np

from model.decode import Alternative, Decoder, PathNode, Prediction
from model.taxonomy import TruncatedTaxonomy
from model.vocabulary import Vocabulary

# A small taxonomy, depth 3, with leaves at every depth:
#   1 A ── 2 B ── 3 H        level 1: A D G         (1, 6, 9)
#     │     └──── 4 I        level 2: B C E F       (2, 5, 7, 8)
#     └─ 5 C                 level 3: H I           (3, 4)
#   6 D ── 7 E               leaves:  H I C E F G   (3, 4, 5, 7, 8, 9)
#     └─ 8 F
#   9 G
SMALL = """\
# Google_Product_Taxonomy_Version: 2000-01-01
1 - A
2 - A > B
3 - A > B > H
4 - A > B > I
5 - A > C
6 - D
7 - D > E
8 - D > F
9 - G
"""
SMALL_LEAVES = (3, 4, 5, 7, 8, 9)


def rows(*values: list[float]) -> np.ndarray:
    """A (batch, classes) float32 array of head outputs."""
    return np.array(values, dtype=np.float32)


def decoder(small: TruncatedTaxonomy, vocabulary: Vocabulary, **kwargs: Any) -> Decoder:
    """A decoder on SMALL."""
    return Decoder(small, vocabulary, **kwargs)


def path_ids(prediction: Prediction) -> tuple[int, ...]:
    """The ids along a prediction's path."""
    return tuple(node.id for node in prediction.path)


def rounded(value: float) -> float:
    """A confidence or probability rounded to 6 decimals, to compare with hand values."""
    return round(value, 6)


def rounded_path(prediction: Prediction) -> tuple[PathNode, ...]:
    """The prediction's path with its confidences rounded."""
    return tuple(replace(node, confidence=rounded(node.confidence)) for node in prediction.path)


def rounded_alternatives(prediction: Prediction) -> tuple[Alternative, ...]:
    """The prediction's alternatives with their probabilities rounded."""
    return tuple(
        alt._replace(probability=rounded(alt.probability)) for alt in prediction.alternatives
    )
