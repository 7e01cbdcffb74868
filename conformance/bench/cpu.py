"""CPU per issuance: where the time of one certificate goes, direct and over REST.

Run ``python -m conformance.bench.cpu [--count N] [--rounds R] [--rest] [--profile]``.
Prints figures; never asserts on them. See ``conformance/bench/README.md`` (CPU section).

On a shared machine a rate says more about the neighbours than about the code; CPU time per
operation does not. So this measures

- direct: ``Authority.issue`` (software ECDSA P-256, SQLite) from ``--concurrency`` tasks
  in this process: ``time.process_time`` (user + system, every thread of the process, so
  the store's writer thread and any ``to_thread`` signing count) over ``--count``
  issuances, divided by the count; and the wall-clock rate of the same run;
- REST: ``POST /api/v1/certificates`` against ``vcc-pki serve`` (a subprocess, SQLite,
  software P-256) from a separate load generator (wrk when installed): the server
  process's utime + stime (``/proc/PID/stat``) over the run divided by the 201s, and the
  rate and p99 the load generator saw.

With ``--profile``, py-spy samples the same runs (this process for direct, the server for
REST) and the top frames by own time and by inclusive time are printed; ``--speedscope
DIR`` also keeps the profiles for https://www.speedscope.app. py-spy needs ptrace rights on
the sampled process (root, or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ca_core.authority import Authority, IssuanceRequest
from ca_core.principal import Principal
from conformance.bench.issuance import (
    PROFILE,
    KeyConfig,
    Rate,
    _env,
    make_csrs,
    percentile,
    rest_body,
    run_aiohttp,
    run_wrk,
)
from conformance.gateway import running_gateway
from gateway.config import load_config
from gateway.runtime import open_services

CONFIG = KeyConfig("software-ec-p256", "software", "ec-p256")
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class CpuRun:
    count: int
    cpu_s: float
    wall_s: float
    p99_ms: float | None = None
    errors: int = 0

    @property
    def cpu_ms_per_op(self) -> float:
        return self.cpu_s * 1000 / self.count if self.count else float("nan")

    @property
    def rate(self) -> float:
        return self.count / self.wall_s if self.wall_s else float("nan")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def py_spy(pid: int, out: Path | None, label: str, rate: int = 250) -> Iterator[None]:
    """py-spy record on ``pid`` while the block runs; prints the top frames after it."""
    if out is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / f"{label}.txt"
    command = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--output", str(raw), "--nonblocking", "--threads"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)  # py-spy attaches asynchronously; there is nothing to poll for
    try:
        yield
    finally:
        process.send_signal(2)  # SIGINT: py-spy writes its output and exits
        _, err = process.communicate(timeout=60)
        if raw.exists():
            print_top(raw, label)
        else:
            print(f"py-spy wrote nothing for {label}: {err.decode()[-300:]}")


IDLE_LEAVES = {"_worker (thread.py)", "wait (threading.py)", "get (queue.py)"}


def _frame(text: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines merged."""
    name, _, where = text.partition(" (")
    module = where.rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


def print_top(raw: Path, label: str, top: int = 25) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        while frames and frames[0].startswith(("thread ", "process ")):
            frames = frames[1:]
        # py-spy reports threads blocked in C (the loop's epoll, an idle executor thread
        # waiting on its queue) as busy: their leaves are waits, not work.
        if not frames or frames[-1] in IDLE_LEAVES or frames[-1].endswith(".select (selectors.py)"):
            continue
        total += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    if not total:
        print(f"{label}: no busy samples")
        return
    print(f"\n{label}: {total} busy samples; top by own time")
    for name, count in own.most_common(top):
        print(f"  {count / total:6.1%}  {name}")
    print(f"{label}: top by inclusive time")
    for name, count in inclusive.most_common(top + 15):
        print(f"  {count / total:6.1%}  {name}")


