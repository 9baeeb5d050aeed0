"""Errors whose message is meant for the user.

Every stage raises a subclass of :class:`AnywordError` for bad input or a missing resource. The message says what
is wrong and what to do; the CLI prints it without a traceback and exits with status 2, the demo shows it as a
warning and keeps serving. Any other exception is a bug.
"""

from __future__ import annotations


class AnywordError(Exception):
    """Base class: a problem the user can fix (input, configuration, missing files)."""


class CaptionError(AnywordError):
    """The caption cannot be used: empty, binary, too long, not English."""


class NoConceptError(CaptionError):
    """The caption names nothing that could be segmented."""


class TokenWindowError(AnywordError):
    """A concept lies past the text encoder's token window."""


class ImageError(AnywordError):
    """The image cannot be read or is too large."""


class ModelUnavailableError(AnywordError):
    """Model weights are missing and cannot be downloaded (offline, no access, bad checksum)."""


class ParserUnavailableError(AnywordError):
    """A caption parser cannot run (spaCy model not installed, LLM failure without fallback)."""


class SettingsError(AnywordError, ValueError):
    """A setting is out of its range (seed, steps, threshold typed by a user)."""


class OutputError(AnywordError):
    """The output folder cannot receive results (a file, not empty, not writable)."""
