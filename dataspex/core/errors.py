"""The one exception type users see: a one-line message that names the fix."""


class DataspexError(Exception):
    """Bad input or state, reported to the user as one line (the CLI prints it without a traceback)."""


class DataspexInputError(DataspexError, ValueError):
    """Bad estimator or solver input; also a ValueError so scikit-learn style callers can catch it."""
