"""The one exception type for a user's mistake: the CLI prints it on one line and exits with code 2."""

from __future__ import annotations


class SpaceError(ValueError):
    """Bad input, with the YAML key (or path, or flag) it concerns, and what is allowed."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
