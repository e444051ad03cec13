"""The zero-shot classifier: titles to taxonomy paths with no training data, offline."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import static_embeddings, zero_shot, zero_shot_words
from model.data import assign_splits, read_labels
from model.decode import CLASSIFIED, LOW_CONFIDENCE, Prediction
from model.errors import ModelError
from model.taxonomy import Taxonomy, TruncatedTaxonomy
from model.text_features import TextFields
from model.zero_shot import (
    ATTRIBUTE_WORDS,
    GENERAL_SYNONYMS,
    LEAF_OUTPUT,
    SYNONYMS_FROM_TRAINING_TITLES,
    StaticEmbeddings,
    ZeroShotClassifier,
    ZeroShotConfig,
    path_bm25_scores,
    path_cosine_scores,
    stem,
    synonym_table,
)
from model.zero_shot_words import conjuncts

SMALL = """\
# Google_Product_Taxonomy_Version: test-1
1 - Apparel & Accessories
2 - Apparel & Accessories > Clothing
3 - Apparel & Accessories > Clothing > Shirts & Tops
4 - Apparel & Accessories > Clothing > Pants
5 - Apparel & Accessories > Clothing > Skirts
6 - Apparel & Accessories > Clothing > Skirts > Mini Skirts
7 - Apparel & Accessories > Clothing > Skirts > Long Skirts
8 - Apparel & Accessories > Clothing > Outerwear
9 - Apparel & Accessories > Clothing > Outerwear > Coats & Jackets
10 - Apparel & Accessories > Clothing > Outerwear > Vests
11 - Apparel & Accessories > Shoes
12 - Apparel & Accessories > Jewelry
13 - Apparel & Accessories > Jewelry > Watches
14 - Apparel & Accessories > Jewelry > Watch Accessories
15 - Apparel & Accessories > Jewelry > Watch Accessories > Watch Bands
16 - Home & Garden
17 - Home & Garden > Kitchen & Dining
18 - Home & Garden > Kitchen & Dining > Cookware & Bakeware
19 - Home & Garden > Kitchen & Dining > Tableware
20 - Home & Garden > Kitchen & Dining > Tableware > Drinkware
21 - Home & Garden > Kitchen & Dining > Tableware > Drinkware > Mugs
22 - Home & Garden > Kitchen & Dining > Food Storage
23 - Home & Garden > Kitchen & Dining > Food Storage > Bread Boxes & Bags
24 - Business & Industrial
25 - Business & Industrial > Retail
26 - Business & Industrial > Retail > Vending Machines
27 - Hardware
28 - Hardware > Tools
29 - Hardware > Tools > Wedge Tools
"""


@pytest.fixture(scope="module")
def small() -> TruncatedTaxonomy:
    """A hand-made taxonomy: apparel, kitchen, retail, tools; one category at depth 5."""
    return Taxonomy.parse(SMALL, source="small").truncate(4)


@pytest.fixture(scope="module")
def classifier(small: TruncatedTaxonomy) -> ZeroShotClassifier:
    """The shipped settings on the small taxonomy (general synonyms, no embeddings)."""
    return ZeroShotClassifier(small)


@pytest.fixture(scope="module")
def real(taxonomy_file: Path) -> ZeroShotClassifier:
    """The shipped settings on the real taxonomy cut at depth 4 (3,270 leaves)."""
    return ZeroShotClassifier.from_taxonomy(taxonomy_file)


@pytest.fixture(scope="module")
def embeddings() -> StaticEmbeddings:
    """wordllama's packaged static embeddings (the ``pretrained`` extra)."""
    return StaticEmbeddings.load()


def _one(classifier: ZeroShotClassifier, text: Any) -> Prediction:
    """The prediction for a single text."""
    return classifier.classify([text])[0]


