"""Safe extraction of zip archives (typically a zipped DICOM series).

A member may not land outside the target folder (absolute names, ``..`` components, symbolic links and
Windows drive letters are refused) and the total size is capped both by the sizes the archive declares and by
the bytes actually written, so a zip bomb with lying headers stops at the cap too. Before anything is written,
the declared sizes are checked against the cap and against a compression-ratio cap: a zip declaring more than
``max_ratio`` times its own size (above ``ratio_floor`` bytes) is a zip bomb, not a DICOM series. The CLI's
readers and the viewer's uploads both go through :func:`safe_extract_zip`.
"""

from __future__ import annotations

import logging
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from salt_seg.data.errors import DataError

logger = logging.getLogger(__name__)

#: default cap on the total uncompressed size of an archive, in bytes (4 GiB).
DEFAULT_MAX_ZIP_BYTES = 4 * 1024**3
#: default cap on the number of members.
DEFAULT_MAX_ZIP_MEMBERS = 100_000
#: default cap on declared uncompressed size / archive size (medical images deflate 2-10x; bombs 1000x).
DEFAULT_MAX_ZIP_RATIO = 100
#: archives declaring at most this many bytes skip the ratio check (64 MiB: small, sparse masks compress well).
DEFAULT_ZIP_RATIO_FLOOR = 64 * 1024**2
_CHUNK = 1 << 20


def _member_target(dest: Path, name: str, zip_path: Path) -> Path | None:
    """Where a member goes, or ``None`` for a folder entry; refuses names that escape ``dest``."""
    clean = name.replace("\\", "/")
    if clean.endswith("/"):
        return None
    parts = PurePosixPath(clean).parts
    if clean.startswith("/") or (parts and ":" in parts[0]) or ".." in parts or not parts:
        raise DataError(
            zip_path, f"unsafe member path {name!r} in zip (absolute or outside the archive folder)"
        )
    target = (dest / Path(*parts)).resolve()
    if not target.is_relative_to(dest):
        raise DataError(zip_path, f"unsafe member path {name!r} in zip (resolves outside the target folder)")
    return target


def safe_extract_zip(
    zip_path: str | Path,
    dest: str | Path,
    *,
    max_bytes: int = DEFAULT_MAX_ZIP_BYTES,
    max_members: int = DEFAULT_MAX_ZIP_MEMBERS,
    max_ratio: float = DEFAULT_MAX_ZIP_RATIO,
    ratio_floor: int = DEFAULT_ZIP_RATIO_FLOOR,
) -> list[Path]:
    """Extract ``zip_path`` into the existing folder ``dest``.

    Args:
        zip_path: the archive.
        dest: an existing (normally empty, temporary) folder.
        max_bytes: cap on the total uncompressed size in bytes.
        max_members: cap on the number of members.
        max_ratio: cap on declared uncompressed bytes per archive byte (checked before extraction).
        ratio_floor: declared totals up to this many bytes are not ratio-checked.

    Returns:
        The extracted file paths.

    Raises:
        DataError: not a zip file, an unsafe member name or symlink, too many members, or too large. On error,
            everything already extracted is removed again.
    """
    zip_path = Path(zip_path)
    dest = Path(dest).resolve()
    if not zip_path.is_file():
        raise FileNotFoundError(f"{zip_path}: no such file")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(zip_path, f"not a readable zip archive ({exc})") from None
    written: list[Path] = []
    created: list[Path] = []
    try:
        with zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise DataError(
                    zip_path, f"zip holds {len(infos)} members, more than the cap of {max_members}"
                )
            declared = sum(i.file_size for i in infos)
            if declared > max_bytes:
                raise DataError(
                    zip_path,
                    f"zip declares {declared} bytes unpacked, more than the cap of {max_bytes} bytes; "
                    "refused before extracting anything",
                )
            packed = max(zip_path.stat().st_size, 1)
            if declared > ratio_floor and declared > max_ratio * packed:
                raise DataError(
                    zip_path,
                    f"zip declares {declared} bytes unpacked from {packed} bytes ({declared / packed:.0f}:1, "
                    f"more than the cap of {max_ratio:g}:1; a zip bomb?); refused before extracting anything",
                )
            targets = []
            for info in infos:
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise DataError(zip_path, f"zip member {info.filename!r} is a symbolic link; refused")
                targets.append((info, _member_target(dest, info.filename, zip_path)))
            total = 0
            for info, target in targets:
                if target is None:
                    continue
                for parent in reversed(target.relative_to(dest).parents[:-1]):
                    if not (dest / parent).exists():
                        (dest / parent).mkdir()
                        created.append(dest / parent)
                with zf.open(info) as src, open(target, "wb") as out:
                    written.append(target)
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise DataError(
                                zip_path, f"zip unpacks to more than the cap of {max_bytes} bytes; stopped"
                            )
                        out.write(chunk)
    except zipfile.BadZipFile as exc:
        _remove(written, created)
        raise DataError(zip_path, f"corrupt zip archive ({exc})") from None
    except BaseException:
        _remove(written, created)
        raise
    logger.debug("extracted %d files from %s", len(written), zip_path.name)
    return written


def _remove(files: list[Path], folders: list[Path]) -> None:
    """Undo a partial extraction: the files written, then the folders created (deepest first)."""
    for p in files:
        p.unlink(missing_ok=True)
    for d in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        shutil.rmtree(d, ignore_errors=True)
