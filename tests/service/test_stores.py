"""MemoryStore, the in-process KeyValueStore."""

import pytest

from service.stores import MemoryStore
from tests.support.cache import FakeClock


class TestMemoryStore:
    """MemoryStore: a dict with expiry and an LRU bound."""

    def test_set_then_get(self, memory: MemoryStore) -> None:
        """A value written is read back; a key never written reads as None."""
        memory.set("k", b"v")
        assert (b"v", None) == (memory.get("k"), memory.get("other"))

    def test_get_many_in_key_order(self, memory: MemoryStore) -> None:
        """get_many answers in key order, None for absent keys."""
        memory.set_many({"a": b"1", "b": b"2"})
        assert [b"1", None, b"2"] == memory.get_many(["a", "zz", "b"])

    @pytest.mark.parametrize(
        ("elapsed", "expected"), [(0.0, b"v"), (9.99, b"v"), (10.0, None), (500.0, None)]
    )
    def test_ttl(
        self, memory: MemoryStore, clock: FakeClock, elapsed: float, expected: bytes
    ) -> None:
        """A value written with a TTL of 10 s is there until 10 s have passed on the clock."""
        memory.set("k", b"v", ttl_s=10)
        clock.advance(elapsed)
        assert expected == memory.get("k")

    def test_no_ttl_never_expires(self, memory: MemoryStore, clock: FakeClock) -> None:
        """A value written without a TTL outlives any wait."""
        memory.set("k", b"v")
        clock.advance(1e9)
        assert b"v" == memory.get("k")

    def test_expired_entries_are_not_counted(self, memory: MemoryStore, clock: FakeClock) -> None:
        """len() and live_keys() see only live entries."""
        memory.set("short", b"v", ttl_s=1)
        memory.set("long", b"v", ttl_s=100)
        clock.advance(2)
        assert (1, ["long"]) == (len(memory), memory.live_keys())

    def test_delete(self, memory: MemoryStore) -> None:
        """A deleted key reads as None; deleting an absent key is fine."""
        memory.set("k", b"v")
        memory.delete("k")
        memory.delete("never")
        assert None is memory.get("k")

    def test_lru_bound_evicts_least_recently_used(self, clock: FakeClock) -> None:
        """Past max_entries the entry read or written longest ago goes first."""
        store = MemoryStore(max_entries=2, clock=clock)
        store.set("a", b"1")
        store.set("b", b"2")
        store.get("a")
        store.set("c", b"3")
        assert ["a", "c"] == store.live_keys()

    def test_lru_bound_holds_for_set_many(self) -> None:
        """A batch larger than the bound keeps only its last entries."""
        store = MemoryStore(max_entries=3)
        store.set_many({str(i): b"x" for i in range(10)})
        assert ["7", "8", "9"] == store.live_keys()

    @pytest.mark.parametrize("max_entries", [0, -1])
    def test_bad_bound(self, max_entries: int) -> None:
        """A bound below one is refused."""
        with pytest.raises(ValueError, match="max_entries"):
            MemoryStore(max_entries=max_entries)

    def test_ping_and_close(self, memory: MemoryStore) -> None:
        """ping is True; close drops every entry."""
        memory.set("k", b"v")
        memory.close()
        assert (True, 0) == (memory.ping(), len(memory))
