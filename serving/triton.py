"""Start and stop a real local Triton server: the 2.51 binary inside the `nvidia-pytriton` wheel.

    with start_server("model_repository/portable") as server:
        print(server.http_url, server.grpc_url)

What it takes on a plain Linux machine (see DESIGN.md): a backend directory holding the wheel's
python backend and the stub built for this Python, the wheel's bundled libraries and this
Python's libdir on LD_LIBRARY_PATH, this environment's `bin/` first on PATH (the stub runs the
first `python3` there, so model.py files see this environment's numpy, onnxruntime, tokenizers).
Ports are picked free on 127.0.0.1 and a random `--id` is checked on `/v2`: a port clash shows
only after the models load, as the other server answering.

Model control: `explicit` (default) loads every model at start (`--load-model=*`) and keeps
Triton's repository API open, so `towerlite catalog update` can load the scorer's next version
on a running server; the old version answers until the new one is ready. Not `poll`: polling
loads whatever appears on disk at the next scan with nobody to hear a failed load, and it turns
the repository API off. `none` locks the model set (nothing can be loaded or unloaded over the
API; a catalog update then takes a restart). Anyone who reaches the ports can call that API,
which is one more reason the server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from towerlite.errors import TowerliteError

READY_TIMEOUT_S = 180.0
MODEL_CONTROL_MODES = ("explicit", "none")


def pytriton_package() -> Path:
    """site-packages/pytriton, found without importing it (its __init__ imports pytriton's own
    client stack, which the server binary does not need)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TowerliteError("nvidia-pytriton is not installed (it carries the Triton server "
                             "binary); install the project's pinned dependencies")
    return Path(list(spec.submodule_search_locations)[0])


def pytriton_root() -> Path:
    """site-packages/pytriton/tritonserver of the installed nvidia-pytriton wheel."""
    root = pytriton_package() / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise TowerliteError(f"{root}/bin/tritonserver is missing: the nvidia-pytriton install "
                             "is incomplete; reinstall nvidia-pytriton==0.7.0")
    return root


def backend_directory(cache: Path | None = None) -> Path:
    """A --backend-directory whose python/ holds the wheel's backend and this Python's stub."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TowerliteError(f"nvidia-pytriton has no python backend stub for Python {version}")
    if cache is None:
        from towerlite.home import writable_home

        cache = writable_home() / "triton" / f"backends-py{version}"
    python_dir = cache / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for src in (root / "backends" / "python" / "libtriton_python.so",
                root / "backends" / "python" / "triton_python_backend_utils.py", stub):
        dst = python_dir / src.name
        if not dst.is_file() or dst.stat().st_size != src.stat().st_size:
            tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
            shutil.copy2(src, tmp)
            tmp.replace(dst)
    return cache


def server_env() -> dict[str, str]:
    """The environment tritonserver and its python stubs need."""
    libs = pytriton_package().parent / "nvidia_pytriton.libs"
    pylib = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(libs), pylib, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    # One BLAS/OpenMP thread in each python model (instances are the parallelism): numpy's
    # OpenBLAS otherwise starts a spinning thread per core in every stub process — on a 16-core
    # GPU machine the server burned 57.7 ms of CPU a request at concurrency 1, 3.5 ms with one
    # thread, at the same throughput (docs/benchmarks.md, GPU). A value set by the user stays.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        env.setdefault(var, "1")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, dict | None]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
            return r.status, (json.loads(body) if body else None)
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA memory pool",
          "failed to load all models")


def explain_log(log_text: str, max_lines: int = 6) -> str:
    """Why a Triton log says it did not start: each model's own load error first, then port
    errors, then the last error lines (CUDA/NVML noise of a CPU machine left out)."""
    problems = []
    for m in re.finditer(r"failed to load '([^']+)' version (\d+): (.*)$", log_text, re.MULTILINE):
        detail = m.group(3).rstrip('"').replace("\\n", " ")
        problems.append(f"model '{m.group(1)}' (version {m.group(2)}) failed to load: "
                        f"{' '.join(detail.split())}")
    for line in log_text.splitlines():
        if re.search(r"address already in use|failed to start \w+ service|socket .* in use",
                     line, re.IGNORECASE):
            problems.append(" ".join(line.split()))
    if not problems:
        problems = [" ".join(ln.split()) for ln in log_text.splitlines()
                    if re.match(r"^(E\d{4}|error:)", ln) and not any(n in ln for n in _NOISE)]
        problems = problems or [" ".join(ln.split()) for ln in log_text.splitlines()[-3:]]
    picked = list(dict.fromkeys(problems))[:max_lines]
    return "\n  ".join(picked) if picked else "(the server log is empty)"


@dataclass
class TritonServer:
    """A running tritonserver process (see `start_server`)."""

    repository: Path
    host: str
    http_port: int
    grpc_port: int
    metrics_port: int
    server_id: str
    log_path: Path
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _pids(self) -> list[int]:
        """The server and its python-backend stub processes (none when it is not running)."""
        return [self.process.pid] + _children(self.process.pid) if self.alive() else []

    def _proc_field(self, file: str, key: str) -> int:
        """Sum over the server's processes of a /proc/PID/FILE line `key: N kB`, in bytes."""
        total = 0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                    if line.startswith(key):
                        total += int(line.split()[1]) * 1024
        return total

    def rss_bytes(self) -> int:
        """Resident memory of the server and its python-backend stub processes."""
        return self._proc_field("status", "VmRSS:")

    def pss_bytes(self) -> int:
        """Proportional set size (shared pages such as the memory-mapped catalog counted once)."""
        return self._proc_field("smaps_rollup", "Pss:")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server and its stub processes have used so far."""
        total = 0.0
        for pid in self._pids():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, wait for Triton's own clean shutdown, SIGKILL the group if it hangs."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


    def stub_models(self) -> dict[int, str]:
        """{pid: model name} of the server's python-backend stub processes (one per instance;
        a fused model's stub runs its steps' code in-process, under the fused model's name)."""
        out = {}
        for pid in _children(self.process.pid) if self.alive() else []:
            with contextlib.suppress(OSError):
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                path = next((a for a in args if a.endswith(b"model.py")), None)
                if path:
                    out[pid] = Path(path.decode()).parts[-3]  # MODEL/VERSION/model.py
        return out


