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
