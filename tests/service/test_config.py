"""Settings come from the environment, CLI overrides win, and bad values are named."""

import os

import pytest

from service.config import load_settings
from service.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without the variables the settings read."""
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith("ENRICH_"):
            monkeypatch.delenv(name)


class TestLoadSettings:
    """load_settings()."""

    def test_defaults(self) -> None:
        """With no environment the defaults work on a developer's machine."""
        settings = load_settings()
        assert ("127.0.0.1:9092", None, "products") == (
            settings.kafka_bootstrap_servers,
            settings.redis_url,
            settings.input_topic,
        )

    @pytest.mark.parametrize(
        ("variable", "value", "field", "expected"),
        [
            (
                "KAFKA_BOOTSTRAP_SERVERS",
                "k1:9092,k2:9092",
                "kafka_bootstrap_servers",
                "k1:9092,k2:9092",
            ),
            ("ENRICH_KAFKA_BOOTSTRAP_SERVERS", "k3:9092", "kafka_bootstrap_servers", "k3:9092"),
            ("REDIS_URL", "redis://r:6379/1", "redis_url", "redis://r:6379/1"),
            ("ENRICH_INPUT_TOPIC", "in", "input_topic", "in"),
            ("ENRICH_TAXONOMY_DEPTH", "3", "taxonomy_depth", 3),
            (
                "ENRICH_KAFKA_CONFIG",
                '{"security.protocol": "SSL"}',
                "kafka_config",
                {"security.protocol": "SSL"},
            ),
        ],
    )
    def test_from_environment(
        self,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
        value: str,
        field: str,
        expected: object,
    ) -> None:
        """Each variable sets its field."""
        monkeypatch.setenv(variable, value)
        assert expected == getattr(load_settings(), field)

    def test_override_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A CLI flag given as an override wins over the environment; None means not given."""
        monkeypatch.setenv("ENRICH_INPUT_TOPIC", "from-env")
        assert "from-flag" == load_settings(input_topic="from-flag").input_topic
        assert "from-env" == load_settings(input_topic=None).input_topic

    @pytest.mark.parametrize(
        ("variable", "value", "named"),
        [
            ("ENRICH_TAXONOMY_DEPTH", "0", "ENRICH_TAXONOMY_DEPTH"),
            ("ENRICH_TAXONOMY_DEPTH", "deep", "ENRICH_TAXONOMY_DEPTH"),
            ("ENRICH_LOG_FORMAT", "xml", "ENRICH_LOG_FORMAT"),
            ("KAFKA_BOOTSTRAP_SERVERS", " ", "ENRICH_KAFKA_BOOTSTRAP_SERVERS"),
        ],
    )
    def test_bad_value_is_named(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
    ) -> None:
        """A value the service cannot use raises ConfigError naming the setting."""
        monkeypatch.setenv(variable, value)
        with pytest.raises(ConfigError, match=named):
            load_settings()

    @pytest.mark.parametrize(
        ("variable", "value", "field", "expected"),
        [
            ("ENRICH_FETCH_CONCURRENCY", "32", "total_connections", 32),
            ("ENRICH_FETCH_PER_HOST", "3", "per_host", 3),
            ("ENRICH_FETCH_STALLED_PER_HOST", "0", "stalled_per_host", 0),
            ("ENRICH_FETCH_MAX_STALLED", "77", "max_stalled", 77),
            ("ENRICH_FETCH_BREAKER_TIMEOUTS", "2", "breaker_timeouts", 2),
            ("ENRICH_READ_TIMEOUT_S", "1.5", "read_timeout_s", 1.5),
            ("ENRICH_ALLOWED_NETWORKS", "10.0.0.0/8, 127.0.0.1/32", "allowed_networks",
             ("10.0.0.0/8", "127.0.0.1/32")),
        ],
    )  # fmt: skip
    def test_fetch_settings_reach_the_fetcher(
        self,
        monkeypatch: pytest.MonkeyPatch,
        variable: str,
        value: str,
        field: str,
        expected: object,
    ) -> None:
        """Each ENRICH_FETCH_* (and timeout) variable sets its field of the fetcher's config."""
        monkeypatch.setenv(variable, value)
        assert expected == getattr(load_settings().fetch_config(), field)
