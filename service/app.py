"""Building the service from its settings, and running ``serve`` and ``replay``.

:class:`Service` is a context manager holding every part (classifier, batcher, event loop,
fetcher, cache, Kafka clients, HTTP endpoints); :meth:`Service.serve` runs until a signal
or a stop event, :meth:`Service.replay` until the end offsets seen at its start.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from types import FrameType, TracebackType
from typing import Any

import numpy as np
import structlog
from aiohttp import web
from confluent_kafka import TopicPartition

from model.classifier import Classifier
from model.fusion import FusionSettings, LateFusion
from model.open_set import OPEN_SET_RULE
from model.text_classifier import TextClassifier
from model.text_features import TextFields
from model.zero_shot import DEFAULT_THRESHOLD, ZeroShotClassifier
from service.batcher import InferenceBatcher
from service.cache import ImageCache
from service.config import Settings
from service.contract import SingleObjectCodec
from service.crashloop import CrashLoopGuard
from service.enrich import TextSignal, ZeroShotSignal, image_scores, text_scores
from service.errors import ConfigError, KafkaError
from service.fetch.fetcher import ImageFetcher
from service.http import start_http
from service.images import ImageStage
from service.kafka.admin import KafkaAdmin
from service.kafka.consumer import KafkaConsumer
from service.kafka.producer import KafkaProducer
from service.loop import LoopThread
from service.metrics import Metrics
from service.open_set import OpenSetCheck
from service.outputs import DEFAULT_MAX_MESSAGE_BYTES, TopicLimits
from service.pipeline import EnrichmentService, RunSummary, ServiceOptions
from service.redis_store import RedisStore
from service.stores import KeyValueStore

__all__ = ["Service", "end_offsets"]

log = structlog.get_logger(__name__)


FILES_BESIDES_SOCKETS = 256
"""Open files the service needs besides image sockets (Kafka, Redis, model, logs, threads)."""


def ensure_open_files(needed: int) -> int:
    """Raise the soft limit on open files towards ``needed`` (never past the hard limit, never
    down); the limit now. A limit below ``needed`` is logged: sockets would then fail with
    "too many open files" before the fetcher's caps are reached."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        if soft < needed:
            log.warning("open_file_limit_low", limit=soft, needed=needed)
    return soft


def _kafka_config(settings: Settings) -> dict[str, Any]:
    return {"bootstrap.servers": settings.kafka_bootstrap_servers, **settings.kafka_config}


def end_offsets(
    consumer: KafkaConsumer, topic: str, timeout: float = 10.0
) -> dict[tuple[str, int], int]:
    """The high watermark of every partition of ``topic`` now."""
    try:
        metadata = consumer.client.list_topics(topic, timeout=timeout)
    except Exception as exc:
        raise KafkaError(f"cannot read the metadata of {topic}: {exc}") from exc
    info = metadata.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        raise KafkaError(f"topic {topic} does not exist or has no partitions")
    ends: dict[tuple[str, int], int] = {}
    for partition in sorted(info.partitions):
        _, high = consumer.client.get_watermark_offsets(
            TopicPartition(topic, partition), timeout=timeout
        )
        ends[(topic, partition)] = int(high)
    return ends


