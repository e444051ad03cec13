"""Fixtures every test can use: the shared data, the real broker and Redis, a local image server.

Integration fixtures talk to real services. `make test` starts them (deploy/local/) and sets
KAFKA_BOOTSTRAP_SERVERS and REDIS_URL; a test that needs one when it is not there fails with
a message saying how to start it, it is never skipped.
"""

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.kafka import KafkaAdmin
from service.redis_store import RedisStore
from tests.support.image_server import ImageServer

REPO_ROOT = Path(__file__).resolve().parent.parent
TopicFactory = Callable[..., str]

_HOW_TO = "run the tests with `make test`, or start services with `make services-up` and export"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests, with the reason, on machines without an NVIDIA GPU."""
    if shutil.which("nvidia-smi"):
        return
    skip = pytest.mark.skip(reason="needs a GPU: no nvidia-smi on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real data folder: $SHARED_DATA, default ../shared/data beside the repository."""
    path = Path(os.environ.get("SHARED_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()
    if not (path / "google-product-taxonomy").is_dir():
        pytest.fail(f"shared data not found at {path}: set SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def taxonomy_file(shared_data: Path) -> Path:
    """The real Google Product Taxonomy file (version 2021-09-21)."""
    return shared_data / "google-product-taxonomy" / "taxonomy-with-ids.en-US.txt"


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of the real Kafka broker, checked with a metadata request."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        pytest.fail(f"KAFKA_BOOTSTRAP_SERVERS is not set: {_HOW_TO} KAFKA_BOOTSTRAP_SERVERS")
    KafkaAdmin({"bootstrap.servers": servers}).topics(timeout=15)
    return servers


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Iterator[TopicFactory]:
    """Creates topics with unique names (`test-<name>-<random>`) and deletes them afterwards."""
    admin = KafkaAdmin({"bootstrap.servers": kafka_bootstrap})
    created: list[str] = []

    def make(name: str = "topic", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        topic = f"test-{name}-{uuid.uuid4().hex[:10]}"
        admin.create_topics([topic], partitions=partitions, config=config)
        created.append(topic)
        return topic

    yield make
    if created:
        admin.delete_topics(created)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis server."""
    url = os.environ.get("REDIS_URL")
    if not url:
        pytest.fail(f"REDIS_URL is not set: {_HOW_TO} REDIS_URL")
    return url


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisStore]:
    """A RedisStore on the real server under a key prefix of its own; its keys go afterwards."""
    store = RedisStore(redis_url, prefix=f"test:{uuid.uuid4().hex}:")
    if not store.ping():
        pytest.fail(f"Redis at {redis_url} does not answer PING")
    yield store
    keys = list(store.client.scan_iter(match=store.prefix + "*"))
    if keys:
        store.client.delete(*keys)
    store.close()


@pytest.fixture
def image_server(shared_data: Path) -> Iterator[ImageServer]:
    """An HTTP server on 127.0.0.1 serving shared/data/product-images, scriptable to misbehave."""
    server = ImageServer(shared_data / "product-images").start()
    yield server
    server.stop()
