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


class TestOrderPerKey:
    def test_a_slow_product_holds_back_only_its_own_key(self) -> None:
        """Other products of the partition leave while one image is still loading."""
        queues = PartitionQueues()
        slow = queues.add(Pending("in", 0, 0, b"a"))
        later_a, other = (queues.add(Pending("in", 0, o, k)) for o, k in ((1, b"a"), (2, b"b")))
        later_a.output = _output()
        other.output = _output()
        assert [2] == [p.offset for p in queues.ready()]
        slow.output = _output()
        assert [0, 1] == [p.offset for p in queues.ready()]

    def test_the_watermark_still_waits_for_the_slow_product(self) -> None:
        """Offsets never move past an output that is not acknowledged."""
        queues = PartitionQueues()
        slow = queues.add(Pending("in", 0, 0, b"a"))
        other = queues.add(Pending("in", 0, 1, b"b"))
        other.output = _output()
        for pending in queues.ready():
            pending.produced = True
            queues.acknowledge(pending)
        assert {} == queues.watermarks()
        assert (0, [1]) == queues.progress(("in", 0), produced=False)
        assert slow.output is None

    def test_progress_counts_produced_outputs_only_when_asked(self) -> None:
        """Exactly-once commits produced outputs with their transaction; at-least-once waits
        for the broker's acknowledgement."""
        queues = PartitionQueues()
        queues.add(Pending("in", 0, 0, b"a"))
        done = queues.add(Pending("in", 0, 1, b"b"))
        done.output = _output()
        done.produced = True
        assert (0, []) == queues.progress(("in", 0), produced=False)
        assert (0, [1]) == queues.progress(("in", 0), produced=True)

    def test_a_partition_produces_past_at_most_max_holes_waiting_entries(self) -> None:
        """The committed metadata stays small: past max_holes gaps, outputs wait."""
        for max_holes, expected in ((2, []), (3, [3, 4, 5])):
            queues = PartitionQueues(max_holes=max_holes)
            items = [queues.add(Pending("in", 0, o, str(o).encode())) for o in range(6)]
            for item in items[3:]:
                item.output = _output()
            assert expected == [p.offset for p in queues.ready()]
        queues = PartitionQueues(max_holes=1)
        items = [queues.add(Pending("in", 0, o, str(o).encode())) for o in range(4)]
        items[1].output = items[3].output = _output()
        assert [1] == [p.offset for p in queues.ready()]

    def test_unproduced_entries_are_handed_out_again_in_order(self) -> None:
        """After an aborted transaction its outputs go again, in offset order."""
        queues = PartitionQueues()
        items = [queues.add(Pending("in", 0, o, b"k")) for o in range(3)]
        for item in items:
            item.output = _output()
        for pending in queues.ready():
            pending.produced = True
        queues.unproduce(list(reversed(items)))
        assert [0, 1, 2] == [p.offset for p in queues.ready()]

    def test_a_refused_output_is_superseded_once_a_later_update_of_its_key_is_out(self) -> None:
        """Retrying it then would put the older answer last on the compacted topic."""
        queues = PartitionQueues()
        older = queues.add(Pending("in", 0, 5, b"k"))
        other = queues.add(Pending("in", 0, 6, b"j"))
        newer = queues.add(Pending("in", 0, 7, b"k"))
        for item in (older, other, newer):
            item.output = _output()
        assert not queues.superseded(older)
        other.produced = True
        assert not queues.superseded(older)
        newer.produced = True
        assert queues.superseded(older)
