"""The three lines of a model's config.pbtxt that say which release it serves, rewritten in
place (the rest of the file, comments included, is left as deploy wrote it):

    versioned model    version_policy: { specific: { versions: [ R ] } }   (both during a switch)
    ensemble           model_version: R                                    (in every step)
    fused model        parameters { key: "RELEASE" value: { string_value: "R" } }
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

_POLICY = re.compile(r"^version_policy:.*$", re.M)
_STEP_VERSION = re.compile(r"(model_version:\s*)-?\d+")
_RELEASE_PARAM = re.compile(r'parameters \{ key: "RELEASE" value: \{ string_value: "\d+" \} \}')


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a server (re)starting reads the old file or the new, never half


def policy_line(versions: Sequence[int]) -> str:
    return f"version_policy: {{ specific: {{ versions: [ {', '.join(map(str, versions))} ] }} }}"


def set_versions(config: Path, versions: Sequence[int]) -> None:
    """A versioned model serves exactly `versions` (a config from before releases, with no
    policy line or the newest-version one, gets the line)."""
    text = config.read_text()
    line = policy_line(sorted(set(versions)))
    text = _POLICY.sub(line, text, count=1) if _POLICY.search(text) else \
        text.rstrip("\n") + "\n" + line + "\n"
    _write(config, text)


def served_versions(config: Path) -> list[int] | None:
    """The versions a model's policy names (None: no specific policy, Triton's newest)."""
    match = re.search(r"^version_policy:\s*\{\s*specific:\s*\{\s*versions:\s*\[([^\]]*)\]",
                      config.read_text(), re.M)
    return [int(v) for v in match.group(1).replace(",", " ").split()] if match else None


def pin_steps(config: Path, release: int) -> None:
    """Every step of an ensemble asks for version `release`."""
    _write(config, _STEP_VERSION.sub(rf"\g<1>{release}", config.read_text()))


def pinned_release(config: Path) -> int | None:
    """The release an ensemble's steps name (None: the newest of each, a pre-release config)."""
    found = {int(v) for v in re.findall(r"model_version:\s*(-?\d+)", config.read_text())}
    if len(found) > 1:
        from towerlite.errors import TowerliteError

        raise TowerliteError(f"{config}: its steps name different versions {sorted(found)} "
                             "(edited by hand?): make them name one release")
    release = found.pop() if found else -1
    return None if release < 0 else release


def set_release_parameter(config: Path, release: int) -> None:
    """A fused model reads every step at `release`."""
    text = config.read_text()
    line = f'parameters {{ key: "RELEASE" value: {{ string_value: "{release}" }} }}'
    text = _RELEASE_PARAM.sub(line, text) if _RELEASE_PARAM.search(text) else \
        text.rstrip("\n") + "\n" + line + "\n"
    _write(config, text)
