"""The text featuriser: normalising, n-grams, stable hashing, bounds, sparse rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model.errors import ModelError
from model.text_features import (
    MAX_CHARS,
    TextFeaturizer,
    TextFields,
    normalise,
    tokens,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
TITLES = (
    "Puma Men Semi Graphic Black T-shirt",
    "Baggit Women Highway Cruise Grey Wallet",
    "हिन्दी पुरुषों की सूती शर्ट",
    "男士纯棉短袖T恤",
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Nike   Men\tTEE\n", "nike men tee"),
        ("<p>Nike <b>Men</b></p>", "nike men"),
        ("Tom&nbsp;&amp;&nbsp;Jerry &lt;kids&gt;", "tom & jerry <kids>"),
        ("<script>alert('x')</script><style>p{}</style>Shoes<!-- hidden -->", "shoes"),
        ("\uff2e\uff49\uff4b\uff45 \ufb01t", "nike fit"),  # full-width letters, a ligature
        ("Straße", "strasse"),  # case-folded, not only lowercased
        ("Sandals <div class='a", "sandals"),  # a tag cut by the raw bound
        ("", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    """Markup goes, entities unescape, NFKC and case-folding apply, whitespace collapses."""
    assert expected == normalise(raw)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nike men t-shirt", ["nike", "men", "t", "shirt"]),
        ("हिन्दी शर्ट", ["हिन्दी", "शर्ट"]),  # vowel signs (combining marks) stay in words
        ("ελληνικά, русский", ["ελληνικά", "русский"]),
        ("!!! ... 🙂", []),
    ],
)
def test_tokens(text: str, expected: list[str]) -> None:
    """Words are runs of letters, digits and combining marks, in any script."""
    assert expected == tokens(text)


@pytest.mark.parametrize("text", [None, "", "   ", "!!! ???", "<br/><p></p>", "🙂🙂", TextFields()])
def test_no_text_is_the_zero_vector(text: str | TextFields | None) -> None:
    """Nothing to read (no field, blanks, punctuation, emoji, markup) gives the zero vector."""
    featurizer = TextFeaturizer()
    assert featurizer.is_empty(text)
    features = featurizer.transform([text])
    assert [True] == features.empty().tolist()
    assert 0.0 == float(np.abs(features.dense()).sum())


@pytest.mark.parametrize("title", TITLES)
def test_any_script_gives_a_unit_vector(title: str) -> None:
    """Latin, Devanagari and Chinese titles all give features, L2 norm 1."""
    dense = TextFeaturizer().transform([title]).dense()
    assert not TextFeaturizer().is_empty(title)
    assert 1.0 == pytest.approx(float(np.linalg.norm(dense)), abs=1e-5)


def test_html_laden_title_reads_like_the_plain_one() -> None:
    """Markup and entities around a title change nothing in its features."""
    featurizer = TextFeaturizer()
    plain = featurizer.transform(["Puma Men Black T-shirt & Cap"]).dense()
    laden = featurizer.transform(
        ['<div class="t"><b>Puma</b> Men&nbsp;Black <i>T-shirt</i> &amp; Cap</div><br/>']
    ).dense()
    np.testing.assert_allclose(plain, laden, atol=1e-6)


def test_huge_text_is_cut_to_the_documented_bound() -> None:
    """Text past MAX_CHARS normalised characters is ignored: a huge field costs a long one."""
    featurizer = TextFeaturizer()
    head = "word " * (MAX_CHARS // 5)
    assert MAX_CHARS == len(normalise(head + "x" * 10_000_000))
    huge = featurizer.transform([head + "tail " * 2_000_000]).dense()
    bounded = featurizer.transform([head]).dense()
    np.testing.assert_allclose(huge, bounded, atol=1e-6)


def test_the_same_text_gives_the_same_vector_in_another_process() -> None:
    """Hashing is stable across processes (BLAKE2b, not the salted built-in hash)."""
    code = (
        "import json, sys; from model.text_features import TextFeaturizer; "
        "f = TextFeaturizer(); print(json.dumps([sorted(f.vector(t).items()) "
        "for t in json.loads(sys.argv[1])]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(TITLES)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env=env,
    )
    other = [[(int(c), v) for c, v in row] for row in json.loads(result.stdout)]
    here = [sorted(TextFeaturizer().vector(title).items()) for title in TITLES]
    assert len(here) == len(other)
    for mine, theirs in zip(here, other, strict=True):
        assert [c for c, _ in mine] == [c for c, _ in theirs]
        np.testing.assert_allclose([v for _, v in mine], [v for _, v in theirs], rtol=1e-12)


def test_fields_share_one_space_and_the_title_weighs_most() -> None:
    """A title alone equals its TextFields; a description moves the vector less than a title."""
    featurizer = TextFeaturizer()
    title = featurizer.transform(["Black Wallet"]).dense()
    fields = featurizer.transform([TextFields(title="Black Wallet")]).dense()
    np.testing.assert_array_equal(title, fields)
    with_description = featurizer.transform(
        [TextFields(title="Black Wallet", description="leather wallet with zip")]
    ).dense()
    assert float((title * with_description).sum()) > 0.85  # still mostly the title
    only_description = featurizer.transform([TextFields(description="Black Wallet")]).dense()
    np.testing.assert_allclose(title, only_description, atol=1e-6)  # same words, same columns


def test_sparse_rows_take_and_densify() -> None:
    """Rows taken in any order, with repeats, densify to the rows of the whole matrix."""
    features = TextFeaturizer(dim=64).transform(["red shirt", None, "blue jeans", "shoes"])
    whole = features.dense()
    assert (4, 64) == whole.shape
    np.testing.assert_array_equal(whole[[3, 0, 0, 1]], features.dense([3, 0, 0, 1]))
    np.testing.assert_array_equal(whole[1:3], features.dense(slice(1, 3)))
    assert [False, True, False, False] == features.empty().tolist()


def test_settings_round_trip_through_json() -> None:
    """Settings written to JSON rebuild a featuriser giving the same vectors."""
    featurizer = TextFeaturizer(dim=1024, char_ngrams=(2, 4), max_chars=100)
    stored = json.loads(json.dumps(featurizer.to_json()))
    again = TextFeaturizer.from_json(stored)
    assert featurizer == again
    assert featurizer.vector(TITLES[0]) == again.vector(TITLES[0])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "tf-idf"}, "not 'hashed-ngrams'"),
        ({**TextFeaturizer().to_json(), "version": 99}, "featuriser version 99"),
        ({**TextFeaturizer().to_json(), "dim": 4}, "dim must be"),
        ({**TextFeaturizer().to_json(), "word_ngrams": [2, 1]}, "word_ngrams"),
        ({**TextFeaturizer().to_json(), "field_weights": {"body": 1.0}}, "field_weights"),
        ({k: v for k, v in TextFeaturizer().to_json().items() if k != "dim"}, "bad featuriser"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    """Settings this code cannot reproduce are refused, saying why."""
    with pytest.raises(ModelError, match=message):
        TextFeaturizer.from_json(settings)


def test_not_text_is_refused() -> None:
    """A value that is not a string, TextFields or None is refused, naming its type."""
    with pytest.raises(ModelError, match="got bytes"):
        TextFeaturizer().vector(b"shirt")  # type: ignore[arg-type]
