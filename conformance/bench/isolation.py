"""A/B benchmark of the tenant isolation checks' cost on REST issuance (issue 13: less than
5% of the REST issuance rate, measured A/B in one run).

Run ``python -m conformance.bench.isolation [--seconds 5] [--rounds 6] [--concurrency 16]``.
Prints figures; asserts nothing. See ``conformance/bench/README.md``.

First the same A/B in one process through ``Authority.issue`` (less noise: no HTTP, no load
generator), then REST: two gateways are started the normal way on the same machine, each on
its own SQLite store (software ECDSA P-256 keys, like ``make run``): A is ``vcc-pki serve``;
B is the same server with the isolation checks of issuance bypassed
(``conformance.bench.no_isolation``, bench only). ``POST /api/v1/certificates`` with a
cert_manager token is driven from a separate process (``wrk`` when installed, else an
aiohttp client process), in rounds ABBA BAAB ... so that slow phases of a noisy machine
fall on both. Reported: the median rate of each side, the per-round ratio A/B (paired by
round) and its median, and the cost = 1 - ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import MethodType

from ca_core.authority import IssuanceRequest
from ca_core.hierarchy import ensure_hierarchy
from ca_core.principal import Principal
from conformance.bench.issuance import (
    PROFILE,
    Rate,
    make_csrs,
    measure_concurrent,
    probe_rest,
    rest_body,
    run_rest,
)
from conformance.bench.no_isolation import _cached_org, _org_unchecked
from conformance.gateway import Gateway, running_gateway
from gateway.config import load_config
from gateway.runtime import open_services
from tests.pg import create_throwaway_database, drop_database

PASSPHRASE = "bench-passphrase"


def _env(data_dir: Path) -> dict[str, str]:
    return {"VCC_PKI_DATA_DIR": str(data_dir), "VCC_PKI_KEY_PASSPHRASE": PASSPHRASE,
            "VCC_PKI_KEY_BACKEND": "software", "VCC_PKI_ROOT_KEY_TYPE": "ec-p256",
            "VCC_PKI_INTERMEDIATE_KEY_TYPE": "ec-p256", "VCC_PKI_ISSUING_KEY_TYPE": "ec-p256",
            "VCC_PKI_LOG_LEVEL": "WARNING"}


def _token(gateway: Gateway) -> str:
    created = gateway.cli("token", "create", "--org", "default", "--role", "cert_manager")
    return created.stdout.split()[0]


def _crossing_status(gateway: Gateway, url: str, body: str) -> int:
    """A token of another organization issuing into the default one: 403 with the checks,
    201 without; proves which side is which before anything is measured."""
    gateway.cli("org", "create", "elsewhere")
    token = gateway.cli("token", "create", "--org", "elsewhere", "--role",
                        "cert_manager").stdout.split()[0]
    crossing = json.dumps({**json.loads(body), "organization": "default"})
    try:
        probe_rest(url, token, crossing)
    except RuntimeError as exc:
        return int(str(exc).split()[2].rstrip(":"))
    return 201


async def direct_ab(base: Path, seconds: float, rounds: int, concurrency: int,
                    postgres: bool = False) -> list[float]:
    """The same A/B in one process through ``Authority.issue`` (no HTTP, no load
    generator: less noise), switching the bypass on and off on one Authority; on SQLite,
    or on a throwaway PostgreSQL database (``--postgres``)."""
    if not postgres:
        return await _direct_ab(_env(base / "direct"), seconds, rounds, concurrency)
    dsn = await create_throwaway_database()
    try:
        return await _direct_ab({**_env(base / "direct"), "VCC_PKI_DATABASE_URL": dsn},
                                seconds, rounds, concurrency)
    finally:
        await drop_database(dsn)


async def _direct_ab(env: dict[str, str], seconds: float, rounds: int, concurrency: int
                     ) -> list[float]:
    config = load_config(environ=env)
    async with open_services(config, create=True) as services:
        authority = services.authority
        await ensure_hierarchy(authority)
        await authority.load()
        org = await authority.organization(config.default_org)
        principal = Principal("api", "token:bench", org.org_id, "cert_manager")
        requests = [IssuanceRequest(csr=csr, profile=PROFILE) for csr in make_csrs(64)]

        async def measure(bypass: bool) -> float:
            if bypass:
                authority._org_for = MethodType(_org_unchecked, authority)  # type: ignore[method-assign]
                authority._active_org = MethodType(_cached_org, authority)  # type: ignore[method-assign]
            try:
                rate = await measure_concurrent(
                    lambda i: authority.issue(requests[i % len(requests)], principal),
                    seconds, concurrency)
            finally:
                if bypass:
                    del authority._org_for, authority._active_org
            if rate.errors:
                raise SystemExit(f"direct issuance failed: {rate.note}")
            return rate.rate

        await measure(False)  # warm-up
        # The checks alone, timed directly (sequentially, as one issuance runs them): a
        # figure that the machine's noise does not blur as it blurs rates.
        calls = 2000
        started = time.perf_counter()
        for _ in range(calls):
            await authority._active_org(await authority._org_for(None, principal))
        checks_us = (time.perf_counter() - started) / calls * 1e6
        alone = await measure_concurrent(
            lambda i: authority.issue(requests[i % len(requests)], principal), seconds, 1)
        issue_us = 1e6 / alone.rate
        print(f"the checks alone: {checks_us:.0f} us per issuance; one issuance alone "
              f"(concurrency 1): {issue_us:.0f} us: {checks_us / issue_us * 100:.1f}%",
              flush=True)
        ratios = []
        for number in range(rounds):
            order = [False, True, True, False] if number % 2 == 0 else [True, False, False,
                                                                        True]
            got: dict[bool, list[float]] = {False: [], True: []}
            for bypass in order:
                got[bypass].append(await measure(bypass))
            ratios.append(statistics.mean(got[False]) / statistics.mean(got[True]))
            print(f"direct round {number + 1}: checks {statistics.mean(got[False]):.1f}/s "
                  f"bypass {statistics.mean(got[True]):.1f}/s A/B {ratios[-1]:.3f}", flush=True)
        return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conformance.bench.isolation")
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=6, help="each runs A and B once")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--loadgen", choices=("wrk", "aiohttp"), default=None)
    parser.add_argument("--no-rest", action="store_true", help="only the direct A/B")
    parser.add_argument("--postgres", action="store_true",
                        help="the direct A/B on PostgreSQL (127.0.0.1:5432) instead of SQLite")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vcc-bench-isolation-") as tmp:
        direct = asyncio.run(direct_ab(Path(tmp), args.seconds, args.rounds,
                                       args.concurrency, args.postgres))
    print(f"\nAuthority.issue, concurrency {args.concurrency}: median A/B "
          f"{statistics.median(direct):.3f}: the isolation checks cost "
          f"{(1 - statistics.median(direct)) * 100:.1f}% of the direct issuance rate\n")
    if args.no_rest:
        return
    loadgen = args.loadgen or ("wrk" if shutil.which("wrk") else "aiohttp")
    body = rest_body(make_csrs(1)[0])
    with tempfile.TemporaryDirectory(prefix="vcc-bench-isolation-") as tmp, \
            contextlib.ExitStack() as stack:
        base = Path(tmp)
        sides: dict[str, tuple[str, str]] = {}
        for side, serve in (("A checks", None),
                            ("B bypass", [sys.executable, "-m",
                                          "conformance.bench.no_isolation", "serve"])):
            data_dir = base / side.split()[0]
            data_dir.mkdir()
            gateway = stack.enter_context(running_gateway(data_dir, _env(data_dir), serve))
            url = f"{gateway.https_url}/api/v1/certificates"
            token = _token(gateway)
            probe_rest(url, token, body)
            crossing = _crossing_status(gateway, url, body)
            if crossing != (403 if serve is None else 201):
                raise SystemExit(f"{side}: a crossing request answered {crossing}")
            print(f"{side}: another organization's token issuing here answers {crossing}")
            sides[side] = (url, token)
        names = list(sides)
        runs: dict[str, list[Rate]] = {name: [] for name in names}
        ratios: list[float] = []
        for number in range(args.rounds):
            # ABBA, then BAAB: each side goes first as often as the other
            order = names + names[::-1] if number % 2 == 0 else names[::-1] + names
            got: dict[str, list[float]] = {name: [] for name in names}
            for name in order:
                url, token = sides[name]
                rate = run_rest(loadgen, url, token, body, args.seconds, args.concurrency,
                                base, warm=True)
                runs[name].append(rate)
                got[name].append(rate.rate)
                print(f"round {number + 1} {name}: {rate.rate:8.1f}/s "
                      f"p50 {rate.p50_ms or 0:.1f} ms p99 {rate.p99_ms or 0:.1f} ms "
                      f"errors {rate.errors}", flush=True)
            ratios.append(statistics.mean(got[names[0]]) / statistics.mean(got[names[1]]))
    print(f"\nREST issuance, {loadgen}, concurrency {args.concurrency}, {args.rounds} rounds "
          f"of {args.seconds:g} s per side x2")
    for name in names:
        rates = [r.rate for r in runs[name]]
        print(f"  {name}: median {statistics.median(rates):8.1f}/s "
              f"(min {min(rates):.1f}, max {max(rates):.1f})")
    ratio = statistics.median(ratios)
    print(f"  A/B per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"  median A/B {ratio:.3f}: the isolation checks cost {(1 - ratio) * 100:.1f}% "
          "of the REST issuance rate")


if __name__ == "__main__":
    main()
