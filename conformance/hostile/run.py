"""The hostile run: starts a gateway the normal way, sends each protocol its mutation
stream and transport attacks, and checks the answers, the memory, the store and the log.
See the package docstring for what is checked and how to run it."""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from conformance.gateway import Gateway, running_gateway
from conformance.hostile import forms
from conformance.hostile.forms import CHECKS, Answer
from conformance.hostile.mutators import (
    BODY_MUTATORS,
    WRONG_CONTENT_TYPES,
    mutated_path_segment,
)
from conformance.hostile.surfaces import (
    PROTOCOLS,
    Control,
    Surface,
    control_body,
    make_seeds,
)
from conformance.hostile.transport import Attacker, Outcome
from conformance.hostile.watch import Memory, StoreState, log_faults, store_state

# Short limits for the run, so that the transport attacks end in seconds; what a
# deployment sets is tested the same way, only slower.
RUN_ENV = {
    "VCC_PKI_KEY_PASSPHRASE": "hostile",
    "VCC_PKI_HTTP_BODY_TIMEOUT_SECONDS": "1",
    "VCC_PKI_HTTP_KEEPALIVE_SECONDS": "5",
    # Above the client's own pool (--concurrency, 16 by default) at 127.0.0.1.
    "VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT": "24",
}
REQUEST_TIMEOUT = 120.0  # a request not answered in this long is a failure, not a wait
MEMORY_GROWTH_LIMIT = 0.10


@dataclass
class ProtocolResult:
    name: str
    surfaces: list[Surface]
    transport: list[Outcome] = field(default_factory=list)
    peak_rss: int = 0

    @property
    def sent(self) -> int:
        return sum(sum(s.counts.values()) for s in self.surfaces)

    @property
    def counts(self) -> collections.Counter[int]:
        total: collections.Counter[int] = collections.Counter()
        for surface in self.surfaces:
            total.update(surface.counts)
        return total

    @property
    def failures(self) -> list[str]:
        return [f for s in self.surfaces for f in s.failures]

    @property
    def accepted(self) -> int:
        return sum(s.accepted for s in self.surfaces)


@dataclass
class RunResult:
    protocols: list[ProtocolResult]
    memory: Memory
    before: StoreState
    after: StoreState
    controls_issued: int
    control_failures: list[str]
    accepted_issuing: int
    seconds: float
    alive: bool
    log_text: str = ""


def _issuing(surface: Surface) -> bool:
    return surface.name in ("rest-issue", "est-enroll", "scep-post", "scep-get")


async def _send(session: aiohttp.ClientSession, method: str, url: str, body: bytes,
                headers: dict[str, str]) -> Answer:
    async with session.request(method, url, data=body or None, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
                               ) as response:
        return Answer(response.status, response.content_type, await response.read())


async def _probe_one(session: aiohttp.ClientSession, urls: dict[str, str], surface: Surface,
                     rng: random.Random) -> None:
    headers = dict(surface.headers)
    body = surface.seed
    path = surface.path
    if surface.target == "body":
        body = rng.choice(BODY_MUTATORS)(rng, surface.seed)
    else:
        path = surface.path + mutated_path_segment(rng, surface.tail)
    if surface.content_type:
        headers["Content-Type"] = surface.content_type if rng.random() > 0.05 else rng.choice(
            WRONG_CONTENT_TYPES)
    try:
        answer = await _send(session, surface.method, urls[surface.listener] + path, body,
                             headers)
    except ValueError:
        # The client refused to send it (a header it considers invalid): not an input.
        return
    except (aiohttp.ClientError, TimeoutError) as exc:
        surface.counts[0] += 1
        surface.failures.append(f"no answer ({type(exc).__name__}): {surface.method} "
                                f"{path[:80]} ({len(body)} bytes)")
        return
    surface.counts[answer.status] += 1
    if answer.status >= 500:
        surface.failures.append(f"{answer.status}: {surface.method} {path[:80]} "
                                f"({len(body)} bytes)")
        return
    fault = CHECKS[surface.protocol](answer)
    if fault is not None:
        surface.failures.append(f"{fault}: {surface.method} {path[:80]} ({len(body)} bytes)")
    elif forms.accepted(surface.protocol, answer):
        surface.accepted += 1


