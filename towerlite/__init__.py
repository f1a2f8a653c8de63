"""towerlite: distill a text encoder, export it to ONNX, serve a two-tower recommender on Triton.

This glue package holds what every stage shares: the CLI, the cache home, the asset
registry, the data loaders and the item/user text rendering. The stages themselves live in
the top-level packages `distill`, `export` and `serving`, and talk to each other through files.
"""

__version__ = "0.1.0"
