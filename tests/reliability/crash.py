"""The crash scenario: `kill -9` the service at random moments, restart it, count the losses."""

from __future__ import annotations

import random
import signal
import time
import uuid
from pathlib import Path

from tests.reliability.scenarios import (
    OutputWatcher,
    Row,
    process_log,
    serve_process,
    service_env,
)


def crash_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    inputs: int,
    kills: int,
    max_in_flight: int,
    delivery: str = "at-least-once",
    seed: int = 0,
    timeout_s: float = 300.0,
) -> Row:
    """`kill -9` the service `kills` times at random moments, restarting it; then finish.

    The inputs must already be in ``topics["input"]``. A kill lands at a random moment
    after the restarted service has produced something new, so every kill interrupts work.
    """
    rng = random.Random(seed)
    group = f"chaos-{uuid.uuid4().hex[:8]}"
    env = service_env(
        bootstrap,
        topics,
        model_dir,
        group,
        ENRICH_MAX_IN_FLIGHT=str(max_in_flight),
        ENRICH_DELIVERY=delivery,
    )
    watcher = OutputWatcher(
        bootstrap, [topics["output"], topics["dlq"]], committed_only=delivery == "exactly-once"
    )
    recoveries: list[float] = []
    deadline = time.monotonic() + timeout_s
    try:
        for _ in range(kills):
            started = time.monotonic()
            before = watcher.count()
            process = serve_process(env)
            while watcher.count() == before and time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(process_log(process))
                time.sleep(0.05)
            first = watcher.first_after(started)
            if first is not None:
                recoveries.append(first - started)
            time.sleep(rng.uniform(0.2, 1.5))
            process.send_signal(signal.SIGKILL)
            process.wait(30)
        started = time.monotonic()
        process = serve_process(env)
        while watcher.unique() < inputs and time.monotonic() < deadline:
            time.sleep(0.1)
        first = watcher.first_after(started)
        if first is not None:
            recoveries.append(first - started)
        time.sleep(1.0)  # late duplicates would arrive now
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    finally:
        watcher.close()
    unique = watcher.unique()
    return Row(
        scenario=f"crash ({delivery}, kill -9)",
        runs=kills + 1,
        inputs=inputs,
        outputs=watcher.count(),
        lost=inputs - unique,
        duplicates=watcher.count() - unique,
        guarded_hits=0,
        max_recovery_s=round(max(recoveries, default=0.0), 2),
    )
