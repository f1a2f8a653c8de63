"""The machine a number was measured on, in one place: the CPU model, the vector-instruction
flags onnxruntime's and PyTorch's kernels dispatch on, and the core count.

Every benchmark and report records this beside its numbers (export's report and every
`towerlite bench` subcommand: serving, encoders, memory, sweep, the GPU runs). int8
latency depends on the instruction set far more than on the clock: onnxruntime's int8 GEMM
takes the avx512_vnni (or avx_vnni / amx_int8) path where the CPU has it and a slower AVX2
path otherwise, and the two round differently, so a figure without its flags cannot be
compared with another one.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# the flags the fp32/int8 kernels choose between (x86); anything amx_* present is kept as well
RELEVANT_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw",
                  "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")


def cpu_info(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """{"cpu_model": str, "cpu_flags": [the RELEVANT_FLAGS present, in that order, then any
    other amx_*], "cores": os.cpu_count()}, read from the first processor of /proc/cpuinfo
    (platform.processor() and no flags where there is none, e.g. off Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    model, flags = "", None
    for line in text.splitlines():
        if not line.strip() and flags is not None:
            break  # the first processor's block is enough: they are all the same model
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and flags is None:  # Features: the ARM spelling
            flags = set(value.split())
    flags = flags or set()
    present = [f for f in RELEVANT_FLAGS if f in flags]
    present += sorted(f for f in flags if f.startswith("amx") and f not in present)
    return {"cpu_model": model or platform.processor() or platform.machine() or "unknown",
            "cpu_flags": present, "cores": os.cpu_count()}


HALT_POLL = "module/haltpoll/parameters/guest_halt_poll_ns"


def cpu_idle(sys_root: str | Path = "/sys") -> dict:
    """{"cpuidle_driver": the kernel's cpuidle driver (None where there is none),
    "halt_poll_ns": how long an idle vCPU of a KVM guest polls before it halts (the haltpoll
    driver's guest_halt_poll_ns; None where that driver is absent)}. A latency measured at
    concurrency 1 depends on it: on a 2-core guest that halted at once (0), Triton's python
    backend answered 0.3 ms later at p50 and 1.5 ms later at p99 than polling up to 2 ms
    (docs/benchmarks.md, 2026-12-02)."""
    root = Path(sys_root)

    def read(path: str) -> str | None:
        try:
            return (root / path).read_text().strip() or None
        except OSError:
            return None

    poll = read(HALT_POLL)
    return {"cpuidle_driver": read("devices/system/cpu/cpuidle/current_driver"),
            "halt_poll_ns": int(poll) if poll and poll.isdigit() else None}


def set_halt_poll(ns: int, sys_root: str | Path = "/sys") -> None:
    """Sets a KVM guest's halt polling (guest_halt_poll_ns; root, the haltpoll cpuidle driver):
    the benchmark scripts that measure what it does alternate it, and put it back."""
    from .errors import TowerliteError

    path = Path(sys_root) / HALT_POLL
    try:
        path.write_text(str(int(ns)))
    except OSError as exc:
        raise TowerliteError(f"cannot set {path} ({exc}): halt polling is a KVM guest's "
                             "(the haltpoll cpuidle driver), set as root") from exc


def usable_cores() -> int | None:
    """The cores this process may run on (its affinity), which a container can make fewer
    than `cores`."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, rounded to 0.01 (None where the OS has none): how
    busy the machine was around a measurement."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def nvidia_smi(query: str) -> str | None:
    """`nvidia-smi --query-gpu=QUERY --format=csv,noheader`'s output, stripped (one line a GPU,
    empty when it prints nothing); None where nvidia-smi is missing or does not answer in 30 s."""
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(*packages: str) -> dict[str, str | None]:
    """Python's and each installed distribution's version (None when it is not installed): the
    software half of every report's provenance, beside cpu_info."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in packages:
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out
