"""The texts every row of the encoder benchmark encodes: held-out corpus texts, a real mix."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger(__name__)


def mixed_texts(n: int) -> tuple[list[str], dict]:
    """`n` held-out corpus texts, interleaved source by source (so input order is a real mix),
    each source's share spread over its domains; sources short of n/k are topped up by the rest."""
    from towerlite.data import load_corpus
    from towerlite.data.splits import balanced_sample

    held = balanced_sample(load_corpus(), per_source=n, seed=0, heldout=True)
    by_source: dict[str, list] = {}
    for rec in held:
        by_source.setdefault(rec.source, []).append(rec)
    picked, queues = [], [list(reversed(v)) for v in by_source.values()]
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    if len(picked) < n:
        log.info(f"only {len(picked)} held-out texts available (asked for {n})")
    return [r.text for r in picked], dict(Counter(r.source for r in picked))
