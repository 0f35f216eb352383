"""User-facing errors.

Every mistake a user can make (a missing file, an unknown config key, a value out of range) raises a
:class:`ClpoisonError` whose message is one line naming the thing and the fix. The CLI prints it as
``error: <message>`` and exits with status 2; the library lets it propagate.
"""


class ClpoisonError(Exception):
    """Base class of errors caused by user input; the message is one actionable line."""


class ConfigError(ClpoisonError, ValueError):
    """A configuration key or value is unknown or out of range."""


class DataError(ClpoisonError, ValueError):
    """A dataset file is missing, unreadable, corrupt or inconsistent."""


class TrainingDiverged(ClpoisonError, FloatingPointError):
    """Training produced a non-finite loss or features (too high a learning rate, fp16 overflow); the message names
    the step and the fix, and the last good checkpoint is kept so the run can be resumed or restarted."""