class TestWords:
    """Plural stripping, name splitting and the word tables."""

    @pytest.mark.parametrize(
        ("word", "expected"),
        [
            ("watches", "watch"),
            ("shoes", "shoe"),
            ("dresses", "dress"),
            ("accessories", "accessori"),
            ("accessory", "accessori"),
            ("neckties", "neckti"),
            ("necktie", "neckti"),
            ("ties", "tie"),
            ("boys", "boy"),
            ("scarves", "scarf"),
            ("jeans", "jean"),
            ("skis", "ski"),
            ("kurtis", "kurti"),
            ("glass", "glass"),
            ("tennis", "tennis"),
            ("analysis", "analysis"),
            ("men", "man"),
            ("mens", "man"),
            ("bus", "bus"),
            ("4k", "4k"),
        ],
    )
    def test_stem(self, word: str, expected: str) -> None:
        """A plural meets its singular, the same way for titles and for the taxonomy."""
        assert (expected, expected) == (stem(word), stem(expected))

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("Shoes", ["Shoes"]),
            ("Shirts & Tops", ["Shirts", "Tops"]),
            ("Bread Boxes & Bags", ["Bread Boxes", "Bread Bags"]),
            ("Clothing & Closet Storage", ["Clothing Storage", "Closet Storage"]),
            ("Pet Bowls, Feeders & Waterers", ["Pet Bowls", "Pet Feeders", "Pet Waterers"]),
        ],
    )
    def test_conjuncts(self, name: str, expected: list[str]) -> None:
        """A name joining several kinds gives each kind, with the words they share."""
        assert expected == conjuncts(name)

    def test_attribute_words_are_stems(self) -> None:
        """Attribute words are kept as stems, so a title word's stem finds them."""
        assert [] == [word for word in ATTRIBUTE_WORDS if stem(word) != word]
        assert {"man", "ladi", "black"} <= ATTRIBUTE_WORDS

    @pytest.mark.parametrize("table", [GENERAL_SYNONYMS, SYNONYMS_FROM_TRAINING_TITLES])
    def test_synonyms_point_at_taxonomy_words(
        self, real: ZeroShotClassifier, table: dict[str, tuple[str, ...]]
    ) -> None:
        """Every synonym of either table names a word the real taxonomy uses (no typo hides)."""
        vocabulary = real._index.vocabulary
        targets = {stem(target) for values in table.values() for target in values}
        assert set() == targets - vocabulary


class TestSynonymTables:
    """Synonyms from general knowledge are kept apart from those read off training titles."""

    def test_the_tables_are_disjoint_and_all_is_their_union(self) -> None:
        """No word is in both tables; "all" is both, "general" the first, "none" neither."""
        assert set() == set(GENERAL_SYNONYMS) & set(SYNONYMS_FROM_TRAINING_TITLES)
        assert {**GENERAL_SYNONYMS, **SYNONYMS_FROM_TRAINING_TITLES} == synonym_table("all")
        assert (dict(GENERAL_SYNONYMS), {}) == (synonym_table("general"), synonym_table("none"))

    def test_words_read_off_the_fashion_titles_are_not_general(self) -> None:
        """Apparel words chosen after reading the training titles are only in the second table."""
        read = {"kurta", "kurti", "churidar", "dupatta", "muffler", "clutch", "flat", "heel"}
        assert set() == read & set(GENERAL_SYNONYMS)
        assert read <= set(SYNONYMS_FROM_TRAINING_TITLES)

    def test_the_default_is_strictly_zero_shot(self) -> None:
        """The shipped settings use the general table only."""
        assert "general" == ZeroShotConfig().synonyms

    def test_general_synonyms_work_by_default(self, small: TruncatedTaxonomy) -> None:
        """ "jeans" reaches "Pants" through the general table; with no table it does not."""
        assert 4 == _one(ZeroShotClassifier(small), "Spykar Men Blue Jeans").leaf_id
        plain = ZeroShotClassifier(small, config=ZeroShotConfig(synonyms="none"))
        assert 4 != _one(plain, "Spykar Men Blue Jeans").leaf_id

    def test_training_title_words_count_only_with_all(self, small: TruncatedTaxonomy) -> None:
        """The word "kurta" names nothing in the strict default; with synonyms="all", a top."""
        title = "Manyavar Men Cream Kurta"
        strict = ZeroShotClassifier(small)
        assert _one(strict, None) == _one(strict, title)
        everything = ZeroShotClassifier(small, config=ZeroShotConfig(synonyms="all"))
        assert 3 == _one(everything, title).leaf_id

    def test_the_choice_is_part_of_the_version(self, small: TruncatedTaxonomy) -> None:
        """Classifiers with different synonym tables have different versions."""
        versions = {
            ZeroShotClassifier(small, config=ZeroShotConfig(synonyms=choice)).version
            for choice in ("general", "all", "none")
        }
        assert 3 == len(versions)

    def test_an_unknown_choice_is_refused(self) -> None:
        """A choice other than general, all or none raises, naming the choice."""
        with pytest.raises(ValueError, match="'some'"):
            synonym_table("some")  # type: ignore[arg-type]


