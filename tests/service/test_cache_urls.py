"""normalise_url, and the cache keys it makes equal."""

import pytest

from service.cache import ImageCache
from service.cache_urls import normalise_url
from service.stores import MemoryStore
from tests.support.cache import SIZE


class TestNormaliseUrl:
    """normalise_url()."""

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("HTTP://Example.COM/Path/Img.JPG", "http://example.com/Path/Img.JPG"),
            ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
            ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
            ("http://example.com:443/a.jpg", "http://example.com:443/a.jpg"),
            ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
            ("http://example.com:/a.jpg", "http://example.com/a.jpg"),
            ("http://example.com/a.jpg#zoom", "http://example.com/a.jpg"),
            ("http://example.com/a.jpg?w=2&h=1", "http://example.com/a.jpg?w=2&h=1"),
            ("http://example.com/a.jpg?h=1&w=2", "http://example.com/a.jpg?h=1&w=2"),
            ("http://example.com/%7euser/a%2Db%5f.jpg", "http://example.com/~user/a-b_.jpg"),
            ("http://example.com/a%2fb%3f.jpg", "http://example.com/a%2Fb%3F.jpg"),
            ("http://example.com/a?q=%e2%82%ac+x", "http://example.com/a?q=%E2%82%AC+x"),
            ("http://Example.com", "http://example.com/"),
            ("http://User:PW@Example.com:80/a", "http://User:PW@example.com/a"),
            ("http://[2001:DB8::1]:80/a", "http://[2001:db8::1]/a"),
            ("http://[2001:DB8::1]:8080/a", "http://[2001:db8::1]:8080/a"),
            ("http://[::1/a#f", "http://[::1/a"),
        ],
    )
    def test_table(self, url: str, expected: str) -> None:
        """Scheme, host, default port, fragment and escapes are normalised; the rest is kept."""
        assert expected == normalise_url(url)

    def test_equivalent_urls_share_a_key(self, memory: MemoryStore) -> None:
        """Two spellings of one URL name the same cache entry."""
        cache = ImageCache(memory, image_size=SIZE)
        assert cache.url_key("HTTP://Img.Example.com:80/%7Ea.jpg#x") == cache.url_key(
            "http://img.example.com/~a.jpg"
        )

    def test_query_order_matters(self, memory: MemoryStore) -> None:
        """Reordered query parameters are a different URL."""
        cache = ImageCache(memory, image_size=SIZE)
        assert cache.url_key("http://e.com/a?x=1&y=2") != cache.url_key("http://e.com/a?y=2&x=1")
