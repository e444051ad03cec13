"""Scale-out over the real broker: two workers in one group build what one worker builds."""

import csv
import json
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka import TopicPartition

from model.data import load_dataset
from model.taxonomy import Taxonomy
from service.cli import cli
from service.contract import SingleObjectCodec
from service.dataset import OUTCOMES, finalize
from service.dataset.kafka_source import (
    CATEGORY_HEADER,
    KafkaSource,
    WorkerReport,
    parse_message,
    run_worker,
)
from service.kafka import KafkaProducer
from tests.conftest import TopicFactory
from tests.service.dataset.conftest import Catalog, build_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_PRODUCT = SingleObjectCodec.for_schema("product")


def _avro(product_id: str, url: str) -> bytes:
    return _PRODUCT.encode(
        {"product_id": product_id, "partner_id": "shop", "image_url": url, "updated_at": 0}
    )


def _publish(catalog: Catalog, bootstrap: str, topic: str) -> None:
    """The catalog's products, every third as a Product record, plus a tombstone and junk."""
    producer = KafkaProducer({"bootstrap.servers": bootstrap})
    lines = catalog.labels.read_text().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        key = record["product_id"].encode()
        if index % 3 == 0:
            value = _avro(record["product_id"], record["image_url"])
            headers = [(CATEGORY_HEADER, str(record["google_category_id"]).encode())]
            producer.produce(topic, key=key, value=value, headers=headers)
        else:
            producer.produce(topic, key=key, value=line.encode())
    producer.produce(topic, key=b"gone", value=None)
    producer.produce(topic, key=b"junk", value=b"\x00not a record")
    assert 0 == producer.flush(30)


def _workers(
    catalog: Catalog,
    taxonomy: Path,
    output: Path,
    source: KafkaSource,
    names: list[str],
    publish: Callable[[], None],
) -> list[WorkerReport]:
    """Run one worker per name in threads; publish once each holds a share of the partitions."""
    reports: list[WorkerReport] = []
    errors: list[BaseException] = []
    assigned: dict[str, int] = {}
    sharing = threading.Event()

    def work(name: str) -> None:
        def on_assign(partitions: list[TopicPartition]) -> None:
            assigned[name] = len(partitions)
            if len(assigned) == len(names) and all(assigned.values()):
                sharing.set()

        config = build_config(catalog, taxonomy, output, worker=name)
        try:
            reports.append(run_worker(config, replace(source, worker=name), on_assign=on_assign))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    assert sharing.wait(60), f"the workers never all held partitions: {assigned}"
    publish()
    for thread in threads:
        thread.join(240)
    assert [] == errors
    return reports


def _records(output: Path) -> set[tuple[str, str, str]]:
    with (output / "split.csv").open() as stream:
        return {(r["product_id"], r["sha256"], r["split"]) for r in csv.DictReader(stream)}


class TestParseMessage:
    @pytest.mark.parametrize(
        ("value", "headers", "expected"),
        [
            (None, [], "tombstone"),
            (b'{"product_id": "p", "image_url": "u"}', [], "google_category_id None is not an id"),
            (b'{"image_url": "u", "google_category_id": 1}', [], "no product_id"),
            (_avro("p", "u"), [], "google_category_id None is not an id"),
        ],
    )
    def test_refused(
        self, value: bytes | None, headers: list[tuple[str, bytes]], expected: str
    ) -> None:
        """Messages without a usable product say why."""
        assert expected == parse_message(value, headers, _PRODUCT)

    def test_json_and_avro(self) -> None:
        """A JSON object and a Product record with the category header give the same row."""
        from_json = parse_message(
            b'{"product_id": "p", "image_url": "u", "google_category_id": "2271"}', [], _PRODUCT
        )
        from_avro = parse_message(_avro("p", "u"), [(CATEGORY_HEADER, b"2271")], _PRODUCT)
        assert from_json == from_avro


class TestTwoWorkers:
    def test_two_workers_build_what_one_builds(
        self,
        catalog: Catalog,
        taxonomy_file: Path,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        tmp_path: Path,
    ) -> None:
        """Two workers of one group share the topic and finalize to one worker's records."""
        topic = topic_factory("build-dataset", partitions=2)
        truncated = Taxonomy.load(taxonomy_file).truncate(4)
        pair, single = tmp_path / "pair", tmp_path / "single"
        source = KafkaSource(kafka_bootstrap, topic, "pair", "", idle_timeout_s=8.0)
        pair_reports = _workers(
            catalog,
            taxonomy_file,
            pair,
            source,
            ["w1", "w2"],
            lambda: _publish(catalog, kafka_bootstrap, topic),
        )
        single_reports = _workers(
            catalog,
            taxonomy_file,
            single,
            replace(source, group_id="single"),
            ["solo"],
            lambda: None,
        )
        pair_stats = finalize(str(pair), truncated).stats
        single_stats = finalize(str(single), truncated).stats
        lines = len(catalog.labels.read_text().splitlines())
        assert (lines, lines) == (pair_stats["products"], single_stats["products"])
        assert 2 == sum(r.skipped for r in pair_reports) == sum(r.skipped for r in single_reports)
        assert [True, True] == [r.products > 0 for r in pair_reports]
        assert _records(single) == _records(pair)
        assert {n: single_stats["outcomes"][n] for n in OUTCOMES} == {
            n: pair_stats["outcomes"][n] for n in OUTCOMES
        }
        _, rows = load_dataset(pair, 32, progress=False)
        assert sorted(r[0] for r in _records(pair)) == sorted(r.product_id for r in rows)


class TestWorkerCommand:
    def test_worker_then_finalize(
        self,
        catalog: Catalog,
        taxonomy_file: Path,
        kafka_bootstrap: str,
        topic_factory: TopicFactory,
        tmp_path: Path,
    ) -> None:
        """`build-dataset --kafka-topic` builds the topic; `finalize` writes the statistics."""
        topic = topic_factory("build-dataset-cli")
        producer = KafkaProducer({"bootstrap.servers": kafka_bootstrap})
        for line in catalog.labels.read_text().splitlines()[:5]:
            producer.produce(topic, key=None, value=line.encode())
        assert 0 == producer.flush(30)
        output, runner = tmp_path / "dataset", CliRunner()
        common = ["--taxonomy", str(taxonomy_file), "--output", str(output)]
        worker = runner.invoke(
            cli,
            [
                "build-dataset",
                "--kafka-topic",
                topic,
                "--group-id",
                f"cli-{topic}",
                "--worker",
                "one",
                "--idle-timeout",
                "3",
                "--image-size",
                "32",
                "--allowed-networks",
                "127.0.0.0/8",
                "--no-progress",
                "--no-cache",
                *common,
            ],
            env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap},
            catch_exceptions=False,
        )
        assert 0 == worker.exit_code, worker.output
        assert "worker one: 5 products in 1 shards" in worker.output
        merged = runner.invoke(cli, ["build-dataset", "finalize", *common], catch_exceptions=False)
        assert 0 == merged.exit_code, merged.output
        assert 5 == json.loads((output / "stats.json").read_text())["ok"]
