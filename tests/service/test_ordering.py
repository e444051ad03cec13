"""Per-partition order and the offset watermark."""

from __future__ import annotations

import pytest

from service.ordering import Output, PartitionQueues, Pending


def _output() -> Output:
    return Output("out", b"k", b"v")


class TestPartitionQueues:
    def test_ready_stops_at_the_first_unfinished_message(self) -> None:
        """Outputs leave in source order: a finished message waits for an earlier one."""
        queues = PartitionQueues()
        first, second, third = (queues.add(Pending("in", 0, o, None)) for o in (5, 6, 7))
        second.output = _output()
        third.output = _output()
        assert [] == list(queues.ready())
        first.output = _output()
        assert [5, 6, 7] == [p.offset for p in queues.ready()]

    def test_partitions_do_not_wait_for_each_other(self) -> None:
        """A slow message holds back only its own partition."""
        queues = PartitionQueues()
        queues.add(Pending("in", 0, 0, None))
        other = queues.add(Pending("in", 1, 0, None))
        other.output = _output()
        assert [other] == list(queues.ready())

    def test_watermark_is_one_past_the_acknowledged_prefix(self) -> None:
        """The offset to store is one past the last output acked with every earlier one."""
        queues = PartitionQueues()
        items = [queues.add(Pending("in", 0, o, None)) for o in range(4)]
        for item in items:
            item.output = _output()
            item.produced = True
        queues.acknowledge(items[0])
        queues.acknowledge(items[2])
        assert {("in", 0): 1} == queues.watermarks()
        assert 3 == len(queues)
        queues.acknowledge(items[1])
        assert {("in", 0): 3} == queues.watermarks()
        assert {} == queues.watermarks()
        assert 1 == len(queues)

    def test_produced_messages_are_not_ready_again(self) -> None:
        """A message is handed out for producing once."""
        queues = PartitionQueues()
        item = queues.add(Pending("in", 0, 0, None))
        item.output = _output()
        next(iter(queues.ready())).produced = True
        assert [] == list(queues.ready())

    def test_drop_forgets_revoked_partitions(self) -> None:
        """Dropping a partition removes its in-flight work from the count."""
        queues = PartitionQueues()
        for offset in range(3):
            queues.add(Pending("in", 0, offset, None))
        queues.add(Pending("in", 1, 0, None))
        assert 3 == queues.drop([("in", 0)])
        assert 1 == len(queues)
        assert 0 == queues.pending_in([("in", 0)])

    def test_offsets_must_increase(self) -> None:
        """A message older than the queue's last is a bug and is refused."""
        queues = PartitionQueues()
        queues.add(Pending("in", 0, 5, None))
        with pytest.raises(ValueError, match="arrived after"):
            queues.add(Pending("in", 0, 5, None))
