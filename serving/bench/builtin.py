"""The built-in load generator: `concurrency` asyncio workers over one tritonclient aio client
(gRPC, or HTTP), each sending its next request as soon as its last one returned, the closed
loop perf_analyzer runs too. It needs nothing but the Python client, so it runs wherever
perf_analyzer's binary cannot.

Requests walk the request texts in order from the first, as perf_analyzer walks its
--input-data, so the two engines send the same requests. Failed requests are counted (with the
first message kept) and left out of the latencies; a server that stops answering ends the run
with one line instead of counting a flood of connection errors.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from towerlite.errors import TowerliteError

from .inputs import RequestSet
from .measured import Measured, cpu_seconds
from .probe import client_module, infer_inputs, one_line, unreachable

_GONE = ("unavailable", "connection refused", "failed to connect", "connect call failed",
         "cannot connect", "server disconnected", "broken pipe", "socket closed")


@dataclass(frozen=True)
class Load:
    """How long one level runs: for `duration_s` seconds, or until `requests` were sent."""

    duration_s: float | None = None
    requests: int | None = None

    def __post_init__(self):
        if (self.duration_s is None) == (self.requests is None):
            raise TowerliteError("give either --duration or --requests")
        if (self.duration_s is not None and self.duration_s <= 0) or \
                (self.requests is not None and self.requests < 1):
            raise TowerliteError("--duration and --requests must be positive")


class _Level:
    """The shared state of one level's workers (one event loop, so no locks)."""

    def __init__(self, load: Load):
        self.load, self.sent, self.latencies = load, 0, []
        self.errors, self.first_error, self.gone = 0, None, None
        self.start = time.perf_counter()
        self.last_end = self.start
        self.deadline = self.start + (load.duration_s or 0.0)

    def take(self) -> int | None:
        """The next request's index, or None when the level is over."""
        if self.gone is not None:
            return None
        if self.load.requests is not None:
            if self.sent >= self.load.requests:
                return None
        elif time.perf_counter() >= self.deadline:
            return None
        self.sent += 1
        return self.sent - 1

    def failed(self, message: str) -> None:
        self.errors += 1
        self.first_error = self.first_error or message
        if any(s in message.lower() for s in _GONE):
            self.gone = message


async def _run(url: str, protocol: str, model: str, requests: RequestSet, concurrency: int,
               load: Load, timeout: float) -> Measured:
    tc = client_module(protocol, aio=True)
    client = (tc.InferenceServerClient(url) if protocol == "grpc"
              else tc.InferenceServerClient(url, conn_limit=max(100, concurrency)))
    # inputs are built once: serializing them per request is client time, not server time
    prepared = [infer_inputs(tc, t, requests.k, requests.domain) for t in requests.texts]

    async def send(inputs):
        if protocol == "grpc":
            return await client.infer(model, inputs, client_timeout=timeout)
        return await asyncio.wait_for(client.infer(model, inputs), timeout)

    state = _Level(load)

    async def worker():
        while (i := state.take()) is not None:
            began = time.perf_counter()
            try:
                await send(prepared[i % len(prepared)])
                state.latencies.append(time.perf_counter() - began)
            except asyncio.TimeoutError:
                state.failed(f"no response within {timeout:g} s (--timeout)")
            except Exception as exc:  # noqa: BLE001  (every failure is counted, none hidden)
                state.failed(one_line(exc, model))
            state.last_end = time.perf_counter()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await client.close()
    if state.gone is not None:
        raise TowerliteError(unreachable(url, protocol, f"it stopped answering at concurrency "
                                                        f"{concurrency}: {state.gone}"))
    return Measured(concurrency, state.latencies, state.last_end - state.start, state.errors,
                    state.first_error, engine_own={"sent": state.sent})


def run_level(url: str, protocol: str, model: str, requests: RequestSet, concurrency: int,
              load: Load, timeout: float = 30.0) -> Measured:
    """One concurrency level, measured client side."""
    if concurrency < 1:
        raise TowerliteError("concurrency must be at least 1")
    import resource

    cpu = cpu_seconds(resource.RUSAGE_SELF)
    measured = asyncio.run(_run(url, protocol, model, requests, concurrency, load, timeout))
    measured.client_cpu_s = cpu_seconds(resource.RUSAGE_SELF) - cpu
    return measured


class BuiltinEngine:
    name = "builtin"

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.detail = {"generator": f"asyncio + tritonclient.{protocol}.aio, closed loop"}

    def run_level(self, url, model, requests, concurrency, load, timeout) -> Measured:
        return run_level(url, self.protocol, model, requests, concurrency, load, timeout)
