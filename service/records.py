"""Input products and output enrichments as the Avro contract spells them.

:func:`parse_product` turns a decoded ``Product`` record into a :class:`Product`, or says
why it is ``INVALID_INPUT``; :func:`enrichment` builds the ``CategoryEnrichment`` record for
any outcome, so every product gets an answer with a status.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from model.decode import Prediction
from model.text_features import TextFields

__all__ = [
    "STATUSES",
    "Decision",
    "ImageInfo",
    "Product",
    "Status",
    "enrichment",
    "low_confidence_reason",
    "parse_product",
    "signal_entry",
]

Status = Literal[
    "CLASSIFIED", "LOW_CONFIDENCE", "IMAGE_UNAVAILABLE", "IMAGE_INVALID", "INVALID_INPUT"
]
STATUSES: tuple[Status, ...] = (
    "CLASSIFIED",
    "LOW_CONFIDENCE",
    "IMAGE_UNAVAILABLE",
    "IMAGE_INVALID",
    "INVALID_INPUT",
)
MAX_URL_LENGTH = 4096
MAX_KEY_BYTES = 1024
"""Longest ``product_id`` in UTF-8 bytes: it keys the output, so it cannot be cut."""
MAX_PARTNER_ID_CHARS = 256
"""Longest ``partner_id`` copied into an output."""
MAX_ERROR_CHARS = 1000
"""Longest ``error`` text in an output."""
MAX_TEXT_CHARS = 8000
"""Longest title, description or partner category kept from an input (the text model reads
at most 4,000 characters of each)."""

Decision = Literal["IMAGE", "TEXT", "FUSED", "NONE"]
"""Which signals an enrichment's category came from (``decided_by``, contract 1.1.0)."""


@dataclass(frozen=True)
class Product:
    """The fields of a ``Product`` the service uses."""

    product_id: str
    partner_id: str
    image_url: str | None
    updated_at: dt.datetime
    text: TextFields = dataclasses.field(default_factory=TextFields)
    """Title, description and partner category (each cut to :data:`MAX_TEXT_CHARS`)."""
    image_error: str | None = None
    """Why the main image cannot be tried at all (no URL, not an http(s) URL); the product
    may still be classified from its text."""

    @property
    def has_text(self) -> bool:
        """Whether any of title, description or partner category has non-blank text."""
        return any((value or "").strip() for _, value in self.text.items())


@dataclass(frozen=True)
class ImageInfo:
    """The ``image`` field of an enrichment: which URL, its content hash, cache or not."""

    url: str
    sha256: str | None = None
    from_cache: bool = False


def _utc(value: Any) -> dt.datetime:
    """A timestamp-millis value (datetime or int millis) as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.fromtimestamp(int(value) / 1000, tz=dt.UTC)


def parse_product(record: Mapping[str, Any]) -> tuple[Product, str | None]:
    """The product and, when it cannot be classified from its input, the reason why.

    Raises ``ValueError`` when no output can be keyed by it (``product_id`` over
    :data:`MAX_KEY_BYTES`): that record belongs in the dead-letter topic. A ``partner_id``
    over :data:`MAX_PARTNER_ID_CHARS` is cut to that length and the product is
    ``INVALID_INPUT``, so its output stays small.
    """
    product_id = str(record["product_id"])
    if len(product_id.encode()) > MAX_KEY_BYTES:
        raise ValueError(
            f"product_id is {len(product_id.encode())} bytes, over the {MAX_KEY_BYTES} that "
            "key an output"
        )
    partner_id = str(record["partner_id"])
    product = Product(
        product_id=product_id,
        partner_id=partner_id[:MAX_PARTNER_ID_CHARS],
        image_url=record.get("image_url"),
        updated_at=_utc(record["updated_at"]),
        text=TextFields(*(_text(record.get(name)) for name in _TEXT_FIELDS)),
    )
    if not product.product_id.strip():
        return product, "product_id is empty"
    if len(partner_id) > MAX_PARTNER_ID_CHARS:
        return product, (
            f"partner_id is {len(partner_id)} characters, over {MAX_PARTNER_ID_CHARS} (cut in "
            "this record)"
        )
    reason = _image_url_problem(record, product)
    if reason is not None:
        product = dataclasses.replace(product, image_error=reason)
    return product, reason


_TEXT_FIELDS = ("title", "description", "partner_category")


def _text(value: Any) -> str | None:
    """An optional text field, cut to :data:`MAX_TEXT_CHARS`."""
    return None if value is None else str(value)[:MAX_TEXT_CHARS]


def _image_url_problem(record: Mapping[str, Any], product: Product) -> str | None:
    """Why the product's main image cannot be tried, or None."""
    url = (product.image_url or "").strip()
    if not url:
        extra = record.get("additional_image_urls") or []
        reason = "image_url is missing"
        if extra:
            reason += f" (additional_image_urls has {len(extra)}; the main image is classified)"
        return reason
    if len(url) > MAX_URL_LENGTH:
        return f"image_url is longer than {MAX_URL_LENGTH} characters"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"image_url is not a URL: {exc}"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return f"image_url must be an http(s) URL with a host, got {url[:200]!r}"
    if parts.username is not None or parts.password is not None:
        return "image_url carries credentials (user:password@); refused"
    return None


