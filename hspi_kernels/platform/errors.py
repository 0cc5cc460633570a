"""How the project's jobs report a failure they catch: one line, no traceback."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``"TypeName: first line of the message"`` (the message cut at ``limit`` characters)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit] if text else ''}"
