"""`towerlite bench compare A.json B.json …`: variants (teacher fp32, student fp32, student int8,
…) side by side, each row's throughput and latency as a ratio of the first report's at the same
concurrency. Ratios only mean something for the same requests, so reports whose inputs
fingerprints differ are refused unless forced (and the table then says so)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic, write_text_atomic

from .plot import plot
from .report import validate


def load(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise TowerliteError(f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise TowerliteError(f"{path} is not JSON (a bench.json was expected)") from None
    try:
        return validate(data)
    except TowerliteError as exc:
        raise TowerliteError(f"{path}: {exc}") from None


def _inputs_line(r: dict) -> str:
    i = r["inputs"]
    return (f"fingerprint {i['fingerprint']}: {i['count']:,} texts, K={i['k']}, "
            f"domain {i['domain'] or 'all'}, seed {i.get('seed')}")


def check_same_inputs(reports: list[dict], paths: list[Path], force: bool) -> list[str]:
    """Mismatch lines; TowerliteError unless forced when the inputs differ."""
    first = reports[0]["inputs"]["fingerprint"]
    differing = [f"  {p}: {_inputs_line(r)}" for r, p in zip(reports, paths)]
    if all(r["inputs"]["fingerprint"] == first for r in reports):
        return []
    if not force:
        raise TowerliteError("the reports were made with different inputs, so their ratios "
                             "compare different requests:\n" + "\n".join(differing)
                             + "\n  run them with the same --texts/--seed/--k/--domain/--datasets,"
                               " or pass --force")
    return ["inputs differ (forced):", *differing]


def _labels(reports: list[dict], given: list[str] | None) -> list[str]:
    if given and len(given) != len(reports):
        raise TowerliteError(f"--label given {len(given)} times for {len(reports)} reports")
    labels = list(given or [r["label"] for r in reports])
    seen: dict[str, int] = {}
    for i, label in enumerate(labels):  # equal labels would merge series in the plot
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            labels[i] = f"{label} ({seen[label]})"
    return labels


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def rows(reports: list[dict], labels: list[str]) -> list[dict]:
    """One row per (concurrency, report), ratios against the first report."""
    base = {lv["concurrency"]: lv for lv in reports[0]["levels"]}
    out = []
    for conc in sorted({lv["concurrency"] for r in reports for lv in r["levels"]}):
        ref = base.get(conc)
        ref_lat = (ref or {}).get("latency_ms") or {}
        for label, r in zip(labels, reports):
            lv = next((x for x in r["levels"] if x["concurrency"] == conc), None)
            if lv is None:
                continue
            lat = lv["latency_ms"] or {}
            out.append({"concurrency": conc, "label": label, "engine": r["engine"]["name"],
                        "requests": lv["requests"], "errors": lv["errors"],
                        "throughput_rps": lv["throughput_rps"], "p50_ms": lat.get("p50"),
                        "p99_ms": lat.get("p99"),
                        "throughput_x": _ratio(lv["throughput_rps"],
                                               (ref or {}).get("throughput_rps")),
                        "p50_x": _ratio(lat.get("p50"), ref_lat.get("p50")),
                        "p99_x": _ratio(lat.get("p99"), ref_lat.get("p99"))})
    return out


def markdown(result: dict) -> str:
    f = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
    lines = [f"Ratios against **{result['baseline']}** at the same concurrency "
             "(throughput ×: higher is better; latency ×: lower is better).", "",
             "| concurrency | report | engine | req/s | p50 ms | p99 ms | req/s × | p50 × | p99 × "
             "| errors |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['concurrency']} | {r['label']} | {r['engine']} | "
                     f"{f(r['throughput_rps'])} | {f(r['p50_ms'], 2)} | {f(r['p99_ms'], 2)} | "
                     f"{f(r['throughput_x'], 2)} | {f(r['p50_x'], 2)} | {f(r['p99_x'], 2)} | "
                     f"{r['errors']} |")
    lines += ["", *result["notes"]]
    return "\n".join(lines).rstrip()


def compare(paths: list[Path], out: Path, labels: list[str] | None = None,
            force: bool = False) -> dict:
    """Writes OUT/compare.json, compare.md and compare.png; returns the comparison."""
    if len(paths) < 2:
        raise TowerliteError("bench compare needs at least two reports")
    reports = [load(p) for p in paths]
    notes = check_same_inputs(reports, paths, force)
    names = _labels(reports, labels)
    if not notes:
        notes = [f"same inputs: {_inputs_line(reports[0])}"]
    loads = {(r["settings"].get("duration_s"), r["settings"].get("requests")) for r in reports}
    if len(loads) > 1:
        notes.append("note: the reports ran different lengths per level (--duration/--requests)")
    result = {"reports": [{"label": n, "path": str(p), "engine": r["engine"]["name"],
                           "fingerprint": r["inputs"]["fingerprint"], "created": r["created"],
                           "server": r["server"]} for n, p, r in zip(names, paths, reports)],
              "baseline": names[0], "forced": bool(force and notes[0].startswith("inputs differ")),
              "rows": rows(reports, names), "notes": notes}
    out = Path(out)
    write_json_atomic(out / "compare.json", result)
    write_text_atomic(out / "compare.md", markdown(result) + "\n")
    plot([(n, r["levels"]) for n, r in zip(names, reports)], out / "compare.png",
         "latency against throughput, same requests" if not result["forced"]
         else "latency against throughput (inputs differ: forced)")
    return result


DESCRIPTION = (
    "Compare bench reports made with the same inputs (e.g. teacher fp32, student fp32, student "
    "int8 served in turn): one table with throughput and latency ratios against the first "
    "report at each concurrency, and one plot. Reports with different inputs (texts, K, domain) "
    "are refused unless --force. Writes OUT/compare.json, compare.md and compare.png.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    p.add_argument("--label", dest="labels", action="append", metavar="LABEL",
                   help="name of each report, in order (default: the label each report has)")
    p.add_argument("--force", action="store_true",
                   help="compare reports made with different inputs")
    p.add_argument("--out", type=Path, metavar="DIR", default=Path("runs/bench/compare"),
                   help="folder for compare.json/.md/.png (default runs/bench/compare)")


def command(args: argparse.Namespace) -> int:
    result = compare(args.reports, args.out, args.labels, args.force)
    print(markdown(result))
    print(f"\nwritten: {args.out / 'compare.json'} (.md, .png)")
    return 0
