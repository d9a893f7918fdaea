"""The small exception family every component maps library errors onto."""

from __future__ import annotations

from pathlib import Path


class KarkhanaError(Exception):
    """Base class of all errors karkhana raises on purpose."""


class ConfigError(KarkhanaError):
    """A configuration file (or value) is invalid.

    The message always names the file, the key path and the problem, so the CLI can print it
    as one line and exit with code 2.
    """

    def __init__(self, source: str | Path, key_path: str, problem: str) -> None:
        self.source = str(source)
        self.key_path = key_path
        self.problem = problem
        where = f"{self.source}: {key_path}" if key_path else self.source
        super().__init__(f"{where}: {problem}")


class ConnectionFailed(KarkhanaError):
    """A broker, PLC or database could not be reached."""


class StoreError(KarkhanaError):
    """The time-series store refused or failed an operation."""
