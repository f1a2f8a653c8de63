"""perf_analyzer as a load generator, parsed into the same `Measured` as the built-in one.

Where the binary comes from (DESIGN.md): tritonclient 2.51's manylinux1 wheel carries it as a
data script, so `pip install tritonclient==2.51.0` puts it in the environment's bin/; failing
that it is extracted from the downloaded wheel into $TOWERLITE_HOME/perf_analyzer/bin/. It is
linked against libb64.so.0d and libcudart.so.12, which plain Linux machines lack but the
nvidia-pytriton wheel bundles (under hashed names): they are symlinked under their own names
into $TOWERLITE_HOME/perf_analyzer/lib/ and put on LD_LIBRARY_PATH. Newer perf_analyzer builds
need a newer glibc; any binary that does not start raises `PerfAnalyzerUnavailable`, which
`--engine auto` answers by using the built-in generator.

One perf_analyzer process per concurrency level, so the server statistics can be read between
levels. It is fed an --input-data JSON of the request texts and writes a profile export with
every request's send and response timestamps: latencies and throughput are computed from those
exactly as the built-in engine computes them; perf_analyzer's own CSV line is kept beside them.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from towerlite.errors import TowerliteError
from towerlite.files import write_json_atomic

from .builtin import Load
from .inputs import RequestSet, perf_analyzer_data
from .measured import Measured, cpu_seconds

WHEEL = "tritonclient==2.51.0"
WHEEL_MEMBER = re.compile(r"^tritonclient-[^/]+\.data/data/bin/perf_analyzer$")
LIBS = {"libb64.so.0d": "libb64-*.so.0d", "libcudart.so.12": "libcudart-*.so.12*"}
NEVER_UNSTABLE = "1000000"  # --stability-percentage: report the windows we asked for, as they are

log = logging.getLogger(__name__)


class PerfAnalyzerUnavailable(TowerliteError):
    """The binary is missing or cannot run on this machine."""


def tool_dir() -> Path:
    from towerlite.home import writable_home

    return writable_home() / "perf_analyzer"


def find_binary(explicit: Path | None = None) -> Path | None:
    if explicit is not None:
        if not Path(explicit).is_file():
            raise PerfAnalyzerUnavailable(f"--perf-analyzer {explicit} does not exist")
        return Path(explicit)
    for candidate in (shutil.which("perf_analyzer"), Path(sys.executable).parent / "perf_analyzer",
                      tool_dir() / "bin" / "perf_analyzer"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def install() -> Path:
    """Extract perf_analyzer from tritonclient 2.51's wheel (pip download, no install)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise PerfAnalyzerUnavailable("perf_analyzer is not on PATH and tritonclient's wheel "
                                      "carries it only for Linux x86_64")
    target = tool_dir() / "bin" / "perf_analyzer"
    log.info(f"perf_analyzer: not found; extracting it from {WHEEL}'s wheel into "
             f"{target.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        try:  # bounded: on a machine without an index, auto must fall back, not hang
            got = subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps",
                                  "--only-binary=:all:", "-d", tmp, "-q", "--timeout", "30",
                                  "--retries", "1"], capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise PerfAnalyzerUnavailable(f"downloading {WHEEL} took over 300 s") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if got.returncode or not wheels:
            why = (got.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise PerfAnalyzerUnavailable(f"could not download {WHEEL}: {why}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = next((n for n in wheel.namelist() if WHEEL_MEMBER.match(n)), None)
            if member is None:
                raise PerfAnalyzerUnavailable(f"{wheels[0].name} holds no perf_analyzer")
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(f".perf_analyzer.{os.getpid()}")
            with wheel.open(member) as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def lib_dir() -> Path:
    """A folder with libb64.so.0d and libcudart.so.12 linked from nvidia-pytriton's libs."""
    from towerlite.serving.triton import pytriton_package

    try:
        bundled = pytriton_package().parent / "nvidia_pytriton.libs"
    except TowerliteError:
        raise PerfAnalyzerUnavailable("nvidia-pytriton (which bundles libb64 and libcudart for "
                                      "perf_analyzer) is not installed") from None
    folder = tool_dir() / "lib"
    folder.mkdir(parents=True, exist_ok=True)
    for name, pattern in LIBS.items():
        found = sorted(glob.glob(str(bundled / pattern)))
        if not found:
            raise PerfAnalyzerUnavailable(f"{bundled} has no {pattern} for perf_analyzer")
        link = folder / name
        if not (link.is_symlink() and os.readlink(link) == found[0]):
            tmp = folder / f".{name}.{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(found[0])
            tmp.replace(link)  # atomic: a concurrent run never sees a missing link
    return folder


def _env(libs: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(libs), env.get("LD_LIBRARY_PATH"))
                                             if p)
    return env


def check(binary: Path, env: dict[str, str]) -> str:
    """perf_analyzer's version line; PerfAnalyzerUnavailable when it does not start."""
    try:
        got = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             env=env, timeout=60)
    except OSError as exc:
        raise PerfAnalyzerUnavailable(f"{binary} cannot run here: {exc.strerror or exc}") from None
    except subprocess.TimeoutExpired:
        raise PerfAnalyzerUnavailable(f"{binary} --version did not return in 60 s") from None
    text = (got.stdout + got.stderr).strip()
    if got.returncode != 0:
        why = next((ln for ln in text.splitlines() if ln.strip()), f"exit {got.returncode}")
        raise PerfAnalyzerUnavailable(f"{binary} cannot run here: {why.strip()}")
    return text.splitlines()[0] if text else "perf_analyzer"


