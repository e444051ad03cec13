"""The test image server itself: real HTTP on 127.0.0.1, files as they are, scripts in order."""

import http.client
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.image_server import Behaviour, ImageServer

pytestmark = pytest.mark.integration


def _get(url: str) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


class TestImageServer:
    """ImageServer."""

    def test_serves_shared_photo(self, image_server: ImageServer, shared_data: Path) -> None:
        """A shared photo comes back byte for byte as image/jpeg, and the hit is counted."""
        root = shared_data / "product-images"
        relative = min(root.glob("grocery/train/*/*/*.jpg")).relative_to(root).as_posix()
        status, body, headers = _get(image_server.url_for(relative))
        assert (200, "image/jpeg") == (status, headers["Content-Type"])
        assert (shared_data / "product-images" / relative).read_bytes() == body
        assert 1 == image_server.hits[f"/images/{relative}"]

    def test_missing_file_is_404(self, image_server: ImageServer) -> None:
        """A path with no file answers 404."""
        assert 404 == _get(image_server.url_for("nope/none.jpg"))[0]

    def test_no_escape_from_root(self, image_server: ImageServer) -> None:
        """A path climbing out of the root answers 404."""
        assert 404 == _get(f"{image_server.base_url}/images/..%2F..%2Fetc%2Fpasswd")[0]

    def test_script_answers_in_order_then_repeats(self, image_server: ImageServer) -> None:
        """A script answers with its behaviours in turn and repeats the last one."""
        url = image_server.script(
            "flaky",
            Behaviour(status=503, headers={"Retry-After": "1"}),
            Behaviour(status=200, body=b"ok", content_type="text/plain"),
        )
        assert [503, 200, 200] == [_get(url)[0] for _ in range(3)]
        assert 3 == image_server.hits["/scripted/flaky"]

    def test_redirect(self, image_server: ImageServer) -> None:
        """A redirect behaviour sends the client to its Location."""
        target = image_server.script("target", Behaviour(body=b"final", content_type="text/plain"))
        url = image_server.script("hop", Behaviour(redirect_to=target))
        status, body, _ = _get(url)
        assert (200, b"final") == (status, body)

    def test_reset_mid_body(self, image_server: ImageServer) -> None:
        """A reset behaviour sends part of the body and drops the connection."""
        url = image_server.script("reset", Behaviour(body=b"x" * 100_000, reset_after_bytes=10))
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            _get(url)

    def test_latency_is_added(self, shared_data: Path) -> None:
        """A server made with latency_s answers no sooner than that."""
        server = ImageServer(shared_data / "product-images", latency_s=0.2).start()
        try:
            started = time.monotonic()
            _get(server.url_for("nope.jpg"))
            assert time.monotonic() - started >= 0.2
        finally:
            server.stop()
