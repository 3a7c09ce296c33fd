"""Errors whose message is the whole story: `advwm.run` prints them as one line, without a traceback."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """The composed config asks for something advwm cannot do; the message says what to change."""
