"""User-facing errors.

Every mistake a user can make (a missing file, an unknown config key, a value out of range) raises a
:class:`ClpoisonError` whose message is one line naming the thing and the fix. The CLI prints it as
``error: <message>`` (its ``cli_message`` when it has one) and exits with status 2; the library lets it propagate.
"""


from __future__ import annotations

from typing import Optional


class ClpoisonError(Exception):
    """Base class of errors caused by user input; the message is one actionable line.

    The message names library arguments (``overwrite=True``), never command-line flags; an error whose fix is a
    flag also carries ``cli_message`` (the same line naming the flag, e.g. ``--overwrite``), which the CLI prints
    instead."""

    def __init__(self, *args: object, cli: Optional[str] = None) -> None:
        super().__init__(*args)
        self.cli_message = cli


class ConfigError(ClpoisonError, ValueError):
    """A configuration key or value is unknown or out of range."""


class DataError(ClpoisonError, ValueError):
    """A dataset file is missing, unreadable, corrupt or inconsistent."""


class TrainingDiverged(ClpoisonError, FloatingPointError):
    """Training produced a non-finite loss or features (too high a learning rate, fp16 overflow); the message names
    the step and the fix, and the last good checkpoint is kept so the run can be resumed or restarted."""
