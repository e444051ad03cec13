"""The service's settings: one typed object read from environment variables (and CLI flags).

Every setting can be given as `ENRICH_<NAME>` (e.g. `ENRICH_INPUT_TOPIC`). Two follow the
common names as well, so the service and its tests find the same services:
`KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL`.
"""

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.runtime import RuntimeChoice
from service.errors import ConfigError
from service.logging import LogFormat

if TYPE_CHECKING:
    from service.fetch.fetcher import FetchConfig

ENV_PREFIX = "ENRICH_"


class Settings(BaseSettings):
    """Everything the service can be told, with defaults that work on a developer's machine."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", frozen=True, populate_by_name=True
    )

    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=AliasChoices("ENRICH_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
        description="Kafka bootstrap servers, comma-separated host:port.",
    )
    kafka_config: dict[str, str] = Field(
        default_factory=dict,
        description="Further librdkafka settings passed through as is, as a JSON object "
        '(e.g. {"security.protocol": "SSL"}).',
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ENRICH_REDIS_URL", "REDIS_URL"),
        description="Redis URL for the image cache; unset means no cache.",
    )
    input_topic: str = Field(default="products", description="Topic of Product records to enrich.")
    output_topic: str = Field(
        default="product-categories", description="Topic the CategoryEnrichment records go to."
    )
    dead_letter_topic: str = Field(
        default="products-dead-letter",
        description="Topic for input records that cannot be decoded, with their raw bytes.",
    )
    group_id: str = Field(default="category-enrichment", description="Kafka consumer group id.")
    taxonomy_depth: int = Field(default=4, ge=1, le=7, description="Taxonomy truncation depth.")
    log_level: str = Field(default="INFO", description="Log level name.")
    log_format: LogFormat = Field(
        default="auto", description="auto (JSON unless on a terminal), json or console."
    )
    schema_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent / "schemas",
        description="Folder holding the Avro contract (*.avsc and history/).",
    )

    # The service (`enrich serve` / `replay`) ---------------------------------------------
    model_dir: Path | None = Field(default=None, description="Model directory to serve.")
    taxonomy: Path | None = Field(
        default=None,
        description="Taxonomy file checked against the model's (optional: the model carries "
        "the paths it predicts).",
    )
    text_model_dir: Path | None = Field(
        default=None,
        description="Text model directory (`enrich train --text`): products are classified "
        "from title, description and partner category too; fused with the image when both "
        "answer, alone when the image fails or is missing.",
    )
    zero_shot: bool = Field(
        default=False,
        description="A product no model could classify (its image failed or is missing and "
        "no text model answered) but with a title, description or partner category is "
        "classified zero-shot over every category of the taxonomy (model.zero_shot): needs "
        "ENRICH_TAXONOMY, Google's full taxonomy file. It stops at an ancestor below "
        "ENRICH_CONFIDENCE_THRESHOLD, or below 0.5 when that is 0.",
    )
    open_set: bool = Field(
        default=False,
        description="A product classified from its text alone (image failed or missing) is "
        "checked against the zero-shot classifier (model.open_set, service.open_set): a "
        "category the text model never learnt is given zero-shot, a contradiction abstains "
        "to the two answers' common ancestor. Needs ENRICH_TEXT_MODEL_DIR and "
        "ENRICH_ZERO_SHOT.",
    )
    fusion_text_weight: float = Field(
        default=1.0,
        ge=0.0,
        description="How much the text's evidence counts against the image's when both "
        "answer (model.fusion; 0 ignores the text whenever the image answers).",
    )
    runtime: RuntimeChoice = Field(
        default="auto",
        description="What runs the model: auto (the model directory's LiteRT flat buffer, "
        "XNNPACK on the CPU, when it has one and no GPU is visible; else the Keras model), "
        "keras, or litert (refused for a directory without a flat buffer: `enrich "
        "export-litert` writes them). The choice is logged as runtime_selected.",
    )
    inference_threads: int = Field(
        default=0,
        ge=0,
        description="Threads of the LiteRT interpreter (0: every core this process may use). "
        "Fewer leave cores to the pipeline (consume, decode, Redis, produce): see "
        "docs/performance.md for what it changes on this machine.",
    )
    delivery: Literal["at-least-once", "exactly-once"] = Field(
        default="at-least-once", description="Delivery guarantee of the output topic."
    )
    transactional_id: str | None = Field(
        default=None,
        description="exactly-once: this instance's transactional id, stable across restarts so "
        "a restarted instance fences its dead predecessor (default <group_id>-<hostname>; "
        "give each instance on one host its own).",
    )
    batch_max_size: int = Field(
        default=32, ge=1, description="Images per inference batch, at most."
    )
    batch_max_wait_ms: float = Field(
        default=20.0, ge=0, description="Longest wait of an image for its batch to fill."
    )
    max_in_flight: int = Field(
        default=10_000,
        ge=1,
        description="Unacknowledged messages before the consumer pauses, outputs waiting for "
        "their turn behind a slow product included (a crash redoes these, and what was "
        "acknowledged since the last commit). To keep flowing while some images hang it must "
        "cover rate x the longest fetch.",
    )
    max_in_work: int = Field(
        default=2000,
        ge=1,
        description="Messages whose enrichment is not done (image fetch, decode, inference) "
        "before the consumer pauses: this bounds the image bytes held.",
    )
    fetch_concurrency: int = Field(
        default=256,
        ge=1,
        description="Concurrent image downloads. To hide latency it must cover rate x latency "
        "(1,000 images/s at 250 ms per image needs 250).",
    )
    fetch_per_host: int = Field(default=8, ge=1, description="Concurrent downloads per host.")
    fetch_stalled_per_host: int = Field(
        default=256,
        ge=0,
        description="Downloads per host, beyond fetch_per_host, left waiting while the host "
        "answers the ones asked after them (paths that hang on a live host); 0: none.",
    )
    fetch_max_stalled: int = Field(
        default=1024, ge=0, description="Such stalled downloads over all hosts (a socket each)."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Connect timeout.")
    read_timeout_s: float = Field(default=10.0, gt=0, description="Timeout between reads.")
    total_timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one attempt.")
    fetch_retries: int = Field(default=3, ge=0, description="Retries of a failed download.")
    fetch_breaker_timeouts: int = Field(
        default=8, ge=1, description="Timeouts in a row that open a host's circuit."
    )
    fetch_breaker_cooldown_s: float = Field(
        default=10.0, ge=0, description="How long an open circuit fails a host's requests at once."
    )
    max_image_bytes: int = Field(default=20 * 2**20, ge=1, description="Largest image body.")
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="Largest image in pixels (decompression bombs)."
    )
    decode_budget_pixels: int = Field(
        default=64_000_000,
        ge=1,
        description="Pixels (width x height, as the image header declares them; a JPEG's at the "
        "scale its draft decodes) decoded at once over all decode workers, admitted first come "
        "first served: memory is bounded by this budget whatever the images and the core count; "
        "an image over the whole budget is IMAGE_INVALID. The default lets one max_image_pixels "
        "image decode, and holds decoding to about 1.5 GiB for RGBA PNGs, the costliest images "
        "measured at about 24 bytes per budgeted pixel (one 50 M-pixel PNG: +1.2 GiB peak RSS; "
        "docs/reliability.md, Decode memory budget).",
    )
    min_image_side: int = Field(
        default=32,
        ge=1,
        description="Images whose short side is under this many pixels are IMAGE_INVALID "
        "(a 1 x 1 tracking pixel carries no product).",
    )
    allowed_networks: str = Field(
        default="",
        description="Comma-separated networks the address guard lets through (default none), "
        "e.g. 10.20.0.0/16.",
    )
    cache_ttl_s: float = Field(default=7 * 86400, gt=0, description="Image cache TTL.")
    cache_compress: bool = Field(
        default=False,
        description="zlib-compress cached pixels (about 27 % less Redis memory; every hit then "
        "pays a decompression).",
    )
    cache_negative_ttl_s: float = Field(
        default=3600, gt=0, description="TTL of cached permanent failures."
    )
    confidence_threshold: float = Field(
        default=0.0, ge=0, le=1, description="Below it the service answers an ancestor "
        "(LOW_CONFIDENCE)."
    )  # fmt: skip
    top_k: int = Field(default=5, ge=1, description="Alternatives per enrichment.")
    metrics_host: str = Field(default="0.0.0.0", description="Address of /metrics, /healthz.")
    metrics_port: int = Field(default=9464, ge=0, le=65535, description="Port of /metrics.")
    crash_loop_restarts: int = Field(
        default=3,
        ge=1,
        description="Deaths of the process with the same records in work before their "
        "partition is processed one record at a time, and deaths with one record alone in work "
        "before that record is quarantined to the dead-letter topic (service/crashloop.py).",
    )
    shutdown_deadline_s: float = Field(
        default=30.0, gt=0, description="Time to finish in-flight work on SIGTERM or revoke."
    )
    stall_timeout_s: float = Field(
        default=60.0,
        ge=0,
        description="An assigned partition with lag that gives no message this long while not "
        "paused is restarted (seek to its next offset, resume; service.lag); 0 never.",
    )
    lag_interval_s: float = Field(
        default=5.0, gt=0, description="How often the lag of each assigned partition is read."
    )

    @property
    def allowed_network_list(self) -> list[str]:
        """``allowed_networks`` split on commas."""
        return [part.strip() for part in self.allowed_networks.split(",") if part.strip()]

    def fetch_config(self, **overrides: Any) -> "FetchConfig":
        """The image fetcher's configuration from these settings; ``overrides`` win."""
        from service.fetch.fetcher import FetchConfig

        values: dict[str, Any] = {
            "total_connections": self.fetch_concurrency,
            "per_host": self.fetch_per_host,
            "stalled_per_host": self.fetch_stalled_per_host,
            "max_stalled": self.fetch_max_stalled,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "total_timeout_s": self.total_timeout_s,
            "max_bytes": self.max_image_bytes,
            "retries": self.fetch_retries,
            "breaker_timeouts": self.fetch_breaker_timeouts,
            "breaker_cooldown_s": self.fetch_breaker_cooldown_s,
            "allowed_networks": tuple(self.allowed_network_list),
        }
        return FetchConfig(**{**values, **overrides})

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name at least one host:port")
        return value.strip()


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment; `overrides` (CLI flags) win over it.

    Raises `ConfigError` naming every setting that is wrong.
    """
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