async def _stream(session: aiohttp.ClientSession, urls: dict[str, str],
                  surfaces: list[Surface], requests: int, rng: random.Random,
                  concurrency: int) -> None:
    """``requests`` mutated requests spread over ``surfaces``, ``concurrency`` at a time
    (a fixed pool of senders: no task per request, so memory here stays flat too)."""
    jobs = [(surfaces[i % len(surfaces)], random.Random(rng.random())) for i in range(requests)]
    queue = iter(jobs)

    async def sender() -> None:
        for surface, child in queue:
            await _probe_one(session, urls, surface, child)

    await asyncio.gather(*(sender() for _ in range(concurrency)))


class Runner:
    def __init__(self, gateway: Gateway, session: aiohttp.ClientSession,
                 context: ssl.SSLContext, workers: int) -> None:
        self.gateway = gateway
        self.session = session
        self.urls = {"http": gateway.http_url, "https": gateway.https_url,
                     "est": gateway.est_url}
        self.controls_issued = 0
        self.control_failures: list[str] = []
        self.attacker = Attacker(session, self.urls, context, self.control,
                                 int(gateway.env["VCC_PKI_HTTP_MAX_CONNECTIONS_PER_CLIENT"]),
                                 workers)

    async def control(self, control: Control) -> str | None:
        """Send a valid request; None when it was answered as a valid request must be."""
        headers = dict(control.headers)
        if control.content_type:
            headers["Content-Type"] = control.content_type
        try:
            answer = await _send(self.session, control.method,
                                 self.urls[control.listener] + control.path,
                                 control_body(control), headers)
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem: str | None = f"no answer: {exc!r}"
        else:
            if control.issues and answer.status == 201:
                self.controls_issued += 1
            good = answer.status < 300 and forms.accepted(control.protocol, answer)
            problem = None if good else f"{answer.status} {answer.body[:120]!r}"
        if problem is not None:
            self.control_failures.append(f"{control.protocol} control: {problem}")
        return problem


