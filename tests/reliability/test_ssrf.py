"""SSRF through the running service: every guarded address is refused, no request lands.

Targets that are not loopback are real hosts: addresses in 10/8, 172.16/12 and 192.168/16
made in a network namespace of the test's own, with a listener that counts connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.network import (
    CountingListener,
    NetnsUnavailableError,
    PrivateNetwork,
    probe_targets,
    ssrf_scenario,
    ssrf_urls,
)
from tests.service.test_pipeline import (
    ENRICHMENT,
    _encode,
    _produce,
    _product,
    _read,
    _Running,
    _settings,
    model_dir,
)

__all__ = ["model_dir"]  # fixture shared with test_pipeline

pytestmark = pytest.mark.integration


@pytest.fixture
def private_network() -> Iterator[PrivateNetwork]:
    """Private addresses outside loopback (a network namespace with a counting listener),
    removed afterwards whatever the test did."""
    network = PrivateNetwork()
    try:
        network.start()
    except NetnsUnavailableError as exc:
        # Not a skip: without hosts outside loopback the guard's private-network paths go
        # untested, and the machines this runs on allow network namespaces.
        pytest.fail(f"`ip netns add` is refused on this machine (it needs root): {exc}")
    try:
        yield network
    finally:
        network.close()


def _topics(topic_factory: Any) -> dict[str, str]:
    return {
        "input": topic_factory("ssrf", partitions=2),
        "output": topic_factory("ssrf-out", partitions=2),
        "dlq": topic_factory("ssrf-dlq"),
    }


def test_guarded_addresses_get_image_unavailable_and_zero_hits(
    kafka_bootstrap: str, topic_factory: Any, model_dir: Path, private_network: PrivateNetwork
) -> None:
    """Loopback in any spelling, private (namespace hosts too), link-local: 0 connections."""
    topics = _topics(topic_factory)
    listener = CountingListener()
    try:
        urls = ssrf_urls(listener.port, private_network)
        landed, probed = probe_targets(listener, private_network)
        before = listener.hits + private_network.hits
        _produce(
            kafka_bootstrap,
            topics["input"],
            [_encode(_product(name, url)) for name, url in urls.items()],
        )
        settings = _settings(kafka_bootstrap, topics, model_dir, allowed_networks="")
        with _Running(settings):
            messages = _read(kafka_bootstrap, topics["output"], expected=len(urls))
    finally:
        listener.close()
    records = {r["product_id"]: r for r in (ENRICHMENT.decode(m.value()) for m in messages)}
    assert probed == landed, "a target did not accept a connection from the test itself"
    assert {name: "IMAGE_UNAVAILABLE" for name in urls} == {
        name: records[name]["status"] for name in urls if name in records
    }
    for name in urls:
        if name.startswith("netns-"):
            assert "private address" in records[name]["error"], records[name]["error"]
    assert 0 == listener.hits + private_network.hits - before


def test_names_resolving_to_private_addresses_are_refused_in_a_serve_child(
    kafka_bootstrap: str,
    topic_factory: Any,
    model_dir: Path,
    private_network: PrivateNetwork,
    tmp_path: Path,
) -> None:
    """`enrich serve` with names that resolve to loopback and namespace hosts: 0 connections."""
    result = ssrf_scenario(
        bootstrap=kafka_bootstrap,
        topics=_topics(topic_factory),
        model_dir=model_dir,
        work=tmp_path,
        network=private_network,
    )
    print(result.row)
    assert result.probed == result.probe_hits, "a target did not accept the test's connection"
    assert {name: "IMAGE_UNAVAILABLE" for name in result.urls} == {
        name: status for name, (status, _) in result.answers.items()
    }
    names = {name: error for name, (_, error) in result.answers.items() if name.startswith("name-")}
    assert 5 == len(names)
    for name, error in names.items():
        # Refused by the resolver's guard, not a lookup failure: the name did resolve.
        assert "resolves only to blocked addresses" in str(error), (name, error)
    assert "loopback address 127.0.0.1" in str(names["name-loopback"])
    assert "private address" in str(names["name-two-private"])
    assert (0, 0, 0) == (result.row.guarded_hits, result.row.lost, result.row.duplicates)
