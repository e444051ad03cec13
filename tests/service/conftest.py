"""Fixtures of the image cache's tests: a fake clock and an in-process store on it."""

import pytest

from service.stores import MemoryStore
from tests.support.cache import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock, shared by the store and the cache of a test."""
    return FakeClock()


@pytest.fixture
def memory(clock: FakeClock) -> MemoryStore:
    """An in-process store on the fake clock."""
    return MemoryStore(clock=clock)
