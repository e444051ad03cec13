"""A typed consumer: manual offset storage, rebalance callbacks passed through."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import Message, TopicPartition

from service.errors import KafkaError

RebalanceCallback = Callable[[list[TopicPartition]], None]

# The app decides when an offset may be committed: it stores offsets itself, only after the
# output of that message (and of every earlier one) is acknowledged.
_DEFAULTS: Mapping[str, Any] = {
    "enable.auto.offset.store": False,
    "enable.auto.commit": True,
    "auto.offset.reset": "earliest",
}


class KafkaConsumer:
    """Wraps `confluent_kafka.Consumer`; the client is created on first use."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = {**_DEFAULTS, **config}
        self._client: confluent_kafka.Consumer | None = None
        self._reader: confluent_kafka.Consumer | None = None
        self._closed = False

    @property
    def client(self) -> confluent_kafka.Consumer:
        """The underlying confluent-kafka consumer, created now if needed."""
        if self._client is None:
            try:
                self._client = confluent_kafka.Consumer(self._config)
            except confluent_kafka.KafkaException as exc:
                raise KafkaError(f"cannot create consumer: {exc}") from exc
        return self._client

    def subscribe(
        self,
        topics: Sequence[str],
        *,
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        """Join the group for `topics`, with the app's rebalance callbacks."""
        kwargs: dict[str, Any] = {}
        if on_assign is not None:
            kwargs["on_assign"] = lambda _c, parts: on_assign(parts)
        if on_revoke is not None:
            kwargs["on_revoke"] = lambda _c, parts: on_revoke(parts)
        if on_lost is not None:
            kwargs["on_lost"] = lambda _c, parts: on_lost(parts)
        self.client.subscribe(list(topics), **kwargs)

    def assign(self, partitions: Sequence[TopicPartition]) -> None:
        """Read exactly these partitions, outside group management."""
        self.client.assign(list(partitions))

    def poll(self, timeout: float) -> Message | None:
        """One message or event, or None after `timeout` seconds."""
        return self.client.poll(timeout)

    def consume(self, max_messages: int, timeout: float) -> list[Message]:
        """Up to `max_messages` messages, waiting at most `timeout` seconds."""
        return list(self.client.consume(max_messages, timeout))

    def store_offsets(self, offsets: Sequence[TopicPartition]) -> None:
        """Mark offsets (the next offset to read) as ready for the next commit."""
        try:
            self.client.store_offsets(offsets=list(offsets))
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"cannot store offsets: {exc}") from exc

    def commit(self, offsets: Sequence[TopicPartition] | None = None) -> None:
        """Commit synchronously: the given offsets, or every stored one."""
        try:
            if offsets is None:
                self.client.commit(asynchronous=False)
            else:
                self.client.commit(offsets=list(offsets), asynchronous=False)
        except confluent_kafka.KafkaException as exc:
            if exc.args and exc.args[0].code() == confluent_kafka.KafkaError._NO_OFFSET:
                return
            raise KafkaError(f"commit failed: {exc}") from exc

    def commit_async(self, offsets: Sequence[TopicPartition] | None = None) -> None:
        """Ask for a commit of the given offsets (with their metadata), or of every stored
        one, without waiting for the answer."""
        try:
            if offsets is None:
                self.client.commit(asynchronous=True)
            else:
                self.client.commit(offsets=list(offsets), asynchronous=True)
        except confluent_kafka.KafkaException as exc:
            if exc.args and exc.args[0].code() == confluent_kafka.KafkaError._NO_OFFSET:
                return
            raise KafkaError(f"commit failed: {exc}") from exc

    def committed(
        self, partitions: Sequence[TopicPartition], timeout: float = 10.0
    ) -> list[TopicPartition]:
        """The group's committed offsets (with their metadata) of these partitions."""
        try:
            return list(self.client.committed(list(partitions), timeout=timeout))
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"cannot read committed offsets: {exc}") from exc

    def start_offset(self, partition: TopicPartition, timeout: float = 10.0) -> int | None:
        """Where a partition with no committed offset starts: its first offset for
        ``auto.offset.reset=earliest``, its end for ``latest``, None otherwise."""
        reset = str(self._config.get("auto.offset.reset", "latest"))
        if reset not in ("earliest", "smallest", "beginning", "latest", "largest", "end"):
            return None
        try:
            low, high = self.client.get_watermark_offsets(
                TopicPartition(partition.topic, partition.partition), timeout=timeout,
                cached=False,
            )  # fmt: skip
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(f"cannot read the offsets of {partition.topic}: {exc}") from exc
        return int(low if reset in ("earliest", "smallest", "beginning") else high)

    def high_watermark(self, topic: str, partition: int, timeout: float = 1.0) -> int:
        """The partition's high watermark, asked of the broker now. It goes through a second
        client of the same configuration that never joins the group, created on first use:
        asked through this consumer's own client from another thread, the reading held up
        its ``consume`` for up to 2 s (docs/performance.md). That client is never polled, so
        callbacks in the configuration (and OAUTHBEARER token refresh) never run for it.
        Safe to call from one other thread while this consumer is used, not after `close`;
        raises `KafkaError`."""
        if self._closed:
            raise KafkaError(f"cannot read the high watermark of {topic}[{partition}]: closed")
        try:
            if self._reader is None:
                self._reader = confluent_kafka.Consumer(
                    {**self._config, "enable.auto.commit": False}
                )
            _, high = self._reader.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=timeout, cached=False
            )
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(
                f"cannot read the high watermark of {topic}[{partition}]: {exc}"
            ) from exc
        return int(high)

    def seek(self, partition: TopicPartition) -> None:
        """Fetch `partition` from its offset next (it must be assigned and fetching)."""
        try:
            self.client.seek(partition)
        except confluent_kafka.KafkaException as exc:
            raise KafkaError(
                f"cannot seek {partition.topic}[{partition.partition}] to {partition.offset}: {exc}"
            ) from exc

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        """Stop fetching these partitions while still polling (so the group keeps us)."""
        self.client.pause(list(partitions))

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Fetch these partitions again."""
        self.client.resume(list(partitions))

    def assignment(self) -> list[TopicPartition]:
        """The partitions assigned now."""
        return list(self.client.assignment())

    def close(self) -> None:
        """Leave the group and release the client (commits stored offsets if auto commit is on)."""
        self._closed = True
        try:
            if self._reader is not None:
                self._reader.close()
        finally:
            self._reader = None
            if self._client is not None:
                self._client.close()
                self._client = None
