"""structlog configuration: JSON lines with bound context."""

import json

import pytest
import structlog

from service.logging import configure_logging


@pytest.fixture(autouse=True)
def _reset_structlog() -> None:
    """Each test starts from structlog's defaults and clean context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


class TestConfigureLogging:
    """configure_logging()."""

    def test_json_lines_carry_bound_context(self, capsys: pytest.CaptureFixture[str]) -> None:
        """In JSON mode each event is one JSON object with the bound Kafka context merged in."""
        configure_logging("INFO", "json")
        structlog.contextvars.bind_contextvars(topic="products", partition=2, offset=41)
        structlog.get_logger().info("batch_done", products=8)
        line = json.loads(capsys.readouterr().err.strip())
        assert ("batch_done", "info", "products", 2, 41, 8) == (
            line["event"],
            line["level"],
            line["topic"],
            line["partition"],
            line["offset"],
            line["products"],
        )

    def test_level_filters(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Events below the configured level are not written."""
        configure_logging("WARNING", "json")
        structlog.get_logger().info("quiet")
        structlog.get_logger().warning("loud")
        events = [json.loads(x)["event"] for x in capsys.readouterr().err.splitlines()]
        assert ["loud"] == events

    def test_unknown_level(self) -> None:
        """An unknown level name is refused."""
        with pytest.raises(ValueError, match="unknown log level"):
            configure_logging("CHATTY", "json")
