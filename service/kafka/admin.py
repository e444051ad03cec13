"""Topic administration: create and delete topics, read the cluster's metadata."""

import time
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import ConfigResource
from confluent_kafka.cimpl import NewTopic

from service.errors import KafkaError


class KafkaAdmin:
    """Wraps `confluent_kafka.admin.AdminClient`; the client is created on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._client: AdminClient | None = None

    @property
    def client(self) -> AdminClient:
        """The underlying admin client, created now if needed."""
        if self._client is None:
            self._client = AdminClient(self._config)
        return self._client

    def create_topics(
        self,
        names: Sequence[str],
        *,
        partitions: int = 1,
        config: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        """Create topics; a topic that already exists is fine."""
        new = [
            NewTopic(n, num_partitions=partitions, replication_factor=1, config=dict(config or {}))
            for n in names
        ]
        futures = self.client.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout)
            except confluent_kafka.KafkaException as exc:
                if exc.args[0].code() != confluent_kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                    raise KafkaError(f"cannot create topic {name}: {exc}") from exc

    def delete_topics(self, names: Sequence[str], timeout: float = 30.0) -> None:
        """Delete topics; a topic that does not exist is fine."""
        futures = self.client.delete_topics(list(names), operation_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result(timeout)
            except confluent_kafka.KafkaException as exc:
                if exc.args[0].code() != confluent_kafka.KafkaError.UNKNOWN_TOPIC_OR_PART:
                    raise KafkaError(f"cannot delete topic {name}: {exc}") from exc

    def topics(self, timeout: float = 10.0) -> dict[str, int]:
        """Every topic in the cluster with its partition count (a real metadata request)."""
        try:
            metadata = self.client.list_topics(timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"cannot read cluster metadata: {exc}") from exc
        return {name: len(t.partitions) for name, t in metadata.topics.items()}

    def topic_configs(
        self, names: Sequence[str], timeout: float = 10.0
    ) -> dict[str, dict[str, str]]:
        """The effective configuration of each topic (its own settings and the broker's
        defaults, e.g. ``max.message.bytes``), in one request; a topic whose configuration
        cannot be read is left out (and named in the log by the caller)."""
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
        try:
            futures = self.client.describe_configs(resources, request_timeout=timeout)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"cannot read topic configurations: {exc}") from exc
        configs: dict[str, dict[str, str]] = {}
        deadline = time.monotonic() + timeout
        for resource, future in futures.items():
            try:
                entries = future.result(max(0.0, deadline - time.monotonic()))
            except (confluent_kafka.KafkaException, TimeoutError):
                continue
            configs[resource.name] = {
                key: entry.value for key, entry in entries.items() if entry.value is not None
            }
        return configs
