"""User-facing errors.

Every problem a user can fix (bad CSV row, missing image, unsafe checkpoint...) is raised as a
``DermkitError`` whose message says what is wrong, where, and how to fix it. The CLI prints the
message and exits with status 2 instead of showing a traceback.
"""


class DermkitError(Exception):
    """A problem the user can fix; the message says which row/file and what to do."""


class DataError(DermkitError):
    """Invalid dataset: missing column, missing/unreadable image, unknown label, leakage..."""


class ModelError(DermkitError):
    """Invalid or unsafe model/checkpoint."""


class ConfigError(DermkitError):
    """Invalid configuration value."""