class StubWatch:
    """Notices python-backend stubs that died while the server lives, and restarts them.

    Measured with Triton 2.51 (`bench faults`, docs/serving.md): after a stub is killed the
    server keeps reporting the model READY, never restarts the stub, and every request the
    scheduler hands that instance fails after about 1 s with INTERNAL "Stub process … is not
    healthy" — about one request a second, for as long as the server runs. A plain load_model
    does nothing (the files are unchanged); a load with a changed config makes Triton build new
    instances and swap them in, the healthy ones answering meanwhile."""

    def __init__(self, server: TritonServer):
        self.server = server
        self.instances: dict[str, int] = {}  # model → configured instances (= its stubs)
        self.suspect: set[str] = set()
        self.restarts = 0
        with self._client() as client:  # every loaded python model, even one whose stubs die
            for entry in client.get_model_repository_index(as_json=True).get("models", []):
                if entry.get("state") == "READY":
                    self._register(client, entry["name"])

    def _client(self):
        import tritonclient.grpc as grpcclient

        return grpcclient.InferenceServerClient(self.server.grpc_url)

    def _register(self, client, model: str) -> None:
        config = client.get_model_config(model, as_json=True).get("config", {})
        if config.get("backend") == "python":
            self.instances[model] = sum(int(g.get("count", 1))
                                        for g in config.get("instance_group", [])) or 1

    def dead(self) -> list[str]:
        """Ready models with fewer live stubs than configured instances, twice in a row (a
        reload briefly runs old and new stubs side by side, never fewer)."""
        live: dict[str, int] = {}
        for model in self.server.stub_models().values():
            live[model] = live.get(model, 0) + 1
        short = []
        with self._client() as client:
            for model in set(live) - set(self.instances):  # loaded since
                self._register(client, model)
            for model in self.instances:
                if live.get(model, 0) < self.instances[model] and client.is_model_ready(model):
                    short.append(model)
        found = [m for m in short if m in self.suspect]
        self.suspect = set(short) - set(found)
        return found

    def restart(self, model: str) -> float:
        """Reload `model` with a config Triton sees as changed; seconds until it is ready."""
        self.restarts += 1
        t0 = time.perf_counter()
        with self._client() as client:
            config = client.get_model_config(model, as_json=True).get("config", {})
            config.setdefault("parameters", {})["TOWERLITE_STUB_RESTART"] = {
                "string_value": str(self.restarts)}
            client.load_model(model, config=json.dumps(config))
        return time.perf_counter() - t0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies (Linux PR_SET_PDEATHSIG, kept
    across exec; `nice` execs into the server)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def _children(pid: int) -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out.append(int(child))
            out.extend(_children(int(child)))
    return out


