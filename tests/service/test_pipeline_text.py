"""The service with a text model beside the image model: real Kafka, real HTTP, real titles."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.app import Service
from service.errors import ConfigError
from tests.service.test_pipeline import (
    ENRICHMENT,
    _encode,
    _produce,
    _product,
    _read,
    _Running,
    _settings,
    model_dir,
    photos,
)
from tests.support.image_server import Behaviour, ImageServer
from tests.support.models import tiny_text_model

__all__ = ["model_dir", "photos"]  # fixtures shared with test_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def text_model(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small text model trained on real fashion titles of six leaves."""
    return tiny_text_model(shared_data, tmp_path_factory.mktemp("text"))


@pytest.fixture(scope="module")
def titled(text_model: Path) -> list[tuple[str, int]]:
    """(title, leaf id) of the text model's training rows, one per leaf."""
    seen: dict[int, str] = {}
    with (text_model.parent.parent / "titles.csv").open() as stream:
        for row in csv.DictReader(stream):
            if row["split"] == "train":
                seen.setdefault(int(row["google_category_id"]), row["title"])
    return [(title, leaf) for leaf, title in seen.items()]


@pytest.fixture
def topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("products", partitions=2),
        "output": topic_factory("categories", partitions=2),
        "dlq": topic_factory("dead-letter"),
    }


def _titled(product_id: str, url: str | None, title: str | None) -> dict[str, Any]:
    return {**_product(product_id, url), "title": title}


def _entries(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["signal"]: entry for entry in record["signals"]}


def test_every_signal_combination_gets_its_answer(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    text_model: Path,
    titled: list[tuple[str, int]],
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """Image and title fuse; a failed or missing image leaves the title to decide; without
    usable text today's statuses stand; a broken record stays INVALID_INPUT."""
    missing = image_server.script("gone.jpg", Behaviour(status=404))
    photo = image_server.url_for(photos[0])
    (title, leaf), (other_title, other_leaf) = titled[0], titled[1]
    products = [
        _titled("both", photo, title),
        _titled("text-after-404", missing, title),
        _titled("text-no-url", None, other_title),
        _titled("nothing", missing, None),
        _titled("punctuation", missing, "!!! ???"),
        _titled("", photo, title),  # empty product_id: the record itself is unusable
        # Hostile titles: each still gets a record with a clear status.
        _titled("html", missing, f"<p><b>{title}</b></p><script>alert(1)</script>"),
        _titled("non-latin", missing, "Хлопковая рубашка 綿のシャツ"),
        _titled("huge", missing, title + " x" * 200_000),
    ]
    _produce(kafka_bootstrap, topics["input"], [_encode(p) for p in products])
    settings = _settings(kafka_bootstrap, topics, model_dir, text_model_dir=text_model)
    with _Running(settings) as running:
        messages = _read(kafka_bootstrap, topics["output"], expected=len(products))
        metrics = running.service.metrics
    records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}
    assert len(products) == len(records)

    both = records["both"]
    assert "FUSED" == both["decided_by"]
    assert {"IMAGE": "USED", "TEXT": "USED"} == {s: e["outcome"] for s, e in _entries(both).items()}
    assert both["category"] is not None

    after_404 = records["text-after-404"]
    assert "TEXT" == after_404["decided_by"]
    assert after_404["status"] in ("CLASSIFIED", "LOW_CONFIDENCE")
    assert leaf == after_404["alternatives"][0]["id"]  # the title's own leaf is the best one
    image_entry = _entries(after_404)["IMAGE"]
    assert ("FAILED", "HTTP 404") == (image_entry["outcome"], image_entry["error"])
    assert leaf == _entries(after_404)["TEXT"]["category_id"] or (
        after_404["status"] == "LOW_CONFIDENCE"
    )

    no_url = records["text-no-url"]
    assert "TEXT" == no_url["decided_by"]
    assert other_leaf == no_url["alternatives"][0]["id"]
    assert "MISSING" == _entries(no_url)["IMAGE"]["outcome"]

    nothing = records["nothing"]
    assert ("IMAGE_UNAVAILABLE", "NONE", None) == (
        nothing["status"], nothing["decided_by"], nothing["category"]
    )  # fmt: skip
    assert "MISSING" == _entries(nothing)["TEXT"]["outcome"]

    punctuation = records["punctuation"]
    assert ("IMAGE_UNAVAILABLE", "NONE") == (punctuation["status"], punctuation["decided_by"])
    assert "ABSTAINED" == _entries(punctuation)["TEXT"]["outcome"]

    assert "INVALID_INPUT" == records[""]["status"]

    assert leaf == records["html"]["alternatives"][0]["id"]  # the markup is not read as words
    for product_id in ("non-latin", "huge"):
        hostile = records[product_id]
        assert hostile["status"] in ("CLASSIFIED", "LOW_CONFIDENCE", "IMAGE_UNAVAILABLE")
        assert hostile["decided_by"] in ("TEXT", "NONE")
        assert (hostile["category"] is None) == (hostile["decided_by"] == "NONE")

    def decided(by: str) -> float:
        value = metrics.registry.get_sample_value("enrich_decided_total", {"by": by})
        return value or 0.0

    assert 1 == decided("FUSED")
    assert decided("TEXT") >= 3  # after the 404, without a URL, through the markup
    assert decided("NONE") >= 2  # no text, and punctuation only
    assert len(products) - 1 == sum(decided(by) for by in ("FUSED", "TEXT", "NONE", "IMAGE"))


