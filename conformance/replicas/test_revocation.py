"""Issue 15: a revocation made through replica A is answered ``revoked`` by B and C within
one second (OCSP over HTTP), and all three serve the same CRL number afterwards."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conformance.replicas.cluster import (
    crl_number,
    crl_url,
    fetch_crl,
    issue_checked,
    ocsp_status,
    poll,
    revoke,
    running_cluster,
)

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


async def test_revocation_through_a_reaches_b_and_c(
        tmp_path: Path, database_url: str, redis_env: dict[str, str]) -> None:
    with running_cluster(tmp_path / "data", database_url, extra_env=redis_env) as cluster:
        a, b, c = cluster.replicas
        token = cluster.token()
        async with cluster.session() as session:
            issued = await issue_checked(session, a.https_url, token, "r.example.test")
            leaf, request = issued.leaf, issued.ocsp_request
            crl_path = urlsplit(crl_url(leaf)).path
            requests = 0
            for replica in (a, b, c):  # every replica has answered "good" (and cached it)
                assert await ocsp_status(session, replica.http_url, request) == "good"
                requests += 1
            numbers_before = [await crl_number(session, r.http_url + crl_path)
                              for r in (a, b, c)]

            status, text = await revoke(session, a.https_url, token, issued.serial)
            assert status == 200, text
            revoked_at = time.monotonic()
            answers: dict[str, int] = {}

            async def revoked_everywhere() -> bool:
                nonlocal requests
                statuses = [await ocsp_status(session, r.http_url, request) for r in (b, c)]
                requests += 2
                for s in statuses:
                    answers[s] = answers.get(s, 0) + 1
                return statuses == ["revoked", "revoked"]

            await poll(revoked_everywhere, timeout=5)
            ocsp_seconds = time.monotonic() - revoked_at

            numbers: list[int | None] = []

            async def same_new_crl() -> bool:
                nonlocal requests
                numbers[:] = [await crl_number(session, r.http_url + crl_path)
                              for r in (a, b, c)]
                requests += 3
                return (len(set(numbers)) == 1 and numbers[0] is not None
                        and all(before is None or numbers[0] > before
                                for before in numbers_before))

            crl_seconds = await poll(same_new_crl, timeout=30)
            for replica in (a, b, c):
                crl = await fetch_crl(session, replica.http_url + crl_path)
                assert crl is not None
                assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
        print(f"\nrevocation via A: OCSP revoked on B and C after {ocsp_seconds:.3f} s "
              f"(answers while polling: {answers}); CRL {numbers_before} -> {numbers} on "
              f"A, B, C after {ocsp_seconds + crl_seconds:.3f} s; {requests} requests, "
              "0 errors")
        assert ocsp_seconds < 1.0, f"revocation took {ocsp_seconds:.3f} s to reach B and C"