class TestModules:
    """The classifier is split into modules; model.zero_shot still offers the whole API."""

    def test_the_public_names_are_the_modules_own(self) -> None:
        """Names model.zero_shot re-exports are the very objects of the modules defining them."""
        assert StaticEmbeddings is static_embeddings.StaticEmbeddings
        assert (stem, synonym_table) == (zero_shot_words.stem, zero_shot_words.synonym_table)
        assert [] == [name for name in zero_shot.__all__ if not hasattr(zero_shot, name)]


class TestSmallTaxonomy:
    """Behaviour on a hand-made taxonomy."""

    def test_obvious_title_goes_to_its_leaf(self, classifier: ZeroShotClassifier) -> None:
        """A title naming a category is classified into it, sure enough to be answered."""
        prediction = _one(classifier, "Puma Men Black Running Shoes")
        assert (11, CLASSIFIED) == (prediction.category_id, prediction.status)
        assert ("Apparel & Accessories", "Shoes") == tuple(node.name for node in prediction.path)

    def test_head_word_outweighs_the_brand(self, classifier: ZeroShotClassifier) -> None:
        """The product type at the end of a title counts more than brand words before it."""
        assert 4 == _one(classifier, "Flying Machine Men Slim Fit Blue Jeans").leaf_id

    def test_plurals_and_compounds_match(self, classifier: ZeroShotClassifier) -> None:
        """A plural and an unknown compound reach the category named by their last part."""
        assert 3 == _one(classifier, "Nike Men Graphic Tshirts").leaf_id
        assert 13 == _one(classifier, "Casio Analogue Steel Watches").leaf_id

    def test_deeper_categories_name_their_truncated_ancestor(
        self, classifier: ZeroShotClassifier
    ) -> None:
        """A category below the cut depth ("Mugs") leads to its depth-4 ancestor."""
        assert 20 == _one(classifier, "Ceramic coffee mug").leaf_id

    def test_a_one_word_name_beats_a_longer_one(self, classifier: ZeroShotClassifier) -> None:
        """A word matching a whole name wins over a longer name that also holds it."""
        assert 13 == _one(classifier, "Casio Men Watch").leaf_id

    def test_synonym_beats_a_partial_match(self, small: TruncatedTaxonomy) -> None:
        """Through a synonym wedges are shoes, not "Wedge Tools" (a longer name's partial match)."""
        assert 29 == _one(ZeroShotClassifier(small), "Catwalk Women Brown Wedges").leaf_id
        everything = ZeroShotClassifier(small, config=ZeroShotConfig(synonyms="all"))
        assert 11 == _one(everything, "Catwalk Women Brown Wedges").leaf_id

    def test_shared_modifiers_are_kept(self, classifier: ZeroShotClassifier) -> None:
        """A name like "Bread Boxes & Bags" means bread bags: "bags" alone matches it in part."""
        bags, bread_bags = classifier.scores(["bags", "bread bags"])
        column = classifier.vocabulary.leaves.index(23)
        assert bags[column] < 0.9
        assert column == int(np.argmax(bread_bags))

    def test_vague_title_stops_at_an_ancestor(self, classifier: ZeroShotClassifier) -> None:
        """A title naming only a broad category is answered by that category, not a leaf."""
        prediction = _one(classifier, "Women's clothing")
        assert (LOW_CONFIDENCE, 2) == (prediction.status, prediction.category_id)
        assert (1, 2) == tuple(node.id for node in prediction.path)
        assert prediction.confidence >= classifier.decoder.threshold
        assert 2 in classifier.truncated.path_ids(prediction.leaf_id)

    def test_unknown_words_abstain(self, classifier: ZeroShotClassifier) -> None:
        """A title whose words match nothing gets the empty text's abstention, not a guess."""
        assert _one(classifier, None) == _one(classifier, "Zorblax Quintessa 3000")
        assert _one(classifier, None) == _one(classifier, "Black Women's XL")

    @pytest.mark.parametrize("text", [None, "", "!!! ???", "🙂", TextFields()])
    def test_empty_text_abstains(self, classifier: ZeroShotClassifier, text: Any) -> None:
        """No word at all: an abstention at a root with confidence 0, as TextClassifier gives."""
        prediction = _one(classifier, text)
        assert classifier.is_empty(text)
        assert (LOW_CONFIDENCE, 0.0, 1, ()) == (
            prediction.status,
            prediction.confidence,
            len(prediction.path),
            prediction.alternatives,
        )
        assert 0.0 == prediction.path[0].confidence

    def test_partner_category_counts(self, classifier: ZeroShotClassifier) -> None:
        """The shop's own category path classifies a product whose title says nothing."""
        text = TextFields(title="Item 4711", partner_category="Women > Footwear > Sandals")
        assert 11 == _one(classifier, text).leaf_id

    def test_a_long_description_does_not_drown_the_title(
        self, classifier: ZeroShotClassifier
    ) -> None:
        """However long, a description weighs like two title words, not like all its words."""
        text = TextFields(title="Cotton shirt", description=" ".join(["cookware pans"] * 200))
        assert 3 == _one(classifier, text).leaf_id

    @pytest.mark.parametrize(
        "text",
        [
            "<b>Cotton</b> <i>shirt</i>",
            "Cotton shirt <script>cookware('pans')</script> &amp; <!-- cookware -->",
            TextFields(title="<p>Cotton <em>shirt</em></p>", description="<div></div>"),
        ],
    )
    def test_markup_is_not_read_as_words(self, classifier: ZeroShotClassifier, text: Any) -> None:
        """HTML tags, scripts, comments and entities in a title are dropped, not matched."""
        assert 3 == _one(classifier, text).leaf_id

    def test_a_non_latin_title_abstains_cleanly(self, classifier: ZeroShotClassifier) -> None:
        """Cyrillic and Japanese words match no English category name: the abstention, no
        error and no guess."""
        assert _one(classifier, None) == _one(classifier, "Хлопковая рубашка 綿のシャツ")

    def test_a_huge_title_is_bounded(self, classifier: ZeroShotClassifier) -> None:
        """A title of a million characters is cut, not refused: one prediction, read from its
        first words."""
        predictions = classifier.classify(["Cotton shirt " + "x" * 1_000_000, "Casio Watch"])
        assert [3, 13] == [p.leaf_id for p in predictions]

    def test_batch_keeps_order_and_length(self, classifier: ZeroShotClassifier) -> None:
        """A batch with an empty text in it gives one prediction per text, in order."""
        predictions = classifier.classify(["Puma Shoes", None, "Casio Watch"])
        assert [11, None, 13] == [
            p.leaf_id if p.status == CLASSIFIED else None for p in predictions
        ]
        assert [] == classifier.classify([])

    def test_probabilities_are_a_distribution_over_leaves(
        self, classifier: ZeroShotClassifier
    ) -> None:
        """predict_raw gives one probability per leaf and text, summing to 1, like a flat head."""
        probabilities = classifier.predict_raw(["Puma Shoes", "Ceramic mug"])[LEAF_OUTPUT]
        assert (2, len(classifier.vocabulary.leaves)) == probabilities.shape
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        scores = classifier.scores(["Puma Shoes", "Ceramic mug", "Black"])
        assert (True, True) == (bool(scores.min() >= 0.0), bool(scores.max() <= 1.0))
        assert 0.0 == scores[2].max()

    def test_record_has_the_contract_shape(self, classifier: ZeroShotClassifier) -> None:
        """A prediction gives the enrichment record's category and alternatives, as any model."""
        record = _one(classifier, "Casio Watch").to_record()
        assert "Apparel & Accessories > Jewelry > Watches" == record["category"]["path_string"]
        assert 5 == len(record["alternatives"])
        assert record["alternatives"][0]["probability"] >= record["alternatives"][1]["probability"]

    def test_same_settings_same_version(self, small: TruncatedTaxonomy) -> None:
        """The version names the settings and taxonomy: equal ones agree, others differ."""
        assert ZeroShotClassifier(small).version == ZeroShotClassifier(small).version
        other = ZeroShotClassifier(small, config=ZeroShotConfig(head_decay=0.3))
        assert ZeroShotClassifier(small).version != other.version

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"temperature": 0.0}, "temperature"),
            ({"ancestor_weight": 1.5}, "ancestor_weight"),
            ({"embedding_floor": 1.0}, "embedding_floor"),
            ({"decode": "argmax"}, "decode"),
            ({"synonyms": True}, "synonyms"),
            ({"synonyms": "some"}, "synonyms"),
            ({"field_weights": {"name": 1.0}}, "field_weights"),
        ],
    )
    def test_bad_settings_are_refused(self, settings: dict[str, Any], message: str) -> None:
        """A setting out of range raises ModelError naming it."""
        with pytest.raises(ModelError, match=message):
            ZeroShotConfig(**settings)

    def test_wrong_input_type_is_refused(self, classifier: ZeroShotClassifier) -> None:
        """Anything but a string, TextFields or None raises ModelError naming the type."""
        with pytest.raises(ModelError, match="int"):
            classifier.classify([42])  # type: ignore[list-item]