def test_replay_with_a_text_model_reclassifies_from_titles(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    text_model: Path,
    titled: list[tuple[str, int]],
    image_server: ImageServer,
    topic_factory: Any,
) -> None:
    """`enrich replay --text-model` gives products whose images are gone their titles' leaf."""
    missing = image_server.script("gone-too.jpg", Behaviour(status=404))
    products = [_titled(f"r{i}", missing, title) for i, (title, _) in enumerate(titled)]
    _produce(kafka_bootstrap, topics["input"], [_encode(p) for p in products])
    again = topic_factory("reclassified", partitions=1)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "ENRICH_INPUT_TOPIC": topics["input"],
        "ENRICH_DEAD_LETTER_TOPIC": topics["dlq"],
        "ENRICH_ALLOWED_NETWORKS": "127.0.0.1/32",
        "ENRICH_GROUP_ID": f"replay-{uuid.uuid4().hex[:6]}",
        "ENRICH_FETCH_RETRIES": "0",
    }
    env.pop("REDIS_URL", None)
    enrich = str(Path(sys.executable).parent / "enrich")
    command = [enrich, "replay", "--model", str(model_dir), "--text-model", str(text_model),
               "--output-topic", again, "--no-progress"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert 0 == result.returncode, result.stderr[-3000:]
    messages = _read(kafka_bootstrap, again, expected=len(products), timeout_s=30)
    records = [ENRICHMENT.decode(m.value()) for m in messages]
    assert len(products) == len(records)
    assert {"TEXT"} == {r["decided_by"] for r in records}
    expected = {f"r{i}": leaf for i, (_, leaf) in enumerate(titled)}
    assert expected == {r["product_id"]: r["alternatives"][0]["id"] for r in records}


def test_zero_shot_answers_what_no_model_could(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    taxonomy_file: Path,
    image_server: ImageServer,
    photos: list[str],
) -> None:
    """With ENRICH_ZERO_SHOT and no text model, a product whose image fails is classified
    from its title over the whole taxonomy; a title matching nothing leaves today's status;
    a product whose image answers is the image's alone."""
    missing = image_server.script("gone-zero.jpg", Behaviour(status=404))
    products = [
        _titled("puzzle", missing, "Kids wooden puzzle"),
        _titled("nonsense", missing, "Zorblax Quintessa 3000"),
        _titled("photo", image_server.url_for(photos[0]), "Kids wooden puzzle"),
    ]
    _produce(kafka_bootstrap, topics["input"], [_encode(p) for p in products])
    settings = _settings(kafka_bootstrap, topics, model_dir, zero_shot=True,
                         taxonomy=taxonomy_file)  # fmt: skip
    with _Running(settings):
        messages = _read(kafka_bootstrap, topics["output"], expected=len(products))
    records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}

    puzzle = records["puzzle"]
    assert ("TEXT", "CLASSIFIED") == (puzzle["decided_by"], puzzle["status"])
    assert puzzle["category"]["path_string"].startswith("Toys & Games > Puzzles")
    assert _entries(puzzle)["TEXT"]["model_version"].startswith("zero-shot-")

    nonsense = records["nonsense"]
    assert ("NONE", "IMAGE_UNAVAILABLE") == (nonsense["decided_by"], nonsense["status"])
    assert "ABSTAINED" == _entries(nonsense)["TEXT"]["outcome"]

    assert "IMAGE" == records["photo"]["decided_by"]
    assert "TEXT" not in _entries(records["photo"])


