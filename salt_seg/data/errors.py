"""The data layer's one error type, and the words for the file system's refusals.

Every problem with a user's file is a :class:`DataError`: a ``ValueError`` (so the CLI prints it as one line and
exits 2) whose message starts with the file it is about. Messages never quote patient identifiers read from a
header (names, IDs, dates); they name the file the user gave and the problem.
"""

from __future__ import annotations

import errno
import re
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


#: errno -> the cause in words, for errors of the place a command writes to (not of the program).
STORAGE_ERRNOS: dict[int, str] = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
_RUST_OS_ERROR = re.compile(r"os error (\d+)")
_RUST_PATH = re.compile(r'at path "([^"]+)"')


def storage_error(exc: BaseException) -> str | None:
    """``PATH: cause`` when ``exc`` is a refusal of the file system (read-only, full, no permission), else None.

    Covers ``OSError`` with one of :data:`STORAGE_ERRNOS` and safetensors' ``SafetensorError``, which wraps the
    OS error in its message (``... No space left on device (os error 28) at path "..."``), also when a library
    re-raised it as another type (the chain of causes is followed).
    """
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code: int | None = None
        path: str | None = None
        if isinstance(cur, OSError):
            code, path = cur.errno, cur.filename
        elif type(cur).__name__ == "SafetensorError":
            found = _RUST_OS_ERROR.search(str(cur))
            code = int(found.group(1)) if found else None
            where = _RUST_PATH.search(str(cur))
            path = where.group(1) if where else None
        if code in STORAGE_ERRNOS:
            cause = STORAGE_ERRNOS[code]
            return f"{path}: {cause}" if path else cause
        cur = cur.__cause__ or cur.__context__
    return None
