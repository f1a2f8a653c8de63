"""Triton python model `scorer`: a user embedding → the catalog's top-k items.

Runs inside Triton's python backend: imports only numpy and triton_python_backend_utils
(and faiss, lazily, when the catalog ships an index). The catalog lives in the version folder,
written by `towerlite deploy`:

    catalog/embeddings_t.npy   float32 (dim, n): item embeddings stored transposed, so a batch of
                               user vectors times the matrix streams it row by row (2x faster
                               than (n, dim) at 100k items, measured)
    catalog/item_ids.npy       the catalog's own ids as UTF-8 bytes (n,), sorted within a domain
    catalog/catalog.json       count, dim, domain ranges [start, stop), the model that encoded it
    catalog/index.faiss        optional FAISS IVF index (large catalogs; IVF-Flat, or IVF-SQ8 /
                               IVF-PQ whose k·rescore candidates are re-scored exactly from
                               rows.npy, or the matrix without it): used for top-k over all
                               domains or one domain of at least exact_below items
                               (IDSelectorRange); exact search answers MIN_SCORE requests,
                               smaller domains, several-domain filters, and any query the index
                               returns too few results for after exclusion; catalog.json's
                               exact_below (EXACT_BELOW parameter), nprobe and
                               codes_cap_factor (a query scans at most that many times the
                               codes of nprobe average lists), overridden by the NPROBE and
                               CODES_CAP_FACTOR parameters

    catalog/rows.npy           float32 (n, dim), beside a compressed index: the candidates'
                               rows, read with pread

The .npy files and (INDEX_LOAD "mmap", the default) the index are memory-mapped, rows.npy read:
every scorer (and recommend_fused) instance, each its own process, shares one copy in the page
cache.

Inputs: EMBEDDING float32 [dim]; optional K int32 [1] (default DEFAULT_K), DOMAIN bytes [1]
(a domain name, or several joined by ","), EXCLUDE bytes [-1] (item ids to leave out, e.g. the
user's history; "" entries are ignored), MIN_SCORE float32 [1] (only items scoring at least this;
without K it returns up to MAX_K of them). Outputs ITEM_IDS, SCORES, DOMAINS, best first; rows of
a batch with fewer results than the longest are padded with "" ids and NaN scores.
Bad options (k out of range, unknown domain or item id) fail that request with a message.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils

OPTIONS = ("K", "DOMAIN", "EXCLUDE", "MIN_SCORE")  # the optional inputs, in search()'s order


def caller_error(message):
    """The request's own mistake: INVALID_ARGUMENT over gRPC, 400 over HTTP, also through an
    ensemble (a bare TritonError is INTERNAL / 500: a server fault to retry, to page about)."""
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)  # absent before Triton 2.39
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class RequestError(ValueError):
    pass


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def request_options(request):
    """The request's optional inputs as arrays (None where absent), in search()'s order."""
    return tuple(_optional(request, name) for name in OPTIONS)


def _text(value):
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class RowFile:
    """An (n, dim) .npy file whose rows are read with os.pread: `rows_file[ids]`. Not mapped:
    random row reads through a mapping pulled ~2 MB folios into every instance's RSS (the
    catalog's matrix paged in after a few hundred requests), a read leaves them in the page
    cache only (towerlite's serving/index.py has the same class for its benches)."""

    def __init__(self, path):
        header = np.load(path, mmap_mode="r")  # numpy reads the header; no row is touched
        self.shape, self.dtype, self.offset = header.shape, header.dtype, header.offset
        del header
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDONLY)

    def __getitem__(self, rows):
        data = b"".join(os.pread(self.fd, self.row_bytes, self.offset + int(r) * self.row_bytes)
                        for r in rows)
        return np.frombuffer(data, self.dtype).reshape(-1, self.shape[1])


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"],
                              params.get("CATALOG_DIR", "catalog"))
        for name in ("catalog.json", "embeddings_t.npy", "item_ids.npy"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise FileNotFoundError(f"{os.path.join(folder, name)} is missing "
                                        "(towerlite deploy writes the catalog)")
        with open(os.path.join(folder, "catalog.json")) as f:
            self.meta = json.load(f)
        # mapped (np.asarray drops the np.memmap subclass and its per-slice python hooks)
        self.matrix = np.asarray(np.load(os.path.join(folder, "embeddings_t.npy"), mmap_mode="r"))
        self.ids = np.asarray(np.load(os.path.join(folder, "item_ids.npy"), mmap_mode="r"))
        self.dim, self.count = self.matrix.shape
        # the version folder is the release (towerlite release): every answer names it
        self.release = int(args["model_version"])
        self.domains = {d["name"]: (d["start"], d["stop"]) for d in self.meta["domains"]}
        self.domain_names = np.array([d["name"].encode() for d in self.meta["domains"]],
                                     dtype=object)
        self.domain_starts = np.array([d["start"] for d in self.meta["domains"]])
        # history_scorer: its exclusions come from history_encoder, which checked them against
        # its own table; during a catalog update's two loads an id may be in one and not yet
        # (or no longer) in the other, and leaving out an item that is not there is no error
        self.skip_unknown = params.get("UNKNOWN_EXCLUDE", "error") == "skip"
        self.default_k = int(params.get("DEFAULT_K", "10"))
        self.max_k = int(params.get("MAX_K", "1000"))
        # approximate search: the IVF index deploy wrote for a large catalog (INDEX "auto"),
        # or exact search only (INDEX "exact")
        self.index = None
        index_file = os.path.join(folder, "index.faiss")
        if params.get("INDEX", "auto") == "auto" and self.meta.get("index") \
                and os.path.isfile(index_file):
            import faiss  # only when the catalog ships an index

            self.faiss = faiss
            # INDEX_LOAD "mmap": the lists stay in the file, one copy in the page cache for
            # every scorer and recommend_fused instance of the server; "memory": each instance
            # reads its own copy (towerlite bench index measures both)
            # (IO_FLAG_MMAP_IFC maps the lists in place and searches as fast as a copy; the
            # older IO_FLAG_MMAP searched 3.4x slower, measured)
            mmap = params.get("INDEX_LOAD", "mmap") == "mmap" \
                and hasattr(faiss, "IO_FLAG_MMAP_IFC")
            self.index = faiss.read_index(index_file, faiss.IO_FLAG_MMAP_IFC if mmap else 0)
            self.nprobe = int(params.get("NPROBE", self.meta["index"].get("nprobe", 32)))
            # a query scans at most CODES_CAP_FACTOR times the codes of nprobe average lists
            # (faiss' max_codes, nearest lists first): crowded lists made the tail at 10M
            # items (deploy records the factor for large catalogs; 0 = no cap)
            factor = float(params.get("CODES_CAP_FACTOR",
                                      self.meta["index"].get("codes_cap_factor", 0)))
            # a one-domain request over fewer items than this is scanned exactly: as cheap as
            # the index there and its own answer (over the full catalog the 3,883 movies
            # through the history index lost 6% of each top 10; deploy records the size below
            # which it picks no index for a whole catalog)
            self.exact_below = int(params.get("EXACT_BELOW",
                                              self.meta["index"].get("exact_below", 0)))
            nlist = faiss.extract_index_ivf(self.index).nlist
            self.max_codes = 0 if not factor or self.nprobe >= nlist else \
                int(np.ceil(factor * self.nprobe * self.index.ntotal / nlist))
            # compressed kinds (ivf_sq8, ivf_pq): k·rescore candidates, re-scored exactly from
            # rows.npy (a catalog written before it: from the matrix's columns)
            self.rescore = int(self.meta["index"].get("rescore", 0))
            rows_file = os.path.join(folder, "rows.npy")
            self.rows = RowFile(rows_file) if self.rescore and os.path.isfile(rows_file) \
                else None

    # -- options --------------------------------------------------------------------------
    def _ranges(self, domain):
        if domain is None:
            return tuple(self.domains.values())
        names = [n.strip() for n in _text(domain.reshape(-1)[0]).split(",") if n.strip()]
        if not names:
            return tuple(self.domains.values())
        unknown = [n for n in names if n not in self.domains]
        if unknown:
            raise RequestError(f"unknown domain {', '.join(map(repr, unknown))}; this catalog "
                               f"has {', '.join(self.domains)}")
        return tuple(self.domains[n] for n in dict.fromkeys(names))

    def _rows_of(self, keys):
        """Catalog rows of item ids (non-empty bytes), -1 where unknown: one vectorized
        searchsorted per domain range (a python loop per id cost 17 µs an id, measured)."""
        width = self.ids.dtype.itemsize  # a longer key is in no catalog (numpy would cut it)
        wanted = np.array([k if len(k) <= width else b"" for k in keys], dtype=self.ids.dtype)
        rows = np.full(len(keys), -1, dtype=np.int64)
        for start, stop in self.domains.values():
            part = self.ids[start:stop]
            if len(part) and len(keys):
                pos = np.minimum(np.searchsorted(part, wanted), len(part) - 1)
                hit = (rows < 0) & (part[pos] == wanted) & (wanted != b"")
                rows[hit] = start + pos[hit]
        return rows

    def _lookup(self, wanted):
        """Row indices of item ids (bytes); unknown ids are an error."""
        keys = [value if isinstance(value, bytes) else str(value).encode() for value in wanted]
        keys = [key for key in keys if key]
        rows = self._rows_of(keys)
        unknown = [_text(key) for key, row in zip(keys, rows) if row < 0]
        if unknown and not self.skip_unknown:
            shown = ", ".join(map(repr, unknown[:5])) + (" …" if len(unknown) > 5 else "")
            raise RequestError(f"{len(unknown)} EXCLUDE id(s) not in the catalog: {shown}")
        return rows[rows >= 0]

    def _k(self, k, min_score, candidates, row):
        if k is None:
            return min(self.max_k, candidates) if min_score is not None else \
                min(self.default_k, candidates)
        value = int(k.reshape(k.shape[0], -1)[row, 0] if k.ndim > 1 else k.reshape(-1)[row])
        if value < 1 or value > self.max_k:
            raise RequestError(f"K must be between 1 and {self.max_k} (MAX_K); got {value}")
        if value > candidates:
            raise RequestError(f"K={value} is larger than the {candidates:,} items to choose from")
        return value

    # -- search ---------------------------------------------------------------------------
    def top(self, scores, k, exclude, min_score):
        """Indices (into `scores`) of the best k, best first, after exclusion and threshold."""
        if exclude is not None and exclude.size:
            scores[exclude] = -np.inf
        if min_score is not None:
            scores[scores < min_score] = -np.inf
        if k < scores.shape[0]:
            part = np.argpartition(-scores, k - 1)[:k]
        else:
            part = np.arange(scores.shape[0])
        order = part[np.argsort(-scores[part], kind="stable")]
        return order[np.isfinite(scores[order])]

    def _indexed(self, emb, ranges, ks, excluded):
        """Top-k rows by the IVF index (row positions, scores), or None where exact must run:
        no index, several but not all domains, or too few results after exclusion."""
        if self.index is None:
            return None
        everything = tuple(ranges) == tuple(self.domains.values())
        if not everything and (len(ranges) > 1
                               or ranges[0][1] - ranges[0][0] < self.exact_below):
            return None
        skip = set() if excluded is None else set(excluded.tolist())
        wanted = max(ks) * max(1, self.rescore)
        fetch = min(wanted + len(skip), sum(b - a for a, b in ranges))
        options = {"nprobe": self.nprobe, "max_codes": self.max_codes}
        if not everything:
            options["sel"] = self.faiss.IDSelectorRange(ranges[0][0], ranges[0][1])
        scores, rows = self.index.search(np.ascontiguousarray(emb), fetch,
                                         params=self.faiss.SearchParametersIVF(**options))
        out = []
        for r, k in enumerate(ks):
            # the best k·rescore candidates left after exclusion (fetched beyond them only
            # to cover the excluded ones; re-scoring more would cost a read each)
            keep = [i for i, row in enumerate(rows[r]) if row >= 0 and int(row) not in skip][
                :k * max(1, self.rescore)]
            if len(keep) < k:
                return None
            found = rows[r, keep].astype(np.int64)
            if self.rescore:  # approximate scores: the exact ones of the candidates decide
                if self.rows is not None:
                    found = np.sort(found)  # ascending reads through the file
                    exact = self.rows[found] @ emb[r]
                else:
                    exact = emb[r] @ self.matrix[:, found]
                best = np.argsort(-exact, kind="stable")[:k]
                out.append((found[best], exact[best].astype(np.float32)))
            else:
                out.append((found[:k], scores[r, keep[:k]]))
        return out

    def _run(self, request):
        emb = pb_utils.get_input_tensor_by_name(request, "EMBEDDING").as_numpy()
        return self.search(emb, *request_options(request))

    def search(self, emb, k=None, domain=None, exclude=None, min_score=None, exclude_rows=None):
        """The output tensors for user embedding(s) and the request's options (arrays or None).
        `exclude_rows`: catalog rows to leave out besides the EXCLUDE ids, for a caller that
        has looked them up in this catalog's row order already (recommend_history_fused)."""
        emb = emb.reshape(-1, emb.shape[-1]).astype(np.float32, copy=False)
        if emb.shape[1] != self.dim:
            raise RequestError(
                f"EMBEDDING has {emb.shape[1]} values; the catalog's are {self.dim}-d")
        if not np.isfinite(emb).all():
            raise RequestError("EMBEDDING holds NaN or infinite values")
        if min_score is not None and np.isnan(min_score).any():
            raise RequestError("MIN_SCORE is NaN; send a number (or leave it out)")
        ranges = self._ranges(domain)
        excluded = self._lookup(exclude.reshape(-1)) if exclude is not None else None
        if exclude_rows is not None:
            excluded = np.asarray(exclude_rows, dtype=np.int64) if excluded is None else \
                np.concatenate([excluded, np.asarray(exclude_rows, dtype=np.int64)])
        candidates = sum(stop - start for start, stop in ranges)
        if min_score is None:
            ks = [self._k(k, None, candidates, r) for r in range(emb.shape[0])]
            rows = self._indexed(emb, ranges, ks, excluded)
            if rows is not None:
                return self._outputs(rows)
        # exact: scores over the chosen domain ranges, one matrix product per contiguous range
        offsets, parts = [], []
        for start, stop in ranges:
            parts.append(emb @ self.matrix[:, start:stop])
            offsets.append(np.arange(start, stop))
        scores = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
        index = offsets[0] if len(offsets) == 1 else np.concatenate(offsets)
        local_excl = None
        if excluded is not None and excluded.size:
            local = np.searchsorted(index, excluded)
            last = index.shape[0] - 1
            hit = (local <= last) & (index[np.minimum(local, last)] == excluded)
            local_excl = local[hit]
        rows = []
        for r in range(emb.shape[0]):
            threshold = None if min_score is None else float(min_score.reshape(-1)[
                r if min_score.size > 1 else 0])
            kk = self._k(k, threshold, scores.shape[1], r)
            best = self.top(scores[r], kk, local_excl, threshold)
            rows.append((index[best], scores[r, best]))
        return self._outputs(rows)

    def _outputs(self, rows):
        width = max(len(ix) for ix, _ in rows)
        ids = np.full((len(rows), width), b"", dtype=object)
        out = np.full((len(rows), width), np.nan, dtype=np.float32)
        doms = np.full((len(rows), width), b"", dtype=object)
        for r, (ix, sc) in enumerate(rows):
            ids[r, :len(ix)] = [bytes(x) for x in self.ids[ix]]
            out[r, :len(ix)] = sc
            doms[r, :len(ix)] = self.domain_names[
                np.searchsorted(self.domain_starts, ix, side="right") - 1]
        return [pb_utils.Tensor("ITEM_IDS", ids), pb_utils.Tensor("SCORES", out),
                pb_utils.Tensor("DOMAINS", doms),
                pb_utils.Tensor("RELEASE", np.full((len(rows), 1), self.release, np.int64))]

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(pb_utils.InferenceResponse(output_tensors=self._run(request)))
            except RequestError as exc:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=caller_error(f"scorer: {exc}")))
        return responses