def low_confidence_reason(prediction: Prediction) -> str:
    """Why a LOW_CONFIDENCE answer is an ancestor and not a leaf, in words."""
    reason = "no leaf cleared the confidence threshold"
    if prediction.alternatives:
        best = prediction.alternatives[0]
        reason = (
            f"the best leaf ({best.path_string}, {best.probability:.2f}) is under the "
            "confidence threshold"
        )
    if prediction.path:
        return (
            f"{reason}; category is its deepest ancestor that cleared it "
            f"({prediction.path_string}, {prediction.confidence:.2f})"
        )
    return f"{reason}; no ancestor cleared it either"


def enrichment(
    product: Product,
    *,
    status: Status,
    model: Mapping[str, Any],
    source: tuple[str, int, int],
    error: str | None = None,
    prediction: Prediction | None = None,
    image: ImageInfo | None = None,
    processed_at: dt.datetime | None = None,
    decided_by: Decision | None = None,
    signals: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``CategoryEnrichment`` record of one product.

    Without ``decided_by`` and ``signals`` the record is an image-only service's: decided by
    the IMAGE when there is a prediction (NONE otherwise), with the image's own signal entry.
    """
    topic, partition, offset = source
    predicted = prediction.to_record() if prediction is not None else None
    if decided_by is None:
        decided_by = "IMAGE" if prediction is not None else "NONE"
    if signals is None:
        signals = [_image_signal(status, prediction, model, error)]
    if error is None and prediction is not None and status == "LOW_CONFIDENCE":
        error = low_confidence_reason(prediction)
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    return {
        "product_id": product.product_id,
        "partner_id": product.partner_id,
        "status": status,
        "error": error,
        "category": predicted["category"] if predicted else None,
        "alternatives": predicted["alternatives"] if predicted else [],
        "model": dict(model),
        "image": (
            {"url": image.url, "sha256": image.sha256, "from_cache": image.from_cache}
            if image is not None
            else None
        ),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "event_time": product.updated_at,
        "processed_at": processed_at or dt.datetime.now(tz=dt.UTC),
        "decided_by": decided_by,
        "signals": [dict(entry) for entry in signals],
    }


def signal_entry(
    signal: Literal["IMAGE", "TEXT"],
    outcome: Literal["USED", "ABSTAINED", "FAILED", "MISSING"],
    *,
    prediction: Prediction | None = None,
    model_version: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """One ``signals`` entry: what one signal said on its own (contract 1.1.0)."""
    if error is not None and len(error) > MAX_ERROR_CHARS:
        error = error[: MAX_ERROR_CHARS - 1] + "…"
    return {
        "signal": signal,
        "outcome": outcome,
        "category_id": prediction.category_id if prediction is not None else None,
        "path_string": prediction.path_string if prediction is not None else None,
        "confidence": prediction.confidence if prediction is not None else None,
        "model_version": model_version,
        "error": error,
    }


def _image_signal(
    status: Status, prediction: Prediction | None, model: Mapping[str, Any], error: str | None
) -> dict[str, Any]:
    """The image's entry in an image-only record."""
    version = model.get("version")
    if prediction is not None:
        return signal_entry("IMAGE", "USED", prediction=prediction, model_version=version)
    outcome: Literal["FAILED", "MISSING"] = "FAILED"
    if status == "INVALID_INPUT":
        outcome = "MISSING"
    return signal_entry("IMAGE", outcome, error=error)
