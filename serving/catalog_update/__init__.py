"""`towerlite catalog update`: new, changed or removed items → the scorer's next version,
loaded on a running server through Triton's repository API, without a redeploy.

    report = update("runs/repo/portable", "new_items.csv", remove="gone.txt",
                    url="127.0.0.1:8001")

1. Read the newest scorer version's catalog (REPO/scorer/N/catalog, `catalog.read_catalog`).
2. Render the file's items with `towerlite.data.render.item_text` (through
   `towerlite.data.catalog.prepare_items`) and encode only those, with the item tower that
   encoded the catalog: the ONNX file whose sha256 catalog.json records
   (REPO/item_encoder/1/model.onnx, or the export deploy read) and the item tokenizer of the
   repository.
3. Merge: an id in the file replaces that item, a new id is added, `remove` drops ids. The
   merged catalog keeps the scorer's order (domain-contiguous, ids sorted as UTF-8 bytes).
4. Write version N+1: built in REPO/scorer/.staging-(N+1) (Triton ignores a non-numeric version
   folder), its model.py copied from version N, the IVF index rebuilt when version N has one
   (`--index keep`), read back, then renamed into place. Version N stays on disk.
   Version N+1 is release N+1 of the repository (serving/release/): every other model's
   version N folder is carried into N+1 (hard links), and the configs name release N+1.
5. With `url`: the server is switched to release N+1 (serving/release/switch.py: both releases
   loaded, the ensembles and fused models pointed at N+1, then N unloaded), so requests in
   flight and during the swap succeed and none mixes the two. The served catalog is then
   checked (`EXCLUDE` of added ids is accepted and of removed ids refused, which only a scorer
   holding the new catalog does), and releases older than N are deleted.

Loading is a separate step from writing: if the server is down, version N+1 stays complete on
disk, the server (if up) keeps serving N, and `towerlite catalog load` retries (a restarted
server serves what the configs name: N+1). A version the server refuses leaves it serving N,
and the configs name N again.

One module a job: `items_file` (the update's inputs), `versions` (the scorer's versions on
disk), `merge` (old rows + new rows in scorer order), `write` (version N+1, atomically),
`server` (switching a running Triton to it and checking it) and `update` (the `update` and
`load` commands).
"""

from .items_file import ITEM_COLUMNS, read_ids, read_items
from .merge import merge, row_domains
from .server import LoadError, load_on_server
from .update import load_on_replicas, load_version, replica_urls, update
from .versions import flavor_folder, scorer_versions, serving_version
from .write import write_version

__all__ = [
    "ITEM_COLUMNS", "LoadError", "flavor_folder", "load_on_replicas", "load_on_server",
    "load_version", "merge", "read_ids", "read_items", "replica_urls", "row_domains",
    "scorer_versions", "serving_version", "update", "write_version",
]
