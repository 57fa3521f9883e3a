"""Errors that reach the user as one line, never as a traceback."""


class UserError(Exception):
    """Bad input from the user: the CLI prints the message and exits with status 2."""


class GateFailed(Exception):
    """A quality gate (``--fail-under``, ``--fail-on``) failed after the report was written."""
