"""DecodeBudget: decodes admitted by pixels, first come first served, nothing ever leaked."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.decode_budget import DecodeBudget


async def _settle() -> None:
    """Let every ready task run until it waits again."""
    for _ in range(5):
        await asyncio.sleep(0)


class TestAcquire:
    """DecodeBudget.acquire() and release()."""

    def test_admits_by_pixels_not_by_count(self) -> None:
        """Images whose pixels fit together are admitted at once, however many they are."""

        async def run() -> tuple[int, int, int]:
            budget = DecodeBudget(100)
            for _ in range(10):
                await budget.acquire(10)
            return budget.in_use, budget.waits, budget.waiting

        assert (100, 0, 0) == asyncio.run(run())

    def test_blocks_while_over_and_admits_on_release(self) -> None:
        """An image that does not fit waits until enough pixels are released."""

        async def run() -> list[str]:
            budget = DecodeBudget(100)
            await budget.acquire(60)
            events: list[str] = []

            async def second() -> None:
                await budget.acquire(50)
                events.append("admitted")

            task = asyncio.create_task(second())
            await _settle()
            events.append(f"waiting {budget.waiting}")
            budget.release(60)
            await task
            events.append(f"in use {budget.in_use}, waits {budget.waits}")
            return events

        assert ["waiting 1", "admitted", "in use 50, waits 1"] == asyncio.run(run())

    def test_admission_is_first_come_first_served(self) -> None:
        """A large waiter is admitted before smaller ones that came after it, even if they fit."""

        async def run() -> list[str]:
            budget = DecodeBudget(100)
            await budget.acquire(50)
            order: list[str] = []

            async def take(name: str, weight: int) -> None:
                await budget.acquire(weight)
                order.append(name)

            tasks = [asyncio.create_task(take("large", 100))]
            await _settle()
            tasks += [asyncio.create_task(take(f"small{i}", 10)) for i in range(3)]
            await _settle()
            order.append("released")
            budget.release(50)
            await tasks[0]
            budget.release(100)
            await asyncio.gather(*tasks)
            return order

        assert ["released", "large", "small0", "small1", "small2"] == asyncio.run(run())

    def test_a_cancelled_waiter_holds_nothing_and_unblocks_those_behind(self) -> None:
        """Cancelling the head of the queue lets the waiters behind it in; no pixel is leaked."""

        async def run() -> tuple[int, int, int]:
            budget = DecodeBudget(100)
            await budget.acquire(50)
            large = asyncio.create_task(budget.acquire(100))
            await _settle()
            small = asyncio.create_task(budget.acquire(30))
            await _settle()
            large.cancel()
            await small
            with pytest.raises(asyncio.CancelledError):
                await large
            in_use, waiting = budget.in_use, budget.waiting
            budget.release(80)
            return in_use, waiting, budget.in_use

        assert (80, 0, 0) == asyncio.run(run())

    def test_a_waiter_cancelled_as_it_is_granted_gives_the_pixels_back(self) -> None:
        """Pixels granted to a waiter cancelled before it resumed go back to the budget."""

        async def run() -> int:
            budget = DecodeBudget(100)
            await budget.acquire(100)
            waiter = asyncio.create_task(budget.acquire(40))
            await _settle()
            budget.release(100)  # grants the waiter...
            waiter.cancel()  # ...which is cancelled before it runs again
            with pytest.raises(asyncio.CancelledError):
                await waiter
            return budget.in_use

        assert 0 == asyncio.run(run())

    @pytest.mark.parametrize("weight", [-1, 101])
    def test_a_weight_that_can_never_fit_is_refused(self, weight: int) -> None:
        """A weight below 0 or above the capacity raises at once instead of waiting forever."""
        with pytest.raises(ValueError, match="weight must be between 0 and 100"):
            asyncio.run(DecodeBudget(100).acquire(weight))

    def test_releasing_more_than_held_is_a_bug(self) -> None:
        """Giving back pixels nobody took raises."""
        with pytest.raises(ValueError, match="only 0 held"):
            DecodeBudget(100).release(1)

    def test_capacity_must_be_positive(self) -> None:
        """A budget that could admit nothing is refused."""
        with pytest.raises(ValueError, match="capacity"):
            DecodeBudget(0)


class TestRun:
    """DecodeBudget.run(): work in an executor within the budget."""

    def test_work_beyond_the_budget_runs_one_part_at_a_time(self) -> None:
        """With room for one image, four workers decode one image at a time, never more."""
        lock = threading.Lock()
        running = [0, 0]  # now, most

        def work(value: int) -> int:
            with lock:
                running[0] += 1
                running[1] = max(running)
            threading.Event().wait(0.02)
            with lock:
                running[0] -= 1
            return value

        async def run() -> list[int]:
            budget = DecodeBudget(100)
            with ThreadPoolExecutor(4) as pool:
                runs = (budget.run(60, pool, work, i) for i in range(4))
                return list(await asyncio.gather(*runs))

        assert ([0, 1, 2, 3], 1) == (asyncio.run(run()), running[1])

    def test_pixels_go_back_when_the_work_raises(self) -> None:
        """An exception in the work reaches the caller and releases its pixels."""

        def work() -> None:
            raise RuntimeError("bug")

        async def run() -> int:
            budget = DecodeBudget(100)
            with ThreadPoolExecutor(1) as pool, pytest.raises(RuntimeError, match="bug"):
                await budget.run(100, pool, work)
            return budget.in_use

        assert 0 == asyncio.run(run())

    def test_a_cancelled_caller_holds_the_pixels_until_the_thread_ends(self) -> None:
        """The caller goes at once; its pixels stay held while its thread runs, then return."""
        started, finish = threading.Event(), threading.Event()

        def work() -> None:
            started.set()
            finish.wait(10)

        async def run() -> tuple[int, int]:
            budget = DecodeBudget(100)
            with ThreadPoolExecutor(1) as pool:
                task = asyncio.create_task(budget.run(70, pool, work))
                await asyncio.to_thread(started.wait, 10)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                while_running = budget.in_use
                finish.set()
                for _ in range(100):
                    if budget.in_use == 0:
                        break
                    await asyncio.sleep(0.01)
                return while_running, budget.in_use

        assert (70, 0) == asyncio.run(run())

    def test_a_caller_cancelled_before_its_work_starts_releases_at_once(self) -> None:
        """Work still queued in the executor is dropped with the caller, and its pixels return."""
        started, finish = threading.Event(), threading.Event()
        ran: list[str] = []

        def block() -> None:
            started.set()
            finish.wait(10)

        async def run() -> int:
            budget = DecodeBudget(100)
            with ThreadPoolExecutor(1) as pool:
                first = asyncio.create_task(budget.run(10, pool, block))
                await asyncio.to_thread(started.wait, 10)
                queued = asyncio.create_task(budget.run(20, pool, ran.append, "queued"))
                await _settle()
                queued.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await queued
                held = budget.in_use
                finish.set()
                await first
                return held

        assert (10, []) == (asyncio.run(run()), ran)
