"""Scale-out: serve processes join and die in one consumer group; the group's members and
lag, each process's acknowledged outputs, and the scenario."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka

from tests.reliability.scenarios import (
    OutputWatcher,
    _ready,
    free_port,
    process_log,
    read_enrichments,
    serve_process,
    service_env,
)


def produced_count(port: int) -> float | None:
    """Outputs a serve child has had acknowledged (`enrich_produced`, every status), read from
    its /metrics on ``port``; None when it does not answer."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
               if line.startswith("enrich_produced_total"))  # fmt: skip


def group_holders(bootstrap: str, group: str) -> tuple[bool, int]:
    """Whether consumer group ``group`` is stable, and how many of its members hold partitions."""
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    description = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
    holding = [m for m in description.members if m.assignment.topic_partitions]
    return description.state == ConsumerGroupState.STABLE, len(holding)


def group_lag(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """Per partition of ``topic``: its end offset less ``group``'s committed offset (the whole
    partition where the group has committed nothing). Read with a consumer of that group that
    never joins it, so the group is not disturbed."""
    consumer = confluent_kafka.Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                                         "enable.auto.commit": False})  # fmt: skip
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        committed = consumer.committed(
            [confluent_kafka.TopicPartition(topic, p) for p in partitions], 10
        )
        lag: dict[int, int] = {}
        for tp in committed:
            _low, high = consumer.get_watermark_offsets(
                confluent_kafka.TopicPartition(topic, tp.partition), timeout=10, cached=False
            )
            lag[tp.partition] = high - max(tp.offset, 0)  # OFFSET_INVALID (-1001): none yet
        return lag
    finally:
        consumer.close()


@dataclass
class ScaleOutRun:
    """What :func:`scale_out_scenario` saw."""

    inputs: list[tuple[str, int, int]]
    """(product id, partition, offset) of every input, in the order produced."""
    outputs: list[tuple[str, int, int]]
    """(product id, source partition, source offset) of every enrichment, read back at the end
    (read_committed), each output partition in log order."""
    dead_letters: int
    answered_at_kill: int
    """Distinct inputs answered when the victim was killed."""
    answered_at_join: int
    """Distinct inputs answered when the newcomer held partitions."""
    produced_by: dict[str, float]
    """Outputs each process had acknowledged: the victim's just before its kill, the others'
    just before their SIGTERM."""
    lag: dict[int, int]
    """The group's lag per input partition at the end (0 everywhere once drained)."""
    drain_s: float
    """From the last input produced to the group's lag at 0 (or to giving up)."""
    exits: dict[str, int | None]
    seconds: float


