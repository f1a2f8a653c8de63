"""The benchmark report: one schema for both engines, written as JSON (everything), CSV (one
row per concurrency level, the server split flattened), a printed table and a PNG of latency
against throughput (plot.py). `validate` is the schema's check, used by the tests and by
`compare`."""

from __future__ import annotations

import csv
import io
import platform
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic, write_text_atomic
from towerlite.machine import cpu_idle, cpu_info, package_versions, usable_cores

from .plot import plot

SCHEMA = "towerlite-bench/1"
LATENCY_KEYS = ("mean", "min", "p50", "p90", "p95", "p99", "max")
LEVEL_KEYS = ("concurrency", "requests", "errors", "error_rate", "first_error", "wall_s",
              "throughput_rps", "latency_ms", "client_cpu_s", "server", "notes", "engine_own")
TOP_KEYS = ("schema", "label", "created", "engine", "server", "settings", "inputs", "machine",
            "versions", "warmup", "levels", "seconds")


def machine() -> dict:
    """What the numbers depend on: the CPU model, its vector flags and cores
    (towerlite.machine.cpu_info, the record every report shares), the cores usable here, the
    platform and how an idle core waits (cpu_idle: a guest's halt polling moves the latency at
    concurrency 1); runner.py adds how busy it was."""
    return {**cpu_info(), "cores_usable": usable_cores(), "platform": platform.platform(),
            **cpu_idle()}


def versions() -> dict:
    return package_versions("towerlite", "tritonclient", "grpcio", "numpy")


def validate(report: dict) -> dict:
    """The report's schema, checked; TowerliteError naming what is missing or inconsistent."""
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise TowerliteError(f"not a towerlite bench report (schema {SCHEMA!r} expected)")
    missing = [k for k in TOP_KEYS if k not in report]
    missing += [f"levels[{i}].{k}" for i, lv in enumerate(report["levels"]) for k in LEVEL_KEYS
                if k not in lv]
    if missing:
        raise TowerliteError(f"bench report lacks {', '.join(missing)}")
    if "fingerprint" not in report["inputs"]:
        raise TowerliteError("bench report lacks inputs.fingerprint")
    for lv in report["levels"]:
        lat = lv["latency_ms"]
        if lat is None:
            if lv["requests"]:
                raise TowerliteError(f"concurrency {lv['concurrency']}: requests but no latencies")
            continue
        values = [lat[k] for k in ("min", "p50", "p90", "p95", "p99", "max")]
        if values != sorted(values):
            raise TowerliteError(f"concurrency {lv['concurrency']}: percentiles out of order")
    return report


def _fmt(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _split_cell(row: dict | None) -> str:
    """queue/compute in ms for one composing model."""
    if not row or not row.get("requests"):
        return "-"
    compute = sum(row[f"compute_{p}_us"] or 0 for p in ("input", "infer", "output"))
    return f"{row['queue_us'] / 1e3:.2f}/{compute / 1e3:.2f}"


def client_cpu_ms(lv: dict) -> float | None:
    sent = lv["requests"] + lv["errors"]
    return lv["client_cpu_s"] * 1e3 / sent if lv.get("client_cpu_s") is not None and sent else None


def table(report: dict) -> str:
    composing = report["server"]["composing_models"]
    header = ["conc", "ok", "errors", "req/s", "mean", "p50", "p90", "p95", "p99", "max",
              "client cpu"]
    header += [f"{m} q/c" for m in composing]
    rows = []
    for lv in report["levels"]:
        lat = lv["latency_ms"] or {}
        rows.append([str(lv["concurrency"]), f"{lv['requests']:,}", str(lv["errors"]),
                     _fmt(lv["throughput_rps"])]
                    + [_fmt(lat.get(k), 2) for k in ("mean", "p50", "p90", "p95", "p99", "max")]
                    + [_fmt(client_cpu_ms(lv), 2)]
                    + [_split_cell(lv["server"].get(m)) for m in composing])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    s, e = report["settings"], report["engine"]
    inputs = report["inputs"]
    lines.insert(1, "-" * len(lines[0]))
    head = (f"{report['label']}: {report['server']['model']} at {report['server']['protocol']}://"
            f"{report['server']['url']}, engine {e['name']}, {inputs['count']:,} texts "
            f"({', '.join(f'{k} {v}' for k, v in inputs['datasets'].items())}), K={inputs['k']}"
            f"{', domain ' + inputs['domain'] if inputs['domain'] else ''}, "
            + (f"{s['duration_s']:g} s" if s.get("duration_s") else f"{s['requests']:,} requests")
            + " per level")
    notes = ["latency in ms, client side; client cpu = the load generator's own CPU ms per "
             "request; q/c = server queue / compute ms per request (Triton statistics)"]
    for lv in report["levels"]:
        if lv["errors"]:
            notes.append(f"concurrency {lv['concurrency']}: {lv['errors']:,} failed; first: "
                         f"{lv['first_error']}")
    return "\n".join([head, *lines, *notes])


def csv_text(report: dict) -> str:
    composing = [report["server"]["model"], *report["server"]["composing_models"]]
    fields = ["label", "engine", "fingerprint", "concurrency", "requests", "errors",
              "throughput_rps"] + [f"{k}_ms" for k in LATENCY_KEYS] + ["client_cpu_ms"]
    phases = ("requests", "avg_batch", "request_us", "queue_us", "compute_input_us",
              "compute_infer_us", "compute_output_us")
    fields += [f"{m}_{p}" for m in dict.fromkeys(composing) for p in phases]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields + ["first_error"])
    writer.writeheader()
    for lv in report["levels"]:
        row = {"label": report["label"], "engine": report["engine"]["name"],
               "fingerprint": report["inputs"]["fingerprint"], "concurrency": lv["concurrency"],
               "requests": lv["requests"], "errors": lv["errors"],
               "throughput_rps": lv["throughput_rps"], "first_error": lv["first_error"] or ""}
        row.update({f"{k}_ms": (lv["latency_ms"] or {}).get(k) for k in LATENCY_KEYS})
        cpu = client_cpu_ms(lv)
        row["client_cpu_ms"] = None if cpu is None else round(cpu, 3)
        for m in dict.fromkeys(composing):
            row.update({f"{m}_{p}": (lv["server"].get(m) or {}).get(p) for p in phases})
        writer.writerow(row)
    return buf.getvalue()


def write(report: dict, out: Path) -> dict[str, Path]:
    """OUT/bench.json, bench.csv, bench.png (each written atomically)."""
    validate(report)
    out = Path(out)
    paths = {"json": write_json_atomic(out / "bench.json", report),
             "csv": write_text_atomic(out / "bench.csv", csv_text(report))}
    paths["png"] = plot([(report["label"], report["levels"])], out / "bench.png",
                        f"{report['label']} — {report['server']['model']}, "
                        f"{report['engine']['name']}, {report['server']['protocol']}")
    return paths
