"""SSRF through the running service: every guarded address is refused, no request lands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.reliability.scenarios import CountingListener, ssrf_urls
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


def test_guarded_addresses_get_image_unavailable_and_zero_hits(
    kafka_bootstrap: str, topic_factory: Any, model_dir: Path
) -> None:
    """Loopback in any spelling, private, link-local and unspecified targets: 0 connections."""
    topics = {
        "input": topic_factory("ssrf", partitions=2),
        "output": topic_factory("ssrf-out", partitions=2),
        "dlq": topic_factory("ssrf-dlq"),
    }
    listener = CountingListener()
    try:
        urls = ssrf_urls(listener.port)
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
    assert {name: "IMAGE_UNAVAILABLE" for name in urls} == {
        name: records[name]["status"] for name in urls
    }
    assert 0 == listener.hits
