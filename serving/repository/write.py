"""Write a flavor's configs (and, for a deploy, its model.py files) into a repository folder."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from .configs import FUSED_WARMUP_TEXT, model_configs
from .spec import FUSED, HISTORY_MODELS, MODEL_CODE, PYTHON_MODELS, RepositorySpec


def write_code(root: Path, spec: RepositorySpec, flavor: str, code: bool = True) -> list[Path]:
    """Write a flavor's config.pbtxt files and, with `code`, each python model's model.py from
    serving/triton_models/ (its one source). A version folder left empty gets a .gitkeep: the
    committed model_repository/ is written with code=False, so it holds no model.py copy."""
    root = Path(root)
    written = []
    for name, text in model_configs(spec, flavor).items():
        folder = root / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(text)
        written.append(folder / "config.pbtxt")
        source = PYTHON_MODELS[flavor].get(name) or HISTORY_MODELS.get(name)
        if name == FUSED:  # Triton's BYTES file format: 4-byte length, then the bytes
            text = FUSED_WARMUP_TEXT.encode()
            (folder / "warmup").mkdir(exist_ok=True)
            (folder / "warmup" / "user_text").write_bytes(struct.pack("<I", len(text)) + text)
            written.append(folder / "warmup" / "user_text")
        if source and code:
            shutil.copyfile(MODEL_CODE / source, folder / "1" / "model.py")
            written.append(folder / "1" / "model.py")
        elif source or "ensemble" in text.split("platform:", 1)[-1][:20]:
            (folder / "1" / ".gitkeep").write_text("")
            written.append(folder / "1" / ".gitkeep")
    return written
