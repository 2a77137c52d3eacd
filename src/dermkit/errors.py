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


def excerpt(value, limit: int = 80) -> str:
    """How a message quotes a value the user gave: at most ``limit`` characters of its repr (a
    longer text ends in ``...`` and says how long it is), and a missing value (None, NaN, an empty
    or blank text) as ``empty``, never as the ``nan`` it became. Bounded in time too: a nested or
    self-referencing value (a YAML alias) is shown a few levels and items deep."""
    import reprlib

    if value is None or (isinstance(value, str) and not value.strip()) or _is_nan(value):
        return "empty"
    if type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0:
        value = value.item()  # np.int64(3) -> 3
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}... ({len(value):,} characters)"
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxdict, short.maxset = 3, 6, 6, 6, 6
    short.maxstring = short.maxother = short.maxlong = limit
    shown = short.repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _is_nan(value) -> bool:
    if type(value).__name__ == "NAType":  # pandas.NA, without importing pandas here
        return True
    if not (isinstance(value, float) or type(value).__module__ == "numpy" and getattr(value, "ndim", 1) == 0):
        return False
    try:
        return bool(value != value)
    except (TypeError, ValueError):
        return False
