"""`towerlite bench faults`: faults against a real Triton server under load, what clients see,
and whether it recovers.

    towerlite bench faults --repository runs/repo-history2/portable --out runs/faults

Each fault runs against a fresh server on the repository, under a steady load of
`--concurrency` client threads (towerlite's Client over gRPC, held-out MovieLens users, each
request bounded by `--timeout` seconds):

    stub_kill       SIGKILL the python-backend stub of one model instance (`--stub-model`,
                    default scorer) mid-load
    server_restart  SIGKILL the server (and its stubs), start it again on the same ports, the
                    load running throughout
    deadline        requests whose client deadline (`--deadline-ms`) is shorter than the
                    service time, at the same concurrency; then a normal request, to see
                    whether the server piled up the abandoned work
    release         `towerlite release` of a new tower (--release-user-model /
                    --release-item-model with --release-catalog / --release-history-model) and
                    its rollback, on a hard-linked copy of the repository; every answer checked
                    against the files of the release it names (serving/release/reference.py):
                    failed and mixed answers counted; the server's memory sampled every second
                    (its peak: two releases resident during the switch)

Per fault: requests, errors, their messages, the longest request (a hang would show here), the
time from the fault to the first success and to a clean stretch, and the server's view
(model readiness, stub processes before and after). Writes OUT/faults.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic
from towerlite.machine import cpu_info
from towerlite.serving.cli import _restart_dead_stubs
from towerlite.serving.client import Client, ServingError
from towerlite.serving.triton import StubWatch, launch

from .inputs import held_out_histories, held_out_texts
from .soak import MemorySampler

DESCRIPTION = (
    "Faults against a real Triton server under load, each on a fresh server of the repository "
    "under --concurrency client threads (held-out MovieLens users over gRPC): stub_kill "
    "(SIGKILL one python-backend stub mid-load), server_restart (SIGKILL the server, start it "
    "again on the same ports), deadline (client deadlines below the service time, then a "
    "normal request), release (a release of --release-user-model / --release-history-model and "
    "its rollback, every answer checked against its release's files). Per fault: requests, "
    "errors and their messages, the longest request, the time from the fault to the first "
    "success, the server's view. Writes OUT/faults.json "
    "and prints a table.")

log = logging.getLogger(__name__)


class Load:
    """`threads` clients sending requests in a loop; every outcome recorded with its time."""

    def __init__(self, url: str, model: str, requests: list, threads: int, timeout_s: float,
                 keep_answers: bool = False):
        self.url, self.model, self.requests = url, model, requests
        self.timeout_s, self.threads = timeout_s, threads
        self.records: list[tuple[float, float, str | None]] = []  # (start, seconds, error)
        # (request index, the RELEASE that answered, its scores), when kept
        self.keep_answers = keep_answers
        self.answers: list[tuple[int, int | None, object]] = []
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def _send(self, client: Client, request):
        if isinstance(request, list):
            return client.recommend_history(request, k=10, model=self.model)
        return client.recommend(request, k=10)

    def _run(self, worker: int) -> None:
        i = worker
        client = Client(self.url, timeout_s=self.timeout_s, model=self.model)
        while not self.stop_event.is_set():
            t0 = time.perf_counter()
            error = None
            try:
                got = self._send(client, self.requests[i % len(self.requests)])
                if self.keep_answers:
                    with self.lock:
                        self.answers.append((i % len(self.requests), got.release, got.scores))
            except ServingError as exc:
                error = f"{exc.status or 'no answer'}: {str(exc)[:160]}"
                client.close()
                client = Client(self.url, timeout_s=self.timeout_s, model=self.model)
            with self.lock:
                self.records.append((t0, time.perf_counter() - t0, error))
            if error:
                time.sleep(0.05)  # a failing client backs off a little, as a real one would
            i += self.threads
        client.close()

    def __enter__(self) -> Load:
        for w in self.workers:
            w.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for w in self.workers:
            w.join(self.timeout_s + 5)

    def summary(self, fault_at: float | None = None) -> dict:
        records = sorted(self.records)
        errors = [r for r in records if r[2]]
        out = {"requests": len(records), "errors": len(errors),
               "longest_request_s": round(max((r[1] for r in records), default=0.0), 3),
               "error_kinds": dict(Counter(e[2].split(": ", 1)[0] + ": " + _kind(e[2])
                                           for e in errors).most_common(6)),
               "first_errors": sorted({e[2] for e in errors})[:3]}
        if fault_at is not None:
            after = [r for r in records if r[0] >= fault_at]
            ok_after = [r for r in after if not r[2]]
            last_error = max((r[0] + r[1] for r in after if r[2]), default=None)
            out.update({
                "errors_after_fault": sum(1 for r in after if r[2]),
                "first_success_after_fault_s": round(ok_after[0][0] + ok_after[0][1] - fault_at, 2)
                if ok_after else None,
                "last_error_after_fault_s": None if last_error is None
                else round(last_error - fault_at, 2),
                "served_after_last_error": sum(1 for r in after if not r[2] and last_error
                                               is not None and r[0] > last_error)})
        return out


def _kind(message: str) -> str:
    low = message.lower()
    for key in ("not healthy", "stub", "cannot reach", "deadline", "unavailable", "timeout",
                "timed out", "not ready", "unknown model", "cancelled"):
        if key in low:
            return key
    return message.split(": ", 2)[-1][:60]


def readiness(url: str, models: list[str]) -> dict[str, bool]:
    import tritonclient.grpc as tc

    try:
        with tc.InferenceServerClient(url) as c:
            return {m: bool(c.is_model_ready(m)) for m in models}
    except Exception:  # noqa: BLE001  (a dead server is "not ready")
        return {m: False for m in models}


def stub_kill(args, requests) -> dict:
    server = launch(args.repository, log_path=args.out / "triton-stub_kill.log")
    try:
        before = server.stub_models()
        victim = next(pid for pid, model in before.items() if model == args.stub_model)
        watch, done = StubWatch(server), threading.Event()

        def watching():  # what `towerlite serve` does every second
            while not done.wait(1.0):
                _restart_dead_stubs(watch, "explicit", set())

        watcher = threading.Thread(target=watching, daemon=True)
        with Load(server.grpc_url, args.model, requests, args.concurrency, args.timeout) as load:
            if args.watch_stubs:
                watcher.start()
            time.sleep(args.settle)
            fault_at = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            ready = []
            for _ in range(int(args.watch / 0.5)):
                time.sleep(0.5)
                ready.append(readiness(server.grpc_url, [args.stub_model, args.model]))
        done.set()
        after = server.stub_models()
        watched = ", stubs watched as `towerlite serve` does" if args.watch_stubs else ""
        return {"fault": f"SIGKILL the {args.stub_model} stub (pid {victim}) under load{watched}",
                **load.summary(fault_at), "server_alive": server.alive(),
                "stub_pids_before": sorted(p for p, m in before.items() if m == args.stub_model),
                "stub_pids_after": sorted(p for p, m in after.items() if m == args.stub_model),
                "readiness_samples_not_ready": sum(1 for r in ready if not all(r.values())),
                "ready_at_end": ready[-1] if ready else None,
                "log_lines": [line for line in server.log_text().splitlines()
                              if "stub" in line.lower() or "unhealthy" in line.lower()][:6]}
    finally:
        server.stop()


def server_restart(args, requests) -> dict:
    log_path = args.out / "triton-server_restart.log"
    server = launch(args.repository, log_path=log_path)
    ports = {"http_port": server.http_port, "grpc_port": server.grpc_port,
             "metrics_port": server.metrics_port}
    try:
        with Load(server.grpc_url, args.model, requests, args.concurrency, args.timeout) as load:
            time.sleep(args.settle)
            fault_at = time.perf_counter()
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(10)
            time.sleep(2)  # down for a moment, as a crashed pod is
            restart_at = time.perf_counter()
            server = launch(args.repository, log_path=log_path, **ports)
            ready_s = time.perf_counter() - restart_at
            time.sleep(args.watch)
        summary = load.summary(fault_at)
        return {"fault": "SIGKILL the server (process group) under load, restart on the same ports",
                **summary, "restart_ready_s": round(ready_s, 2),
                "first_success_after_restart_ready_s": None
                if summary["first_success_after_fault_s"] is None
                else round(summary["first_success_after_fault_s"] - (restart_at - fault_at)
                           - ready_s, 2)}
    finally:
        server.stop()


def deadline(args, requests) -> dict:
    import tritonclient.grpc as tc

    server = launch(args.repository, log_path=args.out / "triton-deadline.log")
    try:
        def stats():
            with tc.InferenceServerClient(server.grpc_url) as c:
                s = c.get_inference_statistics(args.model, as_json=True)["model_stats"][0]
                return int(s.get("inference_count", 0))

        baseline = Load(server.grpc_url, args.model, requests, 1, args.timeout)
        with baseline:
            time.sleep(3)
        normal_s = sorted(r[1] for r in baseline.records if not r[2])
        before = stats()
        short = Load(server.grpc_url, args.model, requests, args.concurrency,
                     args.deadline_ms / 1000)
        with short:
            time.sleep(args.watch)
        sent = len(short.records)
        t_end = time.perf_counter()
        executed_by_end = stats() - before
        time.sleep(3)
        executed_later = stats() - before
        probe = Load(server.grpc_url, args.model, requests, 1, args.timeout)
        with probe:
            time.sleep(3)
        after_s = sorted(r[1] for r in probe.records if not r[2])
        fail_s = sorted(r[1] for r in short.records if r[2])
        return {"fault": f"client deadline {args.deadline_ms} ms, below the service time, "
                         f"{args.concurrency} clients for {args.watch} s",
                **short.summary(), "normal_p50_s": _p(normal_s, 50),
                "failed_request_p50_s": _p(fail_s, 50), "failed_request_max_s": _p(fail_s, 100),
                "sent": sent, "executed_by_the_server_by_the_end": executed_by_end,
                "executed_3s_later": executed_later,
                "settle_s": round(time.perf_counter() - t_end, 1),
                "normal_p50_s_after": _p(after_s, 50), "normal_requests_after": len(after_s)}
    finally:
        server.stop()


def release_switch(args, requests) -> dict:
    """A release (--release-user-model and/or --release-history-model) and its rollback under
    load, on a hard-linked copy of the repository (OUT/repo: the original is not touched);
    every answer checked against the files of the release its RELEASE output names."""
    import shutil

    from towerlite.serving import catalog as cat
    from towerlite.serving.release import ReleaseRequest, current_release, release, rollback
    from towerlite.serving.release.reference import ReleaseReference

    if not (args.release_user_model or args.release_item_model or args.release_history_model):
        raise TowerliteError("the release fault needs a new tower: --release-user-model EXPORT, "
                             "--release-item-model EXPORT and/or --release-history-model "
                             "TOWER_DIR")
    repo = args.out / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(args.repository, repo, copy_function=os.link)  # configs are replaced, not
    # written in place, and a release only adds folders: the original stays as it was
    serving = current_release(repo)
    if cat.read_catalog(repo / "scorer" / str(serving) / "catalog")[2].get("index"):
        raise TowerliteError("the release fault checks every answer against exact search: "
                             "deploy the repository with --index exact")
    request = ReleaseRequest(
        repo, user_model=args.release_user_model, variant=args.release_variant,
        item_model=args.release_item_model, item_variant=args.release_item_variant,
        catalog=args.release_catalog, history_model=args.release_history_model,
        progress=True)  # checked before the server starts
    server = launch(repo, log_path=args.out / "triton-release.log")
    memory = MemorySampler(server, every=1.0)
    try:
        memory.start()
        with Load(server.grpc_url, args.model, requests, args.concurrency, args.timeout,
                  keep_answers=True) as load:
            time.sleep(args.settle)
            marks = {"release": _now(memory)}
            done = release(replace(request, urls=(server.grpc_url,)))
            marks["released"] = _now(memory)
            time.sleep(args.settle)
            marks["rollback"] = _now(memory)
            back = rollback(repo, [server.grpc_url])
            marks["rolled_back"] = _now(memory)
            time.sleep(args.settle)
        memory.stop()
        reference = ReleaseReference(repo)
        wrong = sum(not reference.matches(number, requests[i], scores)
                    for i, number, scores in load.answers)
        return {"fault": f"release {done['release']} ({', '.join(done['changed'])}) and its "
                         f"rollback to {back['release']}, under load",
                **load.summary(marks["release"][0]),
                "release_write_s": done["write_seconds"],
                "latency_ms": _latency_by_phase(load.records, marks),
                "server_memory_mb": _memory_by_phase(memory.samples, marks),
                "bench_process_peak_rss_mb": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                "answers_by_release": {str(k): v for k, v in
                                       sorted(Counter(a[1] for a in load.answers).items(),
                                              key=lambda kv: str(kv[0]))},
                "answers_not_their_release": wrong,
                "release_switch_s": done["switched"][0]["seconds"],
                "rollback_switch_s": back["switched"][0]["seconds"]}
    finally:
        server.stop()


def _now(memory: MemorySampler) -> tuple[float, float]:
    """(perf_counter, seconds on the memory sampler's clock): the load's records and the memory
    samples keep time on different clocks."""
    return time.perf_counter(), time.monotonic() - memory.began


def _phases(marks: dict) -> dict[str, tuple[str | None, str | None]]:
    return {"before": (None, "release"), "release_write_and_switch": ("release", "released"),
            "on_new_release": ("released", "rollback"), "rollback": ("rollback", "rolled_back"),
            "after": ("rolled_back", None)}


def _latency_by_phase(records: list, marks: dict) -> dict:
    """p50 / p99 / max ms of the successful requests started in each phase."""
    out = {}
    for phase, (a, b) in _phases(marks).items():
        lo = marks[a][0] if a else float("-inf")
        hi = marks[b][0] if b else float("inf")
        ms = sorted(r[1] * 1e3 for r in records if lo <= r[0] < hi and not r[2])
        out[phase] = {"requests": len(ms), "p50": _p(ms, 50), "p99": _p(ms, 99),
                      "max": round(ms[-1], 1) if ms else None}
    return out


def _memory_by_phase(samples: list[dict], marks: dict) -> dict:
    """The server's (Triton + python stubs) largest and last RSS and PSS in each phase (the
    largest after a switch includes the old release's stubs, which Triton stops a few seconds
    after the switch returns)."""
    out = {}
    for phase, (a, b) in _phases(marks).items():
        lo = marks[a][1] if a else float("-inf")
        hi = marks[b][1] if b else float("inf")
        inside = [m for m in samples if lo <= m["t_s"] < hi]
        out[phase] = {"samples": len(inside),
                      "rss_max": max((m["rss_mb"] for m in inside), default=None),
                      "pss_max": max((m["pss_mb"] for m in inside), default=None),
                      "rss_last": inside[-1]["rss_mb"] if inside else None,
                      "pss_last": inside[-1]["pss_mb"] if inside else None}
    return out


def _p(values: list[float], q: int) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * q / 100))], 4)


FAULTS = {"stub_kill": stub_kill, "server_restart": server_restart, "deadline": deadline,
          "release": release_switch}
DEFAULT_FAULTS = ("stub_kill", "server_restart", "deadline")  # release needs a new tower


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repository", type=Path, required=True, help="a portable flavor folder")
    p.add_argument("--model", default="recommend_history_fused",
                   help="the model under load (a HISTORY model or a TEXT one)")
    p.add_argument("--stub-model", default="history_scorer",
                   help="stub_kill: whose python stub to kill")
    p.add_argument("--faults", default=",".join(DEFAULT_FAULTS),
                   help=f"comma-separated, in order: {', '.join(FAULTS)} (default "
                        f"{','.join(DEFAULT_FAULTS)})")
    p.add_argument("--release-user-model", type=Path, metavar="EXPORT_DIR",
                   help="release: the new user tower (an export folder)")
    p.add_argument("--release-variant", default="int8_dynamic",
                   help="release: its ONNX variant (default int8_dynamic)")
    p.add_argument("--release-item-model", type=Path, metavar="EXPORT_DIR",
                   help="release: the new item tower (an export folder); the whole catalog is "
                        "re-embedded by it (--release-catalog)")
    p.add_argument("--release-item-variant",
                   help="release: the item tower's ONNX variant (default: --release-variant)")
    p.add_argument("--release-catalog", choices=("movielens", "bookcrossing", "both"),
                   help="release: the packaged catalog the new item tower embeds (the one the "
                        "repository was deployed with)")
    p.add_argument("--release-history-model", type=Path, metavar="TOWER_DIR",
                   help="release: the new history tower (towerlite history / fold-in output)")
    p.add_argument("--watch-stubs", action="store_true",
                   help="stub_kill: restart dead stubs as `towerlite serve` does (serving.triton."
                        "StubWatch); without it, what the bare server does")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a request may take")
    p.add_argument("--deadline-ms", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds of load before the fault")
    p.add_argument("--watch", type=float, default=15.0, help="seconds of load after it")
    p.add_argument("--out", type=Path, default=Path("runs/faults"),
                   help="report folder (default runs/faults)")


def command(args: argparse.Namespace) -> int:
    unknown = [f for f in args.faults.split(",") if f not in FAULTS]
    if unknown:
        raise TowerliteError(f"--faults {','.join(unknown)}: known faults are "
                             f"{', '.join(FAULTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    history = "history" in args.model
    requests = [h for h, _ in held_out_histories("movielens", 200)] if history else \
        [t for t, _ in held_out_texts("movielens", 200)]
    results = {}
    for name in args.faults.split(","):
        log.info(f"fault {name} …")
        results[name] = FAULTS[name](args, requests)
        log.info(json.dumps(results[name], indent=1))
    report = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), "repository": str(args.repository),
              "model": args.model, "concurrency": args.concurrency, "timeout_s": args.timeout,
              "machine": cpu_info(), "faults": results}
    write_json_atomic(args.out / "faults.json", report)
    print(f"{'fault':<16} {'requests':>8} {'errors':>7} {'longest s':>9} {'1st ok after s':>14}")
    for name, r in results.items():
        print(f"{name:<16} {r['requests']:>8} {r['errors']:>7} {r['longest_request_s']:>9} "
              f"{str(r.get('first_success_after_fault_s', '-')):>14}")
        if "answers_not_their_release" in r:
            print(f"{'':<16} answers by release {r['answers_by_release']}, not their release's "
                  f"scores: {r['answers_not_their_release']}")
            for phase, mem in r["server_memory_mb"].items():
                lat = r["latency_ms"][phase]
                print(f"{'':<16} {phase:<25} server RSS/PSS max {mem['rss_max']} / "
                      f"{mem['pss_max']} MB, last {mem['rss_last']} / {mem['pss_last']} MB; "
                      f"p50/p99 {lat['p50']} / {lat['p99']} ms ({lat['requests']} ok)")
    print(f"report: {args.out / 'faults.json'}")
    return 0
