"""`towerlite bench gpu-serving texts`: the bench's request texts (held-out users of both
datasets) saved to a JSON file with their fingerprint, for a machine that has no datasets;
`load` reads them back there and checks the fingerprint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from towerlite.errors import TowerliteError

from .inputs import RequestSet, build_requests

DESCRIPTION = (
    "Save the bench's request texts (held-out MovieLens and Book-Crossing users, as `towerlite "
    "bench serving` draws them) with K and their fingerprint to a JSON file, for `towerlite "
    "bench gpu-serving run` on a machine without the datasets.")


def load(path: str | Path) -> RequestSet:
    """The saved request set; TowerliteError when its texts no longer match the fingerprint."""
    saved = json.loads(Path(path).read_text())
    requests = RequestSet(saved["texts"], k=saved["k"])
    if requests.fingerprint != saved["fingerprint"]:
        raise TowerliteError(f"{path}: fingerprint {requests.fingerprint}, saved as "
                             f"{saved['fingerprint']}: the texts changed on the way")
    return requests


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--count", type=int, default=1000, help="request texts (default 1000)")


def command(args: argparse.Namespace) -> int:
    requests = build_requests(["movielens", "bookcrossing"], args.count)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"texts": requests.texts, "k": requests.k,
                                          "fingerprint": requests.fingerprint}))
    print(f"{len(requests.texts)} texts, fingerprint {requests.fingerprint} → {args.out}")
    return 0
