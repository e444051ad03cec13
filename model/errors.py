"""The project's exceptions: one root, one subclass per kind of failure a caller may handle."""


class EnrichError(Exception):
    """Root of every error this project raises on purpose."""


class TaxonomyError(EnrichError):
    """A taxonomy file cannot be parsed or is inconsistent; the message names the file and line."""


class InvalidImageError(EnrichError):
    """Bytes are not an image the model can use: not an image, corrupt, or too many pixels."""


class ModelError(EnrichError):
    """A model cannot be built, loaded or used as asked."""