async def direct_run(authority: Authority, requests: list[IssuanceRequest], count: int,
                     concurrency: int) -> CpuRun:
    principal = Principal.system("bench")
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            await authority.issue(requests[i % len(requests)], principal)
            latencies.append(time.perf_counter() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    latencies.sort()
    return CpuRun(count, cpu1 - cpu0, wall1 - wall0, percentile(latencies, 99) * 1000)


def tsa_query(cert_req: bool = True) -> bytes:
    """A TimeStampReq as ``openssl ts -query -sha256 [-cert]`` makes it (nonce included)."""
    from asn1crypto import tsp

    return tsp.TimeStampReq({  # type: ignore[no-any-return]
        "version": 1,
        "message_imprint": {"hash_algorithm": {"algorithm": "sha256"},
                            "hashed_message": os.urandom(32)},
        "nonce": int.from_bytes(os.urandom(8), "big"), "cert_req": cert_req}).dump()


async def tsa_run(stamper: object, bodies: list[bytes], count: int,
                  concurrency: int) -> CpuRun:
    """In-process time-stamps as ``POST /tsa`` makes them (decode, stamp, encode), without
    HTTP: the CPU of the TSA's own path."""
    from protocols.tsa.codec import decode_request, granted

    stamp = stamper.timestamp  # type: ignore[attr-defined]
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < count:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            issued = await stamp(decode_request(bodies[i % len(bodies)]))
            granted(issued.token)
            latencies.append(time.perf_counter() - t0)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu1, wall1 = time.process_time(), time.perf_counter()
    latencies.sort()
    return CpuRun(count, cpu1 - cpu0, wall1 - wall0, percentile(latencies, 99) * 1000)


async def run_tsa(args: argparse.Namespace) -> None:
    """``--tsa``: CPU per time-stamp in this process (software P-256 TSA key, SQLite)."""
    from ca_core.hierarchy import ensure_hierarchy
    from ca_core.tsa import TimeStampAuthority, ensure_tsa

    base = Path(tempfile.mkdtemp(prefix="vcc-pki-cpu-tsa-"))
    out = Path(args.speedscope) if args.speedscope else (base / "profiles")
    if args.profile:
        out.mkdir(parents=True, exist_ok=True)
    runs: list[CpuRun] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            config = load_config(environ=_env(CONFIG, base / "tsa", "", None))
            services = await stack.enter_async_context(open_services(config, create=True))
            await ensure_hierarchy(services.authority)
            await services.authority.load()
            await ensure_tsa(services.authority, config.tsa_settings())
            stamper = TimeStampAuthority(services.authority, config.tsa_settings())
            await stamper.open()
            bodies = [tsa_query() for _ in range(50)]
            await tsa_run(stamper, bodies, min(500, args.count), args.concurrency)
            for round_no in range(1, args.rounds + 1):
                last = round_no == args.rounds
                with py_spy(os.getpid(), out if args.profile and last else None, "TSA"):
                    r = await tsa_run(stamper, bodies, args.count, args.concurrency)
                runs.append(r)
                print(f"round {round_no} TSA: {r.cpu_ms_per_op * 1000:.0f} CPU us/stamp, "
                      f"{r.rate:,.0f}/s wall, p99 {r.p99_ms:.1f} ms", flush=True)
    finally:
        if not args.speedscope:
            shutil.rmtree(base, ignore_errors=True)
    print(f"\nmedian over rounds\n  TSA     "
          f"{statistics.median(r.cpu_ms_per_op for r in runs) * 1000:.0f} CPU us/stamp  "
          f"{statistics.median(r.rate for r in runs):,.0f}/s")


async def run(args: argparse.Namespace) -> None:
    if args.tsa:
        await run_tsa(args)
        return
    base = Path(tempfile.mkdtemp(prefix="vcc-pki-cpu-"))
    out = Path(args.speedscope) if args.speedscope else (base / "profiles")
    profile_dir = out if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    csrs = make_csrs(50)
    requests = [IssuanceRequest(csr=csr, profile=PROFILE) for csr in csrs]
    direct: list[CpuRun] = []
    rest: list[CpuRun] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            config = load_config(environ=_env(CONFIG, base / "direct", "", None))
            services = await stack.enter_async_context(open_services(config, create=True))
            from ca_core.hierarchy import ensure_hierarchy

            await ensure_hierarchy(services.authority)
            await services.authority.load()
            authority = services.authority
            gateway = None
            token = ""
            if args.rest:
                data_dir = base / "served"
                data_dir.mkdir(parents=True)
                gateway = stack.enter_context(running_gateway(
                    data_dir, _env(CONFIG, data_dir, "", None)))
                token = gateway.cli("token", "create", "--org", "default", "--role",
                                    "cert_manager").stdout.split()[0]
            await direct_run(authority, requests, min(500, args.count), args.concurrency)
            body = rest_body(csrs[0])
            loadgen = "wrk" if shutil.which("wrk") else "aiohttp"
            for round_no in range(1, args.rounds + 1):
                last = round_no == args.rounds
                with py_spy(os.getpid(), profile_dir if last else None, "direct"):
                    d = await direct_run(authority, requests, args.count, args.concurrency)
                direct.append(d)
                print(f"round {round_no} direct: {d.cpu_ms_per_op:.3f} CPU ms/cert, "
                      f"{d.rate:,.0f}/s wall, p99 {d.p99_ms:.1f} ms", flush=True)
                if gateway is None:
                    continue
                url = f"{gateway.https_url}/api/v1/certificates"
                pid = gateway.process.pid
                if round_no == 1:
                    await asyncio.to_thread(run_rest, loadgen, url, token, body, 1.0,
                                            args.concurrency, base)
                with py_spy(pid, profile_dir if last else None, "REST server"):
                    cpu0 = proc_cpu_seconds(pid)
                    rate = await asyncio.to_thread(run_rest, loadgen, url, token, body,
                                                   args.seconds, args.concurrency, base)
                    cpu1 = proc_cpu_seconds(pid)
                r = CpuRun(rate.count, cpu1 - cpu0, rate.seconds, rate.p99_ms, rate.errors)
                rest.append(r)
                print(f"round {round_no} REST:   {r.cpu_ms_per_op:.3f} server CPU ms/cert, "
                      f"{r.rate:,.0f}/s, p99 {r.p99_ms:.1f} ms, non-2xx {r.errors} "
                      f"({loadgen})", flush=True)
    finally:
        if not args.speedscope:
            shutil.rmtree(base, ignore_errors=True)
    print("\nmedian over rounds")
    for label, runs in (("direct", direct), ("REST", rest)):
        if runs:
            print(f"  {label:<7} {statistics.median(r.cpu_ms_per_op for r in runs):.3f} CPU "
                  f"ms/cert  {statistics.median(r.rate for r in runs):,.0f}/s  p99 "
                  f"{statistics.median(r.p99_ms or 0 for r in runs):.1f} ms")


def run_rest(loadgen: str, url: str, token: str, body: str, seconds: float,
             concurrency: int, work_dir: Path) -> Rate:
    if loadgen == "wrk":
        return run_wrk(url, token, body, seconds, concurrency, work_dir)
    return run_aiohttp(url, token, body, seconds, concurrency)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conformance.bench.cpu",
                                     description="CPU ms per certificate, direct and REST")
    parser.add_argument("--count", type=int, default=5000,
                        help="direct issuances per round (default 5000)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of a REST run (default 5)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rest", action="store_true", help="also measure REST issuance")
    parser.add_argument("--tsa", action="store_true",
                        help="instead: CPU per RFC 3161 time-stamp in this process "
                             "(decode, stamp, encode; --count stamps per round)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the last round and print the top frames")
    parser.add_argument("--speedscope", metavar="DIR", default="",
                        help="with --profile: keep the raw profiles in DIR")
    args = parser.parse_args(argv)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
