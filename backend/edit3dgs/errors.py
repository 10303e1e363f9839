"""Errors a user can cause, each naming the file, what was expected and what was found."""

from __future__ import annotations

import os


class Edit3DGSError(Exception):
    """A problem with the user's input, reported as one line.

    ``path`` names the file (or option) at fault, ``expected`` what should be
    there and ``found`` what is there. ``str(err)`` is the one-line report.
    """

    def __init__(self, path: os.PathLike | str | None, expected: str, found: str):
        self.path = str(path) if path is not None else None
        self.expected = expected
        self.found = found
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{where}expected {self.expected}, found {self.found}"


class CancelledError(Exception):
    """The user cancelled a running job (Ctrl-C, the Cancel button)."""
