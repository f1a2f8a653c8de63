"""`towerlite eval`: next-item retrieval quality of every tower setting, beside non-text
baselines, on MovieLens-1M and Book-Crossing (leave-last-out over a domain's catalog)."""