def test_zero_shot_without_a_taxonomy_is_a_clear_error(
    kafka_bootstrap: str, topics: dict[str, str], model_dir: Path
) -> None:
    """ENRICH_ZERO_SHOT without ENRICH_TAXONOMY stops at start with a ConfigError saying so."""
    settings = _settings(kafka_bootstrap, topics, model_dir, zero_shot=True)
    with pytest.raises(ConfigError, match="ENRICH_TAXONOMY"):
        Service(settings)


def test_open_set_gives_unlearnt_categories_zero_shot_and_keeps_learnt_ones(
    kafka_bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    text_model: Path,
    titled: list[tuple[str, int]],
    taxonomy_file: Path,
    image_server: ImageServer,
) -> None:
    """With ENRICH_OPEN_SET, a product whose image fails and whose title names a category the
    six-leaf text model never learnt (a puzzle) gets the zero-shot category; the text model's
    own titles keep its leaves; both signals are in each record."""
    missing = image_server.script("gone-open.jpg", Behaviour(status=404))
    products = [_titled("puzzle", missing, "Kids wooden puzzle")]
    products += [_titled(f"known-{i}", missing, title) for i, (title, _) in enumerate(titled)]
    _produce(kafka_bootstrap, topics["input"], [_encode(p) for p in products])
    settings = _settings(kafka_bootstrap, topics, model_dir, text_model_dir=text_model,
                         zero_shot=True, open_set=True, taxonomy=taxonomy_file)  # fmt: skip
    with _Running(settings) as running:
        messages = _read(kafka_bootstrap, topics["output"], expected=len(products))
        metrics = running.service.metrics
    records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}

    puzzle = records["puzzle"]
    assert ("TEXT", "CLASSIFIED") == (puzzle["decided_by"], puzzle["status"])
    assert puzzle["category"]["path_string"].startswith("Toys & Games > Puzzles")
    versions = [e["model_version"] for e in puzzle["signals"] if e["signal"] == "TEXT"]
    assert len(versions) == 2
    assert versions[1].startswith("zero-shot-")
    for i, (_, leaf) in enumerate(titled):
        known = records[f"known-{i}"]
        assert ("TEXT", "CLASSIFIED", leaf) == (
            known["decided_by"], known["status"], known["category"]["id"]
        ), known["signals"]  # fmt: skip
    unknown = metrics.registry.get_sample_value("enrich_open_set_total",
                                                {"reason": "UNKNOWN_CATEGORY"})  # fmt: skip
    assert unknown == 1


def test_open_set_without_zero_shot_is_a_clear_error(
    kafka_bootstrap: str, topics: dict[str, str], model_dir: Path, text_model: Path
) -> None:
    """ENRICH_OPEN_SET without ENRICH_ZERO_SHOT stops at start with a ConfigError saying so."""
    settings = _settings(kafka_bootstrap, topics, model_dir, text_model_dir=text_model,
                         open_set=True)  # fmt: skip
    with pytest.raises(ConfigError, match="ENRICH_ZERO_SHOT"):
        Service(settings)
