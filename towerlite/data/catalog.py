"""The catalog's rows in the one order every stage uses: item_id, domain, text, by domain (in
the order the datasets were named), then by id as UTF-8 bytes. Serving writes its matrix in
this order (a domain filter is a slice, EXCLUDE ids are binary-searched); evaluation ranks in it.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from towerlite.errors import TowerliteError

from .render import item_texts


def prepare_items(items: pd.DataFrame, domain_order: Sequence[str] | None = None) -> pd.DataFrame:
    """item_id, domain, text for an items frame (ITEM_COLUMNS), in the scorer's order;
    the text is `towerlite.data.render.item_text`, the one rendering every stage uses."""
    if items.empty:
        raise TowerliteError("the catalog is empty")
    out = pd.DataFrame({"item_id": items["item_id"].astype(str).to_numpy(),
                        "domain": items["domain"].astype(str).to_numpy(),
                        "text": item_texts(items)})
    out = out[out["item_id"] != ""].drop_duplicates("item_id", keep="first")
    return scorer_order(out, list(domain_order or dict.fromkeys(out["domain"])))


def scorer_order(frame: pd.DataFrame, domain_order: Sequence[str]) -> pd.DataFrame:
    """Rows by domain (in `domain_order`), then by id as UTF-8 bytes: each domain one
    contiguous range, ids sorted within it (the scorer binary-searches them)."""
    rank = {d: i for i, d in enumerate(domain_order)}
    keyed = frame.assign(_rank=frame["domain"].map(rank),
                         _key=[s.encode("utf-8") for s in frame["item_id"]])
    keyed = keyed.sort_values(["_rank", "_key"], kind="stable")
    return keyed.drop(columns=["_rank", "_key"]).reset_index(drop=True)
