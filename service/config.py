"""The service's settings: one typed object read from environment variables (and CLI flags).

Every setting can be given as `ENRICH_<NAME>` (e.g. `ENRICH_INPUT_TOPIC`). Two follow the
common names as well, so the service and its tests find the same services:
`KAFKA_BOOTSTRAP_SERVERS` and `REDIS_URL`.
"""

from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.errors import ConfigError
from service.logging import LogFormat

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