class TestOffline:
    """Static embeddings come from the installed wheel; nothing is ever downloaded."""

    def test_no_network_is_touched(
        self,
        small: TruncatedTaxonomy,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Loading the packaged embeddings, building and classifying open no connection."""
        attempts: list[object] = []

        def refuse(*args: object, **kwargs: object) -> None:
            attempts.append(args)
            raise OSError("network is off in this test")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)
        monkeypatch.setattr(socket, "getaddrinfo", refuse)
        with_embeddings = ZeroShotClassifier(small, config=ZeroShotConfig(embedding_weight=0.5))
        prediction = _one(with_embeddings, "Puma Men Black Running Shoes")
        assert ([], 11) == (attempts, prediction.leaf_id)

    def test_missing_weights_give_a_clear_error(self, tmp_path: Path) -> None:
        """A folder without the packaged files raises ModelError naming the file and the fix."""
        with pytest.raises(ModelError, match=r"l2_supercat_256\.safetensors.*\[pretrained\]"):
            StaticEmbeddings.load(tmp_path)

    def test_missing_tokenizer_gives_a_clear_error(
        self, tmp_path: Path, embeddings: StaticEmbeddings
    ) -> None:
        """With the weights there but not the tokenizer, the error names the tokenizer file."""
        (tmp_path / "weights").mkdir()
        (tmp_path / "weights" / "l2_supercat_256.safetensors").write_bytes(b"\0")
        with pytest.raises(ModelError, match=r"l2_supercat_tokenizer_config\.json"):
            StaticEmbeddings.load(tmp_path)

    def test_damaged_files_give_a_clear_error(self, tmp_path: Path) -> None:
        """Files that are not what the wheel ships raise ModelError, not a library error."""
        for name in (
            "weights/l2_supercat_256.safetensors",
            "tokenizers/l2_supercat_tokenizer_config.json",
        ):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(b"not a table")
        with pytest.raises(ModelError, match="cannot read the static embeddings"):
            StaticEmbeddings.load(tmp_path)

    def test_package_not_installed_names_the_extra(
        self, small: TruncatedTaxonomy, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Asking for embeddings without wordllama installed names the package and the extra."""
        real_find_spec = importlib.util.find_spec

        def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
            return None if name == "wordllama" else real_find_spec(name, *args, **kwargs)

        monkeypatch.setattr(importlib.util, "find_spec", find_spec)
        with pytest.raises(ModelError, match=r"'wordllama'.*\[pretrained\]"):
            ZeroShotClassifier(small, config=ZeroShotConfig(embedding_weight=0.5))

    def test_packaged_embeddings_are_unit_vectors(self, embeddings: StaticEmbeddings) -> None:
        """The packaged table gives 256-d unit vectors; a word is nearer its plural than others."""
        vectors = embeddings.embed(["watch", "watches", "kitchen", ""])
        assert (4, 256) == vectors.shape
        np.testing.assert_allclose(np.linalg.norm(vectors[:3], axis=1), 1.0, rtol=1e-5)
        assert 0.0 == float(np.abs(vectors[3]).max())
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


class TestRealTaxonomy:
    """Behaviour over all 3,270 depth-4 leaves of the real taxonomy."""

    @pytest.mark.parametrize(
        ("title", "path"),
        [
            ("Casio Men Analogue Steel Watch", "Apparel & Accessories > Jewelry > Watches"),
            ("Levis Men Slim Fit Blue Jeans", "Apparel & Accessories > Clothing > Pants"),
            ("Nike Men Running Shoes", "Apparel & Accessories > Shoes"),
            (
                "Stainless steel saucepan",
                "Home & Garden > Kitchen & Dining > Cookware & Bakeware > Cookware",
            ),
            (
                "Organic green tea",
                "Food, Beverages & Tobacco > Beverages > Tea & Infusions",
            ),
            (
                "Grain-free dog food",
                "Animals & Pet Supplies > Pet Supplies > Dog Supplies > Dog Food",
            ),
        ],
    )
    def test_obvious_titles(self, real: ZeroShotClassifier, title: str, path: str) -> None:
        """Titles from several departments reach their leaf among all 3,270."""
        prediction = _one(real, title)
        assert real.truncated.id_for_path(path) == prediction.leaf_id
        assert prediction.category_id in real.truncated.path_ids(prediction.leaf_id)

    def test_scores_cover_every_leaf(self, real: ZeroShotClassifier) -> None:
        """Every one of the 3,270 depth-4 leaves is scored."""
        assert (1, 3270) == real.scores(["Casio Watch"]).shape

    def test_vague_title_stops_at_clothing(self, real: ZeroShotClassifier) -> None:
        """A title only saying "Women's clothing" is answered by Clothing, unsure of a leaf."""
        prediction = _one(real, "Women's clothing")
        assert LOW_CONFIDENCE == prediction.status
        assert "Apparel & Accessories > Clothing" == prediction.path_string

    def test_baselines_score_every_leaf(
        self, real: ZeroShotClassifier, embeddings: StaticEmbeddings
    ) -> None:
        """The two baselines of the benchmark give a score per leaf and find an obvious watch."""
        watches = real.truncated.id_for_path("Apparel & Accessories > Jewelry > Watches")
        column = real.truncated.leaves.index(watches)
        for scores in (
            path_bm25_scores(real.truncated, ["jewelry watches"]),
            path_cosine_scores(real.truncated, embeddings, ["jewelry watches"]),
        ):
            assert (1, 3270) == scores.shape
            assert column == int(np.argmax(scores[0]))

    def test_meets_the_issue_targets_on_fashion_validation_titles(
        self, real: ZeroShotClassifier, shared_data: Path
    ) -> None:
        """Strictly zero-shot (the default), validation titles: leaf >= 0.50, depth 2 >= 0.80."""
        truncated = real.truncated
        rows = assign_splits(
            read_labels(shared_data / "fashion-products" / "labels.csv", require_image=False),
            truncated,
        )
        rows = [row for row in rows if row.split == "validation"]
        predictions = real.classify([row.title for row in rows])
        true = [truncated.path_ids(truncated.truncate_id(row.category_id)) for row in rows]
        got = [truncated.path_ids(p.leaf_id) for p in predictions]
        leaf = float(np.mean([g[: len(t)] == t for g, t in zip(got, true, strict=True)]))
        depth2 = float(np.mean([g[:2] == t[:2] for g, t in zip(got, true, strict=True)]))
        assert (1003, True, True) == (len(rows), leaf >= 0.50, depth2 >= 0.80)