async def attack(gateway: Gateway, requests: int, seed: int, concurrency: int,
                 workers: int, protocols: tuple[str, ...] = PROTOCOLS,
                 progress: bool = False) -> RunResult:
    context = ssl.create_default_context(cafile=str(gateway.data_dir / "ca" / "root.pem"))
    # The client lets an idle connection go before the gateway's keep-alive timer does:
    # no request is sent on a connection the gateway is closing.
    connector = aiohttp.TCPConnector(ssl=context, limit=concurrency, keepalive_timeout=1)
    started = time.monotonic()
    memory = Memory(gateway.process.pid)
    memory.sample()
    async with aiohttp.ClientSession(connector=connector) as session:
        admin = gateway.cli("token", "create", "--org", "default", "--role",
                            "pki_super_admin").stdout.strip().splitlines()[-1]
        seeds = await make_seeds(gateway, session, admin)
        # After the seeds: their REST certificate and the SCEP RA certificate (made on the
        # first GetCACert) are the store as it was before the run.
        before = await store_state(session, gateway.https_url, admin)
        runner = Runner(gateway, session, context, workers)
        results = [ProtocolResult(p, [s for s in seeds.surfaces if s.protocol == p])
                   for p in protocols]
        rng = random.Random(seed)
        # Warm-up: a tenth of each stream (half of a short one), and two rounds of
        # transport attacks, so that caches, pools, lazy imports, SQLite's page caches and
        # the allocator's arenas are in place before the baseline. Measured: the process
        # grows over the first two rounds of the transport attacks (0.1 to 0.3 MiB a round
        # after them), and in steps of 1 to 3 MiB over the first 20,000 requests of a
        # protocol after 1,000 of them, then stays flat.
        warm = max(1, min(10_000, requests // 2))
        memory.start = memory.sample()
        for result in results:
            await runner.control(seeds.controls[result.name])
            await _stream(session, runner.urls, result.surfaces, warm, rng, concurrency)
            memory.sample()
        for _ in range(2):
            await _transport_round(runner, results, seeds.controls)
        memory.baseline = memory.sample()
        sampler = asyncio.create_task(_sample(memory))
        for result in results:
            memory.peak = 0
            chunk = max(1, (requests - warm) // 10)
            done = warm
            while done < requests:
                size = min(chunk, requests - done)
                await _stream(session, runner.urls, result.surfaces, size, rng, concurrency)
                done += size
                if await runner.control(seeds.controls[result.name]) is None and progress:
                    print(f"  {result.name}: {done}/{requests} "
                          f"({time.monotonic() - started:.0f} s, "
                          f"RSS {memory.last / 2**20:.1f} MiB)", flush=True)
            result.peak_rss = max(memory.peak, memory.sample())
        sampler.cancel()
        # The end: a last round of transport attacks (held connections leave no state
        # behind), then the memory after it.
        await _transport_round(runner, results, seeds.controls)
        memory.sample()
        after = await store_state(session, gateway.https_url, admin)
    accepted_issuing = sum(s.accepted for r in results for s in r.surfaces if _issuing(s))
    return RunResult(results, memory, before, after, runner.controls_issued,
                     runner.control_failures, accepted_issuing, time.monotonic() - started,
                     gateway.process.poll() is None)


async def _transport_round(runner: Runner, results: list[ProtocolResult],
                           controls: dict[str, Control]) -> None:
    """The transport attacks of every protocol at once, each protocol's from addresses of
    its own (127.0.0.2 and up, 127.0.1.2 and up)."""
    rounds = await asyncio.gather(*(
        runner.attacker.run(r.name, r.surfaces, controls[r.name], f"127.0.0.{2 + i}",
                            f"127.0.1.{2 + i}")
        for i, r in enumerate(results)))
    for result, outcomes in zip(results, rounds, strict=True):
        result.transport += outcomes


async def _sample(memory: Memory) -> None:
    while True:
        memory.sample()
        await asyncio.sleep(0.5)  # a sampling interval, not a wait for something


def _mib(value: int) -> str:
    return f"{value / 2**20:.1f}"


def report(result: RunResult) -> int:
    """Print the tables; 0 when every check passed."""
    problems: list[str] = []
    statuses = sorted({s for r in result.protocols for s in r.counts})
    head = (f"{'protocol':10} {'inputs':>7} " + " ".join(f"{s or 'none':>6}" for s in statuses)
            + f" {'5xx':>5} {'form':>5} {'crash':>5} {'acc':>5} {'transport':>9}"
            + f" {'peak MiB':>8}")
    print(head)
    for r in result.protocols:
        counts = r.counts
        fivexx = sum(n for s, n in counts.items() if s >= 500)
        form = sum(1 for f in r.failures if not f.startswith(("no answer", "5")))
        crashes = counts.get(0, 0)
        passed = sum(1 for o in r.transport if o.ok)
        print(f"{r.name:10} {r.sent:>7} "
              + " ".join(f"{counts.get(s, 0):>6}" for s in statuses)
              + f" {fivexx:>5} {form:>5} {crashes:>5} {r.accepted:>5}"
              + f" {f'{passed}/{len(r.transport)}':>9} {_mib(r.peak_rss):>8}")
        problems += [f"{r.name}: {f}" for f in r.failures[:10]]
        problems += [f"{o.protocol} transport {o.attack}: {o.detail}"
                     for o in r.transport if not o.ok]
    print("(inputs: mutated requests; none: no answer; form: not in the protocol's error "
          "form; crash: connection dropped without an answer; acc: accepted as valid; "
          "transport: attacks passed)")
    memory = result.memory
    growth = memory.growth()
    print(f"memory: {_mib(memory.start)} MiB at the start, {_mib(memory.baseline)} MiB "
          f"after warm-up, {_mib(memory.last)} MiB at "
          f"the end ({growth:+.1%}), peak {_mib(max(r.peak_rss for r in result.protocols))}"
          " MiB")
    if growth > MEMORY_GROWTH_LIMIT:
        problems.append(f"memory grew {growth:.1%} after warm-up (limit "
                        f"{MEMORY_GROWTH_LIMIT:.0%})")
    before, after = result.before, result.after
    new = len(set(after.certificates) - set(before.certificates))
    changed = [s for s, status in before.certificates.items()
               if after.certificates.get(s) != status]
    print(f"store: {len(before.certificates)} -> {len(after.certificates)} certificates "
          f"({new} new; valid control requests issued {result.controls_issued}, mutated "
          f"requests accepted as valid issuances {result.accepted_issuing}); "
          f"{len(changed)} earlier certificates changed; audit {before.audit_entries} -> "
          f"{after.audit_entries} entries, chain "
          f"{'intact' if after.audit_intact else 'BROKEN'}")
    most = result.controls_issued + result.accepted_issuing
    if not result.controls_issued <= new <= most:
        problems.append(f"{new} new certificates; the valid requests account for "
                        f"{result.controls_issued}..{most}")
    if new:
        kinds = collections.Counter(after.subjects[s] for s in after.certificates
                                    if s not in before.certificates)
        print("new certificates: " + "; ".join(f"{n} x {k}" for k, n in kinds.items()))
    if changed:
        problems.append(f"earlier certificates changed: {changed[:5]}")
    if not (before.audit_intact and after.audit_intact) \
            or after.audit_entries < before.audit_entries:
        problems.append("audit chain broken or shortened")
    tracebacks, errors = log_faults(result.log_text)
    print(f"log: {tracebacks} tracebacks, {errors} ERROR lines; gateway "
          f"{'alive' if result.alive else 'DEAD'} after {result.seconds:.0f} s")
    if tracebacks or errors:
        lines = result.log_text.splitlines()
        first = {line.split(" ", 2)[-1] for line in lines if " ERROR " in line}
        problems += [f"log: {line}" for line in sorted(first)[:10]]
        at = result.log_text.find("Traceback")
        problems.append("log, the first traceback:\n"
                        + result.log_text[max(0, at - 300):at + 3000])
    if not result.alive:
        problems.append("the gateway died")
    problems += result.control_failures[:10]
    for problem in problems[:40]:
        print("FAIL", problem)
    print("PASS" if not problems else f"FAILED: {len(problems)} problem(s)")
    return 1 if problems else 0


def run(requests: int, seed: int, env: dict[str, str], data_dir: Path, *,
        concurrency: int = 16, workers: int = 1, protocols: tuple[str, ...] = PROTOCOLS,
        progress: bool = False) -> int:
    """One run against a fresh gateway in ``data_dir``; the exit status."""
    env = {**RUN_ENV, "VCC_PKI_WORKERS": str(workers), **env}
    with running_gateway(data_dir, env) as gateway:
        result = asyncio.run(attack(gateway, requests, seed, concurrency, workers, protocols,
                                    progress))
        result.alive = gateway.process.poll() is None
    result.log_text = (data_dir / "serve.log").read_text(errors="replace")
    return report(result)


def main(argv: list[str] | None = None) -> int:
    from conformance import hostile

    parser = argparse.ArgumentParser(prog="python -m conformance.hostile",
                                     description=(hostile.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", "--per-surface", type=int, default=1000,
                        dest="requests", help="mutated requests per protocol (default 1000; "
                        "the full run: 100000)")
    parser.add_argument("--seed", type=int, default=1, help="RNG seed (default 1)")
    parser.add_argument("--postgres", action="store_true",
                        help="run the gateway on a throwaway PostgreSQL database")
    parser.add_argument("--workers", type=int, default=1,
                        help="the gateway's serving processes (VCC_PKI_WORKERS, default 1)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="requests in flight at once (default 16)")
    parser.add_argument("--protocol", action="append", choices=PROTOCOLS,
                        help="only this protocol (repeatable; default all)")
    parser.add_argument("--progress", action="store_true", help="print progress")
    args = parser.parse_args(argv)
    protocols = tuple(args.protocol or PROTOCOLS)
    options = {"concurrency": args.concurrency, "workers": args.workers,
               "protocols": protocols, "progress": args.progress}
    with tempfile.TemporaryDirectory(prefix="vcc-pki-hostile-") as tmp:
        if not args.postgres:
            return run(args.requests, args.seed, {}, Path(tmp) / "data", **options)
        from tests.pg import create_throwaway_database, drop_database
        dsn = asyncio.run(create_throwaway_database())
        try:
            return run(args.requests, args.seed, {"VCC_PKI_DATABASE_URL": dsn},
                       Path(tmp) / "data", **options)
        finally:
            asyncio.run(drop_database(dsn))

