"""Regenerate the committed model_repository/ (both flavors' configs, default spec):

    python -m towerlite.serving.repository --out model_repository
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .spec import FLAVORS, RepositorySpec
from .validate import validate_repository
from .write import write_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m towerlite.serving.repository",
                                     description="Write both flavors' configs (no model.py: deploy "
                                                 "copies those; no weights, no catalog) for the "
                                                 "default spec.")
    parser.add_argument("--out", type=Path, default=Path("model_repository"))
    args = parser.parse_args(argv)
    for flavor in FLAVORS:
        write_code(args.out / flavor, RepositorySpec(), flavor, code=False)
        validate_repository(args.out / flavor)
        print(f"wrote {args.out / flavor}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