def level_command(binary: Path, url: str, protocol: str, model: str, data: Path,
                  concurrency: int, load: Load, csv_path: Path, export: Path) -> list[str]:
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "--input-data", str(data),
           "--concurrency-range", f"{concurrency}:{concurrency}", "-f", str(csv_path),
           "--profile-export-file", str(export), "--max-threads", str(max(16, concurrency))]
    if load.requests is not None:
        return cmd + ["--request-count", str(load.requests)]
    # three windows (the fewest perf_analyzer accepts) that add up to the duration, never
    # "unstable": a busy machine must give a measurement, not an abort
    window_ms = max(100, round(load.duration_s * 1000 / 3))
    return cmd + ["-p", str(window_ms), "-r", "3", "-s", NEVER_UNSTABLE]


def parse_export(path: Path, concurrency: int, by_count: bool) -> tuple[list[float], float]:
    """(latencies in s, wall time in s) from a --profile-export-file. With --request-count,
    perf_analyzer closes its window on a one-second polling grid (20 requests of 15 ms read as
    a 1.0 s window), so the wall time is first send → last response, as the built-in engine
    measures it; with time windows it is the windows' length, traffic running throughout."""
    data = json.loads(path.read_text())
    experiment = next((e for e in data.get("experiments", [])
                       if e.get("experiment", {}).get("value") == concurrency), None)
    if experiment is None:
        raise TowerliteError(f"{path}: no experiment at concurrency {concurrency}")
    done = [r for r in experiment["requests"] if r.get("response_timestamps")]
    latencies = [(r["response_timestamps"][-1] - r["timestamp"]) / 1e9 for r in done]
    if by_count:
        if not done:
            return [], 0.0
        span = max(r["response_timestamps"][-1] for r in done) - min(r["timestamp"] for r in done)
        return latencies, span / 1e9
    bounds = experiment.get("window_boundaries") or [0, 0]
    return latencies, (bounds[-1] - bounds[0]) / 1e9


def parse_csv(path: Path) -> dict:
    """perf_analyzer's own line: throughput and latency percentiles (µs → ms)."""
    with open(path, newline="") as f:
        row = next(csv.DictReader(f), None)
    if not row:
        return {}
    own = {"throughput_rps": float(row["Inferences/Second"])}
    for key, value in row.items():
        m = re.fullmatch(r"(p\d+|Avg) latency", key or "")
        if m and value:
            own[f"{m.group(1).lower()}_ms"] = round(float(value) / 1e3, 3)
    return own


_THREAD_ERROR = re.compile(r"Thread \[\d+\] had error: (.*)")


def failed_level(output: str, concurrency: int, model: str) -> Measured | None:
    """perf_analyzer aborts a level at its first failed request: the failures it printed are
    the errors (the completed requests before them are not reported)."""
    errors = [m.group(1).strip() for m in _THREAD_ERROR.finditer(output)]
    if not errors:
        return None
    first = errors[0]
    prefix = f"in ensemble '{model}', "
    first = first[len(prefix):] if first.startswith(prefix) else first
    return Measured(concurrency, [], 0.0, errors=len(errors), first_error=first,
                    notes=["perf_analyzer stops at the first failed request; the requests it "
                           "completed before are not reported"])


class PerfAnalyzerEngine:
    name = "perf_analyzer"

    def __init__(self, protocol: str, workdir: Path, binary: Path | None = None):
        self.protocol, self.workdir = protocol, Path(workdir)
        found = find_binary(binary) or install()
        self.env = _env(lib_dir())
        version = check(found, self.env)
        self.binary = found
        self.detail = {"binary": str(found), "version": version, "library_path": str(lib_dir()),
                       "input_data": str(self.workdir / "input_data.json")}
        self._data_for: str | None = None

    def _input_data(self, requests: RequestSet) -> Path:
        path = self.workdir / "input_data.json"
        if self._data_for != requests.fingerprint:
            write_json_atomic(path, perf_analyzer_data(requests))
            self._data_for = requests.fingerprint
        return path

    def run_level(self, url: str, model: str, requests: RequestSet, concurrency: int,
                  load: Load, timeout: float) -> Measured:
        data = self._input_data(requests)
        csv_path = self.workdir / f"perf_analyzer_c{concurrency}.csv"
        export = self.workdir / f".profile_c{concurrency}.json"
        cmd = level_command(self.binary, url, self.protocol, model, data, concurrency, load,
                            csv_path, export)
        limit = 120 + (3 * load.duration_s if load.duration_s else load.requests * timeout)
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
        try:
            got = subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                                 timeout=limit)
        except subprocess.TimeoutExpired:
            raise TowerliteError(f"perf_analyzer did not finish concurrency {concurrency} in "
                                 f"{limit:.0f} s") from None
        cpu = cpu_seconds(resource.RUSAGE_CHILDREN) - cpu
        output = got.stdout + got.stderr
        (self.workdir / f"perf_analyzer_c{concurrency}.log").write_text(output)
        try:
            if got.returncode != 0 or not export.is_file():
                failed = failed_level(output, concurrency, model)
                if failed is None:
                    tail = " | ".join(ln.strip() for ln in output.strip().splitlines()[-3:])
                    raise TowerliteError(f"perf_analyzer failed at concurrency {concurrency} "
                                         f"(exit {got.returncode}): {tail}")
                failed.client_cpu_s = cpu
                return failed
            latencies, wall = parse_export(export, concurrency, load.requests is not None)
        finally:
            export.unlink(missing_ok=True)  # it holds every response: megabytes, not needed
        notes = (["perf_analyzer's own throughput (engine_own) divides by a window rounded up "
                  "to whole seconds under --request-count"] if load.requests is not None else [])
        return Measured(concurrency, latencies, wall, notes=notes, engine_own=parse_csv(csv_path),
                        client_cpu_s=cpu)
