"""Where towerlite keeps its cache: $TOWERLITE_HOME, default ~/.cache/towerlite."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import TowerliteError


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
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TowerliteError(
            f"cache directory {root} is not writable ({exc.strerror or exc}); "
            "set TOWERLITE_HOME to a writable folder"
        ) from exc
    return root