def scale_out_scenario(
    *,
    bootstrap: str,
    topics: dict[str, str],
    model_dir: Path,
    items: list[tuple[str, bytes]],
    delivery: str,
    rate_per_s: float = 30.0,
    max_in_flight: int = 100,
    timeout_s: float = 240.0,
) -> ScaleOutRun:
    """Three serve processes (a, b, c) in one group read ``topics["input"]`` while ``items``
    (key, value) arrive at ``rate_per_s``. With 30 % of them sent, b is killed with SIGKILL
    once it has produced something; at 50 % a fourth (d, its own transactional id) is started
    and the last 25 % wait until d holds partitions. Then every input is awaited, the group's
    lag must reach 0, a, c and d are stopped with SIGTERM and the output topic is read back."""
    import functools

    began = time.monotonic()
    deadline = began + timeout_s
    group = f"scale-{uuid.uuid4().hex[:8]}"
    exactly_once = delivery == "exactly-once"
    ports: dict[str, int] = {}
    processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str) -> None:
        ports[name] = free_port()
        env = service_env(bootstrap, topics, model_dir, group, ENRICH_DELIVERY=delivery,
                          ENRICH_MAX_IN_FLIGHT=str(max_in_flight),
                          ENRICH_METRICS_PORT=str(ports[name]),
                          ENRICH_TRANSACTIONAL_ID=f"{group}-{name}")  # fmt: skip
        processes[name] = serve_process(env)

    def wait_until(condition: Any, names: str, what: str) -> None:
        while not condition():
            for name in names:
                code = processes[name].poll()
                if code is not None:
                    raise RuntimeError(f"serve {name} exited with {code} waiting for {what}: "
                                       f"{process_log(processes[name])}")  # fmt: skip
            if time.monotonic() > deadline:
                raise TimeoutError(f"scale-out: no {what} within {timeout_s:.0f} s")
            time.sleep(0.1)

    kill_at, join_at, gate_at = len(items) * 3 // 10, len(items) // 2, len(items) * 3 // 4
    sent = [0]
    positions: dict[int, tuple[int, int]] = {}
    failures: list[str] = []
    gate = threading.Event()

    def delivered(index: int, error: Any, message: Any) -> None:
        if error is not None:
            failures.append(str(error))
        else:
            positions[index] = (message.partition(), message.offset())

    def pump() -> None:
        config = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5}
        producer = confluent_kafka.Producer(config)
        start_at = time.monotonic()
        for index, (key, value) in enumerate(items):
            if index == gate_at:
                gate.wait(max(0.0, deadline - time.monotonic()))
                start_at = time.monotonic() - index / rate_per_s
            time.sleep(max(0.0, start_at + index / rate_per_s - time.monotonic()))
            producer.produce(topics["input"], key=key.encode(), value=value,
                             on_delivery=functools.partial(delivered, index))  # fmt: skip
            producer.poll(0)
            sent[0] = index + 1
        if producer.flush(60):
            failures.append("inputs left undelivered")

    watcher = OutputWatcher(bootstrap, [topics["output"], topics["dlq"]],
                            committed_only=exactly_once)  # fmt: skip
    pumping = threading.Thread(target=pump, daemon=True)
    produced_by: dict[str, float] = {}
    exits: dict[str, int | None] = {}
    lag: dict[int, int] = {}
    try:
        for name in "abc":
            start(name)
        wait_until(lambda: all(_ready(ports[n]) for n in "abc"), "abc", "three ready")
        wait_until(lambda: group_holders(bootstrap, group) == (True, 3), "abc", "stable group")
        pumping.start()
        wait_until(lambda: sent[0] >= kill_at and (produced_count(ports["b"]) or 0) > 0,
                   "abc", "work on b")  # fmt: skip
        produced_by["b"] = produced_count(ports["b"]) or 0.0
        processes["b"].send_signal(signal.SIGKILL)
        exits["b"] = processes["b"].wait(30)
        answered_at_kill = watcher.unique()
        wait_until(lambda: sent[0] >= join_at, "ac", "half the stream")
        start("d")
        wait_until(lambda: _ready(ports["d"]) is True, "acd", "d holding partitions")
        answered_at_join = watcher.unique()
        gate.set()
        pumping.join(max(1.0, deadline - time.monotonic()))
        if pumping.is_alive() or failures or len(positions) != len(items):
            raise RuntimeError(f"inputs not all produced: {failures[:3]}")
        sending_done = time.monotonic()
        wait_until(lambda: watcher.unique() >= len(items), "acd", "answer to every input")
        while time.monotonic() < deadline:
            lag = group_lag(bootstrap, group, topics["input"])
            if not any(lag.values()):
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - sending_done
        time.sleep(1.0)  # late duplicates would arrive now
        for name in "acd":
            produced_by[name] = produced_count(ports[name]) or 0.0
        for name in "acd":
            processes[name].send_signal(signal.SIGTERM)
        for name in "acd":
            try:
                exits[name] = processes[name].wait(60)
            except subprocess.TimeoutExpired:
                exits[name] = None
    finally:
        gate.set()
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)
        watcher.close()
    dead_letters = sum(record is None for _, record in watcher.outputs())
    return ScaleOutRun(
        inputs=[(key, *positions[i]) for i, (key, _value) in enumerate(items)],
        outputs=read_enrichments(bootstrap, topics["output"]),
        dead_letters=dead_letters,
        answered_at_kill=answered_at_kill,
        answered_at_join=answered_at_join,
        produced_by=produced_by,
        lag=lag,
        drain_s=round(drain_s, 2),
        exits=exits,
        seconds=round(time.monotonic() - began, 1),
    )
