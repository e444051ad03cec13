"""The service's Prometheus metrics, in a registry of its own (one per service instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Metrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """Every metric the service exports at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Create the collectors in ``registry`` (a new one by default)."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.consumed = Counter("enrich_consumed", "Input messages consumed.", registry=r)
        self.redelivered = Counter(
            "enrich_redelivered",
            "Input messages the consumer handed out again within one assignment (dropped).",
            registry=r,
        )
        self.produced = Counter(
            "enrich_produced", "Enrichment records acknowledged, by status.", ["status"], registry=r
        )
        self.dead_lettered = Counter(
            "enrich_dead_lettered", "Input messages sent to the dead-letter topic.", registry=r
        )
        self.partition_stalls = Counter(
            "enrich_partition_stalls",
            "Assigned partitions with lag that gave nothing for ENRICH_STALL_TIMEOUT_S while "
            "not paused, restarted (seek + resume).",
            registry=r,
        )
        self.decided = Counter(
            "enrich_decided",
            "Products by the signals their category came from: IMAGE, TEXT, FUSED (both), NONE.",
            ["by"],
            registry=r,
        )
        self.open_set = Counter(
            "enrich_open_set",
            "Text-only answers checked against the zero-shot classifier (ENRICH_OPEN_SET), by "
            "the rule that decided: TEXT, TEXT_LOW_CONFIDENCE, UNKNOWN_CATEGORY, DISAGREEMENT, "
            "UNKNOWN_BELOW, NO_MATCH.",
            ["reason"],
            registry=r,
        )
        self.refused = Counter(
            "enrich_refused",
            "Records the broker or client refused (record-level errors), by topic kind and error.",
            ["kind", "error"],
            registry=r,
        )
        self.dead_letter_lost = Counter(
            "enrich_dead_letter_lost",
            "Input messages whose dead-letter copy was refused even cut down (logged, skipped).",
            registry=r,
        )
        self.quarantined = Counter(
            "enrich_quarantined",
            "Input messages quarantined to the dead-letter topic after killing the process.",
            registry=r,
        )
        self.already_published = Counter(
            "enrich_already_published",
            "Input messages skipped because an earlier owner's output of them is committed.",
            registry=r,
        )
        self.crash_loop_careful = Gauge(
            "enrich_crash_loop_careful",
            "Partitions processed one record at a time to corner a record that kills the process.",
            registry=r,
        )
        self.fetch_outcomes = Counter(
            "enrich_fetch", "Image fetches by outcome.", ["outcome"], registry=r
        )
        self.fetch_latency = Histogram(
            "enrich_fetch_seconds", "Image fetch latency.", buckets=_LATENCY, registry=r
        )
        self.cache = Counter(
            "enrich_cache", "Image cache lookups: hit, negative_hit, miss, error.", ["result"],
            registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "enrich_batch_size", "Images per inference batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        self.inference_latency = Histogram(
            "enrich_inference_seconds", "Inference time per batch.", buckets=_LATENCY, registry=r
        )
        self.end_to_end = Histogram(
            "enrich_end_to_end_seconds", "From the product's event time to its output's ack.",
            buckets=(*_LATENCY, 120, 300, 900, 3600), registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("enrich_in_flight", "Messages consumed, not yet acked.", registry=r)
        self.in_work = Gauge(
            "enrich_in_work", "Messages consumed whose enrichment is not done yet.", registry=r
        )
        self.fetch_stalled = Gauge(
            "enrich_fetch_stalled",
            "Image requests left waiting by a host that answers others, outside its slots.",
            registry=r,
        )
        self.decode_pixels = Gauge(
            "enrich_decode_pixels",
            "Pixels being decoded now, against the decode budget (decode_budget_pixels).",
            registry=r,
        )
        self.decode_waiting = Gauge(
            "enrich_decode_waiting", "Images waiting for room in the decode budget.", registry=r
        )
        self.decode_waits = Counter(
            "enrich_decode_waits", "Images that waited for room in the decode budget.", registry=r
        )
        self.lag = Gauge(
            "enrich_consumer_lag", "Messages behind the partition's end.", ["topic", "partition"],
            registry=r,
        )  # fmt: skip
        self.paused = Gauge("enrich_paused", "1 while the consumer is paused (backpressure).",
                            registry=r)  # fmt: skip

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def summary(self) -> dict[str, float]:
        """The counters as a flat dict, for the demo and logs."""
        out: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                    out[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
        return out
