"""The weights tool's one error type and its one-line formatting helpers."""

from __future__ import annotations

from collections.abc import Sequence

SHOW = 5


class ToolError(Exception):
    """A one-line reason for a failed command (printed, exit status 1)."""



def one_line(err: object) -> str:
    return " ".join(str(err).split())


def listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOW])
    return shown + (f", ... (+{len(keys) - SHOW} more)" if len(keys) > SHOW else "")


