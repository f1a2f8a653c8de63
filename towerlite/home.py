"""Where towerlite keeps its cache: $TOWERLITE_HOME, default ~/.cache/towerlite."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TowerliteError
from .files import ensure_writable_dir


def home() -> Path:
    """The cache root; not created here (see `writable_home`)."""
    env = os.environ.get("TOWERLITE_HOME")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser().resolve() / "towerlite"


def writable_home() -> Path:
    """The cache root, created if needed; a clear error when it cannot be written."""
    root = home()
    try:
        return ensure_writable_dir(root, "cache directory")
    except TowerliteError as exc:
        raise TowerliteError(f"{exc}; set TOWERLITE_HOME to a writable folder") from exc
