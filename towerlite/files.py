"""Small file helpers every stage shares: a writable-folder check before long work, atomic
JSON writes (a temp file renamed into place, so a reader never sees half a report) and atomic
folder swaps (a staging folder renamed into place)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import TowerliteError


def ensure_writable_dir(folder: Path, what: str = "output folder") -> Path:
    """Create `folder` if needed and prove it can be written; a clear error otherwise."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TowerliteError(f"{what} {folder} is not writable ({exc.strerror or exc})") from exc
    return folder


def write_text_atomic(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def write_json_atomic(path: Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1))


def replace_dir(staging: Path, final: Path) -> Path:
    """Rename the fully built `staging` folder to `final`; returns `final`.

    A reader never sees a half-written folder: it finds the previous `final`, nothing for the
    instant between two renames, or the complete new one. The previous folder is moved aside
    first (to `.NAME.old` beside it; a leftover of a killed run is cleared before) and deleted
    after. `staging` must be on the same file system as `final` (a sibling, typically)."""
    staging, final = Path(staging), Path(final)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