class Service:
    """Every part of the enrichment service, built from :class:`Settings`."""

    def __init__(
        self,
        settings: Settings,
        *,
        classifier: Classifier | None = None,
        store: KeyValueStore | None = None,
        group_id: str | None = None,
        http: bool = True,
        text_model: TextClassifier | None = None,
    ) -> None:
        """Load the model(s) and build the parts; ``store`` replaces Redis (the demo's
        cache); ``text_model`` replaces ENRICH_TEXT_MODEL_DIR's."""
        self.settings = settings
        if classifier is None:
            if settings.model_dir is None:
                raise ConfigError("no model: set ENRICH_MODEL_DIR or pass --model")
            classifier = Classifier.load(
                settings.model_dir,
                taxonomy=settings.taxonomy,
                threshold=settings.confidence_threshold,
                top_k=settings.top_k,
                runtime=settings.runtime,
                num_threads=settings.inference_threads or None,
            )
        self.classifier = classifier
        self.text = self._text_signal(settings, classifier, text_model)
        self.zero_shot = self._zero_shot_signal(settings, classifier)
        self.metrics = Metrics()
        self.open_set = self._open_set_check(settings)
        self.group_id = group_id or settings.group_id
        if store is None and settings.redis_url:
            store = RedisStore(settings.redis_url, prefix="enrich:", socket_timeout=0.5)
        self.cache = (
            ImageCache(
                store,
                image_size=classifier.input_size,
                ttl_s=settings.cache_ttl_s,
                negative_ttl_s=settings.cache_negative_ttl_s,
                compress=settings.cache_compress,
            )
            if store is not None
            else None
        )
        self.fetch_config = settings.fetch_config()
        self.http = http
        self.http_port: int | None = None
        self._runner: web.AppRunner | None = None
        self._pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2),
                                        thread_name_prefix="decode")  # fmt: skip
        self.loop = LoopThread()
        self.fetcher = ImageFetcher(self.fetch_config)
        self.metrics.fetch_stalled.set_function(lambda: self.fetcher.limiter.stalled)
        classify: Callable[[Sequence[Any]], Sequence[Any]] = self.classifier.classify
        if self.text is not None:  # fusion needs the image's leaf distribution
            classify = functools.partial(image_scores, self.classifier)
        self.batcher: InferenceBatcher[Any] = InferenceBatcher(
            classify,
            max_size=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            on_batch=self._on_batch,
        )
        self.service: EnrichmentService | None = None

    @staticmethod
    def _text_signal(
        settings: Settings, classifier: Classifier, text_model: TextClassifier | None
    ) -> TextSignal | None:
        """The text model (``text_model`` or ENRICH_TEXT_MODEL_DIR) fused with the image
        model, or None when there is none."""
        if text_model is None and settings.text_model_dir is not None:
            text_model = TextClassifier.load(
                settings.text_model_dir,
                taxonomy=settings.taxonomy,
                threshold=settings.confidence_threshold,
                top_k=settings.top_k,
            )
        if text_model is None:
            return None
        image, text = classifier.info, text_model.info
        if (image.taxonomy_version, image.depth) != (text.taxonomy_version, text.depth):
            raise ConfigError(
                f"the text model ({text.taxonomy_version}, depth {text.depth}) and the image "
                f"model ({image.taxonomy_version}, depth {image.depth}) use different taxonomies"
            )
        fusion = LateFusion(
            classifier.vocabulary, text_model.vocabulary,
            settings=FusionSettings(text_weight=settings.fusion_text_weight),
            threshold=settings.confidence_threshold, top_k=settings.top_k,
        )  # fmt: skip
        log.info("text_model_loaded", name=text.name, version=text.version,
                 fused_leaves=len(fusion.vocabulary.leaves))  # fmt: skip
        return TextSignal(text_model, fusion, max_size=settings.batch_max_size)

    @staticmethod
    def _zero_shot_signal(settings: Settings, classifier: Classifier) -> ZeroShotSignal | None:
        """The zero-shot fallback (ENRICH_ZERO_SHOT) on ENRICH_TAXONOMY cut at the image
        model's depth, or None."""
        if not settings.zero_shot:
            return None
        if settings.taxonomy is None:
            raise ConfigError("ENRICH_ZERO_SHOT needs ENRICH_TAXONOMY, Google's taxonomy file")
        zero_shot = ZeroShotClassifier.from_taxonomy(
            settings.taxonomy, depth=classifier.info.depth,
            threshold=settings.confidence_threshold or DEFAULT_THRESHOLD, top_k=settings.top_k,
        )  # fmt: skip
        log.info("zero_shot_loaded", leaves=len(zero_shot.decoder.leaves),
                 version=zero_shot.version)  # fmt: skip
        return ZeroShotSignal(zero_shot, max_size=settings.batch_max_size)

    def _open_set_check(self, settings: Settings) -> OpenSetCheck | None:
        """The open-set check of text-only answers (ENRICH_OPEN_SET), or None."""
        if not settings.open_set:
            return None
        if self.text is None or self.zero_shot is None:
            raise ConfigError(
                "ENRICH_OPEN_SET needs a text model (ENRICH_TEXT_MODEL_DIR) and ENRICH_ZERO_SHOT"
            )
        known = self.text.classifier.vocabulary.leaves
        log.info("open_set_enabled", text_leaves=len(known), **asdict(OPEN_SET_RULE))
        return OpenSetCheck(self.zero_shot, known, self.metrics)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.observe(size)
        self.metrics.inference_latency.observe(seconds)
        log.info("batch", size=size, seconds=round(seconds, 4), in_flight=self._in_flight())

    def _in_flight(self) -> int:
        """Messages consumed and not yet acknowledged (0 before the loop starts)."""
        return len(self.service.queues) if self.service is not None else 0

    def __enter__(self) -> Service:
        """Start the event loop, the fetcher's session, the inference thread, the endpoints."""
        self.warm_up()
        config = self.fetch_config
        # Twice the sockets in use: idle keep-alive connections come on top of the limits.
        sockets = 2 * (config.total_connections + config.max_stalled)
        ensure_open_files(sockets + FILES_BESIDES_SOCKETS)
        self.loop.start()
        self.loop.call(self.fetcher.__aenter__())
        self.batcher.start()
        if self.text is not None:
            self.text.start()
        if self.zero_shot is not None:
            self.zero_shot.start()
        if self.http:
            self._runner, self.http_port = self.loop.call(
                start_http(
                    self.metrics, self._alive, self._ready,
                    self.settings.metrics_host, self.settings.metrics_port,
                )
            )  # fmt: skip
            log.info("http_listening", port=self.http_port)
        return self

    def warm_up(self) -> None:
        """Classify a blank full batch and a blank single image before the first product.

        Keras traces the model for the first batch shapes it sees (about 1.5 s on two CPU
        cores, measured in docs/performance.md) and then generalises; done here, that stall
        falls before readiness instead of on the first products after every start.
        """
        size = self.classifier.input_size
        blank = np.zeros((size, size, 3), dtype=np.uint8)
        began = time.perf_counter()
        for count in (self.settings.batch_max_size, 1):
            self.classifier.classify([blank] * count)
            if self.text is not None:
                text_scores(self.text.classifier, [TextFields(title="warm up")] * count)
        log.info("model_warmed_up", seconds=round(time.perf_counter() - began, 2))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop everything started, in reverse order."""
        if self._runner is not None:
            self.loop.call(self._runner.cleanup())
        if self.service is not None:
            try:  # the last cache writes: losing them costs a refetch, so wait only a little
                self.loop.call(self.service.images.flush(), timeout=10.0)
            except TimeoutError:
                log.warning("cache_writes_unflushed")
        self.batcher.close()
        if self.text is not None:
            self.text.close()
        if self.zero_shot is not None:
            self.zero_shot.close()
        self.loop.call(self.fetcher.__aexit__(None, None, None))
        self.loop.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _alive(self) -> bool:
        """Alive while starting, and while the main loop has turned in the last 30 s."""
        service = self.service
        if service is None or not (service.alive or service.stopped):
            return True  # starting
        return service.alive and time.monotonic() - service.heartbeat < 30.0

    def _ready(self) -> dict[str, bool]:
        service = self.service
        return {
            "model_loaded": self.classifier is not None,
            "partitions_assigned": bool(service and service.assigned),
            "broker_reachable": bool(service and service.broker_ok),
        }

    def _build(self, options: ServiceOptions, consumer_extra: Mapping[str, Any]) -> None:
        settings = self.settings
        kafka = _kafka_config(settings)
        # A crashed instance's partitions move on after the session timeout: 10 s rather than
        # librdkafka's 45 s (settings.kafka_config can still override it).
        consumer_config: dict[str, Any] = {
            "session.timeout.ms": 10_000,
            "heartbeat.interval.ms": 2_000,
            **kafka,
            "group.id": self.group_id,
            **consumer_extra,
        }
        producer_config: dict[str, Any] = dict(kafka)
        if options.delivery == "exactly-once":
            consumer_config.update({"enable.auto.commit": False,
                                    "isolation.level": "read_committed"})  # fmt: skip
            producer_config["transactional.id"] = (
                settings.transactional_id or f"{self.group_id}-{socket.gethostname()}"
            )
            # An abandoned transaction blocks read_committed readers until it times out.
            producer_config.setdefault("transaction.timeout.ms", 10_000)
        images = ImageStage(
            self.fetcher, self.cache, image_size=self.classifier.input_size,
            decode_pool=self._pool, max_pixels=settings.max_image_pixels, metrics=self.metrics,
            decode_budget_pixels=settings.decode_budget_pixels, min_side=settings.min_image_side,
        )  # fmt: skip
        self.service = EnrichmentService(
            options,
            consumer=KafkaConsumer(consumer_config),
            producer=KafkaProducer(producer_config),
            product_codec=SingleObjectCodec.for_schema("product", settings.schema_dir),
            enrichment_codec=SingleObjectCodec.for_schema(
                "category_enrichment", settings.schema_dir
            ),
            images=images,
            batcher=self.batcher,
            loop=self.loop,
            model_record=self.classifier.info.to_record(),
            metrics=self.metrics,
            limits=self._topic_limits(kafka, producer_config, options),
            guard=CrashLoopGuard(settings.crash_loop_restarts, slack=options.consume_batch),
            text=self.text,
            zero_shot=self.zero_shot,
            open_set=self.open_set,
        )

    def _topic_limits(
        self, kafka: Mapping[str, Any], producer: Mapping[str, Any], options: ServiceOptions
    ) -> TopicLimits:
        """The largest record the output and dead-letter topics take, read from the broker
        (the broker's default where a topic's configuration cannot be read)."""
        topics = [options.output_topic, options.dead_letter_topic]
        try:
            configs = KafkaAdmin(kafka).topic_configs(topics, timeout=5.0)
        except KafkaError as exc:
            log.warning("topic_config_unreadable", topics=topics, error=str(exc))
            configs = {}
        for topic in topics:
            if topic not in configs:
                log.warning("topic_config_unreadable", topic=topic,
                            using=DEFAULT_MAX_MESSAGE_BYTES)  # fmt: skip
        limits = TopicLimits.from_configs(
            configs.get(topics[0], {}),
            configs.get(topics[1], {}),
            int(producer.get("message.max.bytes", 1_000_000)),
        )
        log.info("topic_limits", output_bytes=limits.output_bytes,
                 dead_letter_bytes=limits.dead_letter_bytes)  # fmt: skip
        return limits

    def _options(self, output_topic: str | None = None) -> ServiceOptions:
        s = self.settings
        return ServiceOptions(
            input_topic=s.input_topic,
            output_topic=output_topic or s.output_topic,
            dead_letter_topic=s.dead_letter_topic,
            delivery=s.delivery,
            max_in_flight=s.max_in_flight,
            max_in_work=s.max_in_work,
            shutdown_deadline_s=s.shutdown_deadline_s,
            revoke_deadline_s=min(s.shutdown_deadline_s, 10.0),
            lag_interval_s=s.lag_interval_s,
            stall_timeout_s=s.stall_timeout_s,
        )

    def serve(
        self, stop: threading.Event | None = None, *, handle_signals: bool = True
    ) -> RunSummary:
        """Consume and enrich until SIGTERM / SIGINT (or ``stop``); then drain and exit."""
        stop = stop or threading.Event()
        if handle_signals:

            def on_signal(number: int, _frame: FrameType | None) -> None:
                log.info("signal", signal=signal.Signals(number).name)
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        self._build(self._options(), {})
        assert self.service is not None
        log.info("serving", topic=self.settings.input_topic, model=self.classifier.info.version,
                 delivery=self.settings.delivery)  # fmt: skip
        return self.service.run(stop)

    def replay(
        self,
        *,
        since: dt.datetime | None = None,
        output_topic: str | None = None,
        on_start: Callable[[int], None] | None = None,
        on_progress: Callable[[int], None] | None = None,
        stop: threading.Event | None = None,
    ) -> RunSummary:
        """Reclassify the input topic from its start (or ``since``) up to its end offsets now."""
        self._build(self._options(output_topic), {"enable.auto.commit": True})
        assert self.service is not None
        consumer = self.service.consumer
        until = end_offsets(consumer, self.settings.input_topic)
        start: dict[tuple[str, int], int] = {}
        if since is not None:
            millis = int(since.timestamp() * 1000)
            found = consumer.client.offsets_for_times(
                [TopicPartition(t, p, millis) for (t, p) in until], timeout=10.0
            )
            for tp in found:
                start[(tp.topic, tp.partition)] = (
                    tp.offset if tp.offset >= 0 else until[(tp.topic, tp.partition)]
                )
        total = 0
        for key, end in until.items():
            begin = start.get(key, 0)
            if begin < 0:
                begin = 0
            if begin == 0:
                low, _ = consumer.client.get_watermark_offsets(TopicPartition(*key), timeout=10.0)
                begin = int(low)
            total += max(0, end - begin)
        if on_start is not None:
            on_start(total)
        log.info("replaying", topic=self.settings.input_topic, messages=total,
                 since=since.isoformat() if since else None)  # fmt: skip
        began = time.monotonic()
        summary = self.service.run(stop or threading.Event(), until=until, start=start,
                                   on_progress=on_progress)  # fmt: skip
        log.info("replayed", messages=summary.consumed, seconds=round(time.monotonic() - began, 1))
        return summary
