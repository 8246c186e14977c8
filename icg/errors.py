"""The exception hierarchy. Every error a user can cause is an ``IcgError`` with a message that names
the file (or model, or setting) and the reason; front ends print ``str(err)`` and never a traceback."""

from __future__ import annotations


class IcgError(Exception):
    """Base class for errors the user can act on."""


class ConfigError(IcgError, ValueError):
    """A configuration value or file is invalid."""


class ModelNotFound(IcgError, LookupError):
    """A model id or path names nothing that exists."""


class CheckpointError(IcgError):
    """A checkpoint file is unreadable, of an unknown layout, or does not fit its model."""


class UnsafePickleError(CheckpointError):
    """A pickle tried to reference a global (class or function); it was refused, not executed."""


class VocabularyError(IcgError, ValueError):
    """The SBG vocabulary or category hierarchy is malformed."""


class ImageError(IcgError):
    """An image file can't be opened or decoded."""


class DownloadError(IcgError):
    """A download failed, was refused offline, or did not match its checksum."""
