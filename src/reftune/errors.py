"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a path, a config field, a data file). The message says what to fix."""


class ConfigError(UserError):
    """A config field is unknown, has the wrong type or an invalid value; the message names the field."""


class DataError(UserError):
    """A data file is malformed; the message names the file, the line (1-based) and the field."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, field: str | None = None):
        where = ":".join(str(p) for p in (path, line) if p is not None)
        prefix = f"{where}: " if where else ""
        suffix = f" (field '{field}')" if field else ""
        super().__init__(f"{prefix}{message}{suffix}")
        self.path, self.line, self.field = path, line, field


class TrainingDiverged(UserError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""
