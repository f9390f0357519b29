"""The data layer's one error type.

Every problem with a user's file is a :class:`DataError`: a ``ValueError`` (so the CLI prints it as one line and
exits 2) whose message starts with the file it is about. Messages never quote patient identifiers read from a
header (names, IDs, dates); they name the file the user gave and the problem.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A file or dataset that cannot be used, with the path and the problem in one line.

    Attributes:
        path: the offending file or folder (``None`` when the problem is not tied to one file).
        problem: the problem, without the path.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = " ".join(str(problem).split())  # always one line
        super().__init__(self.problem if path is None else f"{path}: {self.problem}")
