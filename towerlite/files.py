"""Small file helpers every stage shares: a writable-folder check before long work, and
atomic JSON writes (a temp file renamed into place, so a reader never sees half a report)."""

from __future__ import annotations

import json
import os
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
