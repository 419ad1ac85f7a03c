"""Domain errors: each becomes a one-line CLI message and a non-zero exit code."""

from __future__ import annotations


class VicapError(Exception):
    """Base of every error a user can cause or fix; never shown as a traceback."""

    exit_code: int = 1


class ConfigError(VicapError):
    """Settings are invalid (bad URL, unwritable home, unknown value)."""


class StoreError(VicapError):
    """The SQL store cannot be reached or its schema is behind the code."""


class NotFoundError(VicapError):
    """A named data set, model or job does not exist."""


class InputError(VicapError):
    """A user-supplied file, folder or option is malformed."""


class DatasetFormatError(InputError):
    """A data set file is malformed; the message names the file and the entry."""


class ImageError(InputError):
    """An image cannot be decoded or is unsafe to decode; the message says why."""


class UploadTooLargeError(ImageError):
    """An uploaded photo over the web view's byte limit (HTTP 413)."""


class EngineUnavailableError(VicapError):
    """An engine cannot run on this machine (no such instructions, no GPU, a CPU-only engine on a GPU)."""


class WeightsMissingError(VicapError):
    """Model weights are not on disk; the message says how to provide them."""


class UnknownNameError(VicapError):
    """An unknown family, backbone, engine or format; the message lists valid names."""

    def __init__(self, kind: str, name: str, valid: list[str] | tuple[str, ...]) -> None:
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(sorted(valid))}")


class ArtifactDigestError(VicapError):
    """A model's downloaded file is missing or does not hash to the digest the store recorded; it is not used."""