def launch(repository: str | Path, *, host: str = "127.0.0.1", http_port: int | None = None,
           grpc_port: int | None = None, metrics_port: int | None = None,
           log_path: str | Path | None = None, extra_args: list[str] | None = None,
           ready_timeout: float = READY_TIMEOUT_S, nice: int = 0,
           model_control: str = "explicit") -> TritonServer:
    """Start tritonserver on `repository` and wait until it is ready and answers with our id.
    `model_control`: explicit (every model loaded at start, the repository API open for
    `towerlite catalog update`) or none (the model set is fixed).

    Raises TowerliteError naming the cause (port taken, the model's own load error, …) when it
    does not come up; the process is stopped before raising."""
    if model_control not in MODEL_CONTROL_MODES:
        raise TowerliteError(f"unknown model control mode {model_control!r}; choose from "
                             f"{', '.join(MODEL_CONTROL_MODES)}")
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise TowerliteError(f"{repository}: no such model repository (run `towerlite deploy`)")
    if not any(p.joinpath("config.pbtxt").is_file() for p in repository.iterdir() if p.is_dir()):
        raise TowerliteError(f"{repository} holds no model (no */config.pbtxt); point --repository "
                             "at a flavor folder written by `towerlite deploy`, e.g. "
                             "model_repository/portable")
    ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
    for name, port in ports.items():
        if port is not None and port_in_use(port, host):
            raise TowerliteError(f"port {port} ({name}) on {host} is already in use; pick another "
                                 f"with --{name}-port or stop what holds it")
    ports = {k: v or free_port(host) for k, v in ports.items()}
    server_id = f"towerlite-{uuid.uuid4().hex[:12]}"
    if log_path is None:
        log_path = Path(tempfile.mkdtemp(prefix="towerlite-triton-")) / "tritonserver.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(pytriton_root() / "bin" / "tritonserver"),
           f"--model-repository={repository}", f"--backend-directory={backend_directory()}",
           f"--id={server_id}", f"--http-address={host}", f"--grpc-address={host}",
           f"--metrics-address={host}", f"--http-port={ports['http']}",
           f"--grpc-port={ports['grpc']}", f"--metrics-port={ports['metrics']}",
           "--allow-http=true", "--allow-grpc=true", "--allow-metrics=true",
           "--exit-on-error=true", "--strict-readiness=true", "--log-verbose=0",
           *_model_control_args(model_control), *(extra_args or [])]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    log = open(log_path, "wb")  # noqa: SIM115  (the child keeps writing it)
    try:
        # started from the main thread (all of towerlite's callers), the server dies with its
        # parent: a SIGKILLed `towerlite serve` or test run otherwise leaves an orphaned Triton
        # holding its ports and memory (it happened: a killed test's server ran on for an hour)
        main = threading.current_thread() is threading.main_thread()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=server_env(),
                                start_new_session=True,
                                preexec_fn=_die_with_parent if main else None)
    except OSError as exc:
        log.close()
        raise TowerliteError(f"cannot run tritonserver: {exc}") from exc
    log.close()
    server = TritonServer(repository, host, ports["http"], ports["grpc"], ports["metrics"],
                          server_id, log_path, proc)
    try:
        _wait_ready(server, ready_timeout)
    except BaseException:
        server.stop(timeout=10)
        raise
    return server


def _model_control_args(mode: str) -> list[str]:
    # explicit + --load-model=*: the same start as the default mode (every model, and a model
    # that fails exits the server), with load/unload allowed afterwards
    if mode == "explicit":
        return ["--model-control-mode=explicit", "--load-model=*"]
    return ["--model-control-mode=none"]


def _wait_ready(server: TritonServer, timeout: float) -> None:
    base = f"http://{server.http_url}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise TowerliteError(
                f"tritonserver exited (code {server.process.returncode}) before it was ready:\n  "
                f"{explain_log(server.log_text())}\n  full log: {server.log_path}")
        status, _ = _get_json(f"{base}/v2/health/ready", timeout=1.0)
        if status == 200:
            _, meta = _get_json(f"{base}/v2")
            name = (meta or {}).get("name")
            if name == server.server_id:
                return
            raise TowerliteError(
                f"another server answers on {server.http_url} (it says it is {name!r}, ours is "
                f"{server.server_id!r}): the port was taken after it was chosen; try again")
        time.sleep(0.2)
    raise TowerliteError(f"tritonserver was not ready within {timeout:.0f} s:\n  "
                         f"{explain_log(server.log_text())}\n  full log: {server.log_path}")


@contextlib.contextmanager
def start_server(repository: str | Path, **kwargs) -> Iterator[TritonServer]:
    """A ready local Triton server on `repository` for the duration of the block."""
    server = launch(repository, **kwargs)
    try:
        yield server
    finally:
        server.stop()
