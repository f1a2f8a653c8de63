"""The server-side split: Triton's statistics API read before and after a concurrency level.

Triton keeps cumulative counters per model (requests, executions, and nanoseconds spent in the
queue and in compute input / infer / output); the difference of two snapshots divided by the
request count is where this level's requests spent their time in each composing model. Only the
benchmark sends requests while it runs, so the counts equal the requests sent (a check that the
split belongs to this level).
"""

from __future__ import annotations

from towerlite.errors import TowerliteError

from .probe import one_line, sync_client, unreachable

PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def _int(entry: dict | None, key: str) -> int:
    # gRPC's JSON leaves zero fields out and writes int64 as strings
    return int((entry or {}).get(key, 0) or 0)


def snapshot(url: str, protocol: str, models: list[str], timeout: float = 10.0) -> dict:
    """{model: cumulative counters} for `models` (latest version of each)."""
    client = sync_client(url, protocol, timeout)
    try:
        if protocol == "grpc":
            raw = client.get_inference_statistics(as_json=True, client_timeout=timeout)
        else:
            raw = client.get_inference_statistics()
    except Exception as exc:  # noqa: BLE001  (the server went away between levels)
        raise TowerliteError(unreachable(url, protocol, f"reading its statistics: "
                                                        f"{one_line(exc)}")) from None
    finally:
        client.close()
    out: dict[str, dict] = {}
    for entry in raw.get("model_stats", []):
        name = entry["name"]
        if name not in models:
            continue
        stats = entry.get("inference_stats", {})
        counters = {"inferences": _int(entry, "inference_count"),
                    "executions": _int(entry, "execution_count"),
                    "success": _int(stats.get("success"), "count"),
                    "success_ns": _int(stats.get("success"), "ns"),
                    "fail": _int(stats.get("fail"), "count")}
        for phase in PHASES:
            counters[f"{phase}_ns"] = _int(stats.get(phase), "ns")
        version = int(entry.get("version") or 0)
        if name not in out or version >= out[name]["version"]:
            out[name] = {"version": version, **counters}
    return out


def delta(before: dict, after: dict) -> dict:
    """{model: {requests, failed, executions, avg_batch, request_us, queue_us, compute_*_us}}:
    means per successful request over the interval between the two snapshots."""
    split = {}
    for name, end in after.items():
        start = before.get(name, {})
        d = {k: v - start.get(k, 0) for k, v in end.items() if k != "version"}
        n = d["success"]
        row = {"requests": n, "failed": d["fail"], "executions": d["executions"],
               "avg_batch": (round(d["inferences"] / d["executions"], 2) if d["executions"]
                             else None),
               "request_us": round(d["success_ns"] / n / 1e3, 1) if n else None}
        for phase in PHASES:
            row[f"{phase}_us"] = round(d[f"{phase}_ns"] / n / 1e3, 1) if n else None
        split[name] = row
    return split
