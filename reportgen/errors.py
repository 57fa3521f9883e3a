"""Errors that reach the user as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message and exits with status 2."""


class GateFailed(Exception):
    """A quality gate (``--fail-under``, ``--fail-on``) failed after the report was written."""


def one_line(exc: BaseException, width: int = 240) -> str:
    """An exception's message on one line, cut to ``width`` characters, for user errors
    that wrap a runtime's (often multi-line) complaint."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= width else text[: width - 3] + "..."


_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters (escape sequences that would
    recolour, move the cursor or retitle the window, line breaks, bells) are shown as
    ``\\xNN``.  File names, class names and JSON values reach messages from disk."""
    return text.translate(_CONTROL)
