"""Latency against throughput as a PNG: the bench report's figure (report.write) and the one
`compare` and `sweep` draw over several runs."""

from __future__ import annotations

import os
from pathlib import Path


def plot(series: list[tuple[str, list[dict]]], path: Path, title: str) -> Path:
    """Latency (p50 solid, p99 dashed) against throughput, one colour per series, each point
    labelled with its concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for i, (label, levels) in enumerate(series):
        done = [lv for lv in levels if lv["latency_ms"]]
        x = [lv["throughput_rps"] for lv in done]
        colour = f"C{i % 10}"
        ax.plot(x, [lv["latency_ms"]["p50"] for lv in done], "o-", color=colour,
                label=f"{label} p50")
        ax.plot(x, [lv["latency_ms"]["p99"] for lv in done], "s--", color=colour, alpha=0.6,
                label=f"{label} p99")
        for lv, xi in zip(done, x):
            ax.annotate(f"c={lv['concurrency']}", (xi, lv["latency_ms"]["p50"]),
                        textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set_xlabel("throughput (requests/s)")
    ax.set_ylabel("latency (ms, client side)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_xlim(left=0)
    shown = [lv["latency_ms"][k] for _, levels in series for lv in levels if lv["latency_ms"]
             for k in ("p50", "p99")]
    if shown and min(shown) > 0 and max(shown) / min(shown) > 30:
        ax.set_yscale("log")  # a saturated level's tail would flatten every other point
    else:
        ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
