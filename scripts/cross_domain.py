"""The cross-domain case, measured by a proxy (docs/quality.md): a movie history asking for
books. No user is in both MovieLens and Book-Crossing, so no real cross-domain target exists;
the proxy target of a held-out MovieLens user is every Book-Crossing book whose title is the
title of the movie that user liked next (its leave-last-out target): the book behind the film,
its tie-in edition, or a same-titled other book. Only titles of two words or more count
("Heat", "Friday" name many unrelated books); a user is kept when at least one such book exists.

The candidate catalog is the eval's Book-Crossing catalog (the 20,000-book sample every
Book-Crossing row of docs/quality.md ranks) plus every proxy target, all books; a user's top 10
hits when it holds any of the user's targets. Rows:

    history tower(s)   a `towerlite history` tower trained on Book-Crossing (--tower, repeatable):
                       the movie history's rows from the same adapter (movies have no ID vector in
                       a book tower), through its ONNX graph, against the books' rows
    text tower         the item model zero-shot: the user's text (10 newest titles rendered)
                       against the books' embeddings, as the eval's text-tower row
    history text mean  the mean of the history's unit text embeddings against the books' (no
                       training: the zero-shot similarity a text skip carries)
    popularity         books by their likes among Book-Crossing's training users

    .venv/bin/python scripts/cross_domain.py --tower runs/h-bx/model --tower runs/h-bx-g20/model \
        --out runs/cross-domain.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from towerlite.data import item_text, load_dataset
from towerlite.data.splits import is_heldout_user
from towerlite.evaluation.cases import build_cases
from towerlite.evaluation.metrics import bootstrap_ci
from towerlite.evaluation.towers import towers_of
from towerlite.sequential import SavedTower, onnx_user_vectors, unit_rows


def title_key(title: str) -> str:
    """A title compared across datasets: no year or bracketed alias, "X, The" → "The X",
    lower case, letters and digits only."""
    title = re.sub(r"\s*\([^)]*\)\s*$", "", str(title).strip())
    moved = re.match(r"^(.*), (The|A|An)$", title)
    if moved:
        title = f"{moved.group(2)} {moved.group(1)}"
    return re.sub(r"[^a-z0-9]+", " ", title.lower()).strip()


def hits(scores: np.ndarray, targets: list[set[int]], k: int) -> np.ndarray:
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.array([bool(set(row.tolist()) & t) for row, t in zip(top, targets)], np.float64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", action="append", type=Path, default=[],
                   help="a history tower folder trained on Book-Crossing (repeatable)")
    p.add_argument("--item-model", default="student-start")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    started = time.perf_counter()

    movies = build_cases("movielens", users=0, max_history=10)
    books = build_cases("bookcrossing", users=0, max_history=10, catalog_items=20_000)
    bx = load_dataset("bookcrossing")
    by_key: dict[str, list[str]] = {}
    for item_id, title in zip(bx.items["item_id"], bx.items["title"]):
        key = title_key(title)
        if len(key.split()) >= 2:
            by_key.setdefault(key, []).append(item_id)
    ml_items = load_dataset("movielens").items
    movie_titles = dict(zip(ml_items["item_id"], ml_items["title"]))

    # the catalog: the eval's books, then every proxy target not among them
    catalog = list(books.item_ids)
    added_texts = []
    row_of = {item: r for r, item in enumerate(catalog)}
    records = bx.items.drop_duplicates("item_id").set_index("item_id", drop=False)
    users, targets = [], []
    for u, target_row in enumerate(movies.targets):
        wanted = by_key.get(title_key(movie_titles[movies.item_ids[target_row]]), [])
        for item in wanted:
            if item not in row_of:
                row_of[item] = len(catalog)
                catalog.append(item)
                added_texts.append(item_text(records.loc[item].to_dict()))
        if wanted:
            users.append(u)
            targets.append({row_of[item] for item in wanted})
    print(f"{len(users)} of {len(movies.users)} held-out MovieLens users have a proxy target; "
          f"catalog {len(catalog):,} books ({len(catalog) - len(books.item_ids):,} added)")

    (tower,) = towers_of(args.item_model)[:1]
    # the eval's books as `towerlite history` and `eval` embedded them (their cache), then the
    # added ones: one list of both would be a new cache key, all 20k embedded again
    book_text = tower.embed(books.item_texts, "bookcrossing catalog")
    if added_texts:
        book_text = np.concatenate([book_text, tower.embed(added_texts, "proxy books")])
    movie_text = tower.embed(movies.item_texts, "movielens catalog")
    seen = [movies.seen[u] for u in users]
    rows: dict[str, np.ndarray] = {}
    for folder in args.tower:
        saved = SavedTower.load(folder)
        movie_rows = saved.item_table(movies.item_ids, movie_text)
        book_rows = saved.item_table(catalog, book_text)
        vectors = onnx_user_vectors(saved.session(threads=2), movie_rows, seen,
                                    saved.config.max_len)
        rows[f"history tower {folder} ({saved.config.kind})"] = vectors @ book_rows.T
    user_text = tower.embed([movies.user_texts[u] for u in users], "cross-domain user texts")
    rows["text tower, zero-shot (user text vs book)"] = user_text @ book_text.T
    movie_unit, book_unit = unit_rows(movie_text), unit_rows(book_text)
    rows["history text mean (no training)"] = np.stack(
        [movie_unit[s].mean(0) for s in seen]) @ book_unit.T
    liked = bx.interactions[(bx.interactions["rating"] >= bx.positive_threshold)
                            & ~bx.interactions["user_id"].map(is_heldout_user)]
    counts = liked["item_id"].value_counts()
    popularity = np.array([counts.get(item, 0) for item in catalog], np.float64)
    rows["popularity (Book-Crossing training likes)"] = np.tile(popularity, (len(users), 1))

    report = {"users": len(users), "catalog_books": len(catalog),
              "targets_per_user_median": float(np.median([len(t) for t in targets])),
              "rows": {}}
    print("\n| row | Hit@10 [95% CI] | Hit@50 |\n|---|---|---|")
    for name, scores in rows.items():
        at10, at50 = hits(scores, targets, 10), hits(scores, targets, 50)
        low, high = bootstrap_ci(at10)
        report["rows"][name] = {"hit@10": round(float(at10.mean()), 4), "hit@10_ci95": [low, high],
                                "hit@50": round(float(at50.mean()), 4)}
        print(f"| {name} | {at10.mean():.4f} [{low:.4f}, {high:.4f}] | {at50.mean():.4f} |")
    report["seconds"] = round(time.perf_counter() - started, 1)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
