"""Fixtures of the decoder's tests (test_decode*.py): the hand-made taxonomy SMALL."""

import pytest

from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.vocabulary import Vocabulary
from tests.support.decode import SMALL


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """The hand-made taxonomy SMALL cut at depth 3."""
    return Taxonomy.parse(SMALL, source="small.txt").truncate(3)


@pytest.fixture(scope="module")
def small_vocabulary(small: TruncatedTaxonomy) -> Vocabulary:
    """Every node of SMALL."""
    return Vocabulary.full(small)
