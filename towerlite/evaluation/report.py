"""The evaluation's markdown table (the JSON report holds everything else)."""

from __future__ import annotations


def _ci(m: dict, name: str, digits: int = 4) -> str:
    v, ci = m.get(name), m.get(f"{name}_ci95")
    if v is None:
        return "-"
    return f"{v:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f"{v:.{digits}f}"


def _pct(row: dict, name: str) -> str:
    v = row.get("kept_vs_teacher", {}).get(name)
    return "-" if v is None else f"{v:.0f}%"


def paired_cell(row: dict) -> str:
    """The tower's Recall@10 minus the row's, all users / cold ones, paired 95% intervals."""
    paired = row.get("tower_minus_this_recall@10")
    if paired is None:
        return "—"
    return " / ".join(f"{paired[k]['mean']:+.4f} [{paired[k]['ci95'][0]:+.4f}, "
                      f"{paired[k]['ci95'][1]:+.4f}]" if paired[k]["mean"] is not None else "-"
                      for k in ("all", "cold_start"))


def markdown(report: dict) -> str:
    cases = report["cases"]
    paired = any("tower_minus_this_recall@10" in row for row in report["rows"].values())
    catalog = f"{cases['catalog_items']:,} items" + (
        "" if cases["catalog_full"] else " (sampled: every evaluated user's items + random others)")
    lines = [f"### {report['dataset']}: {cases['users']:,} held-out users, leave-last-out "
             f"({cases['order']}), {catalog}", "",
             "| row | Recall@10 [95% CI] | Recall@50 | NDCG@10 | MRR | R@10 vs teacher "
             f"| NDCG@10 vs teacher | cold-start R@10 ({cases['cold_start_users']} users) |"
             + (" history tower − row, R@10: all / cold (paired 95% CI) |" if paired else ""),
             "|---|---|---|---|---|---|---|---|" + ("---|" if paired else "")]
    for name, row in report["rows"].items():
        metrics = row["metrics"]
        lines.append(f"| {name} | {_ci(metrics, 'recall@10')} | {_ci(metrics, 'recall@50')} | "
                     f"{_ci(metrics, 'ndcg@10')} | {metrics['mrr']:.4f} | "
                     f"{_pct(row, 'recall@10')} | {_pct(row, 'ndcg@10')} | "
                     f"{_ci(row['cold_start'], 'recall@10')} |"
                     + (f" {paired_cell(row)} |" if paired else ""))
    served = report.get("via_triton")
    if served:
        diffs = ", ".join(f"{name} {value:g}" for name, value in served["abs_diff"].items())
        verdict = "agree" if served["agree"] else "DISAGREE"
        lines += ["", f"Through Triton ({served['url']}, {served['protocol']}) vs in-process "
                      f"{served['compared_with']}: same top-10 for "
                      f"{served['same_top10_share']:.1%} of users; "
                      "|Δ| " + diffs + f" (tolerance {served['tolerance']:g}): " + verdict]
    lines += ["", f"Cold start: targets liked by at most {cases['cold_start_max_other_likes']} "
                  "other users in the training part. Percentages are of the teacher's own metric "
                  "on the same cases."]
    return "\n".join(lines)

