"""The one exception type users see: a one-line message that names the fix."""


class DataspexError(Exception):
    """Bad input or state, reported to the user as one line (the CLI prints it without a traceback)."""
