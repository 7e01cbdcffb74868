"""EST secrets and SCEP challenges, and their approval queues, over the REST API (issue 17;
``ca_core.enrollment_admin``, ``protocols.rest.enrollment_api``): create (the password
once), list (never it), revoke an unused one, approve and reject queued requests, with
their refusals audited; and the store methods behind them on both backends."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from ca_core.est import EnrollmentSecretRecord, EstCredentials, EstLabel
from ca_core.principal import Principal
from ca_core.records import AuditEvent
from ca_core.scep import ScepChallenge, ScepTransaction
from db.store import Store
from gateway.app import build_https_app
from gateway.runtime import Services
from tests import test_store_contract as contract
from tests.helpers import make_csr
from tests.test_store_contract import T0, Seed, event

ClientFactory = Callable[..., Any]
SYSTEM = Principal.system("test")
# The store contract's fixtures: the same store on SQLite and on PostgreSQL.
pg_database, location, store, seed = (contract.pg_database, contract.location, contract.store,
                                      contract.seed)


@pytest.fixture
async def client(services: Services, aiohttp_client: ClientFactory) -> TestClient:
    return await aiohttp_client(build_https_app(services))  # type: ignore[no-any-return]


async def _auth(services: Services, role: str = "pki_admin", org: str = "default"
                ) -> dict[str, str]:
    token = (await services.authority.create_token(org, role, principal=SYSTEM)).token
    return {"Authorization": f"Bearer {token}"}


async def _json(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    return json.loads(await response.text())


async def _queue_scep(services: Services, tid: str, org: str = "default") -> None:
    organization = await services.authority.organization(org)
    now = services.authority.clock()
    await services.store.record_scep_transaction(ScepTransaction(
        transaction_id=tid, key_fingerprint=f"key-{tid}", request_fingerprint=f"req-{tid}",
        org_id=organization.org_id, status="pending", created_at=now, updated_at=now,
        profile="external_integration", requester="static",
        csr_der=make_csr(cn=f"{tid}.example.test", dns=(), pem=False)), AuditEvent(
        event_type="scep.request_pending", category="scep", action="queue",
        actor_type="service", actor_id="scep:static", org_id=organization.org_id,
        resource_type="scep_transaction", resource_id=tid))


async def test_est_secret_enroll_approve_and_revoke(client: TestClient,
                                                    services: Services) -> None:
    admin = await _auth(services)
    org = await services.authority.organization("default")
    await services.est.set_label(EstLabel("gated", org.org_id, "vcc_service",
                                          require_approval=True), SYSTEM)
    created = await _json(await client.post("/api/v1/est/secrets", headers=admin, json={
        "organization": "default", "label": "gated", "expires_in_minutes": 90}), 201)
    assert created["status"] == "unused" and created["label"] == "gated"
    user, password = created["user"], created["password"]
    listed = await _json(await client.get("/api/v1/est/secrets", headers=admin), 200)
    [item] = [s for s in listed["items"] if s["id"] == user]
    assert "password" not in item and password not in json.dumps(listed)

    csr = make_csr(cn="gated.example.test", pem=False)
    queued = await services.est.enroll("gated", csr, EstCredentials(user, password))
    assert queued.retry_after is not None
    pending = await _json(await client.get("/api/v1/est/pending", headers=admin), 200)
    [request] = pending["items"]
    assert request["subject"] == "CN=gated.example.test" and request["status"] == "pending"
    approved = await _json(await client.post(
        f"/api/v1/est/pending/{request['id']}/approve", headers=admin), 200)
    assert approved["status"] == "issued" and approved["serial"]
    issued = await services.est.enroll("gated", csr, EstCredentials(user, password))
    assert issued.certificate is not None
    assert issued.certificate.serial_number == int(approved["serial"].replace(":", ""), 16)
    # decided: 409; the used secret cannot be revoked (409), an unused one can
    await _json(await client.post(f"/api/v1/est/pending/{request['id']}/reject",
                                  headers=admin), 409)
    await _json(await client.delete(f"/api/v1/est/secrets/{user}", headers=admin), 409)
    other = await _json(await client.post("/api/v1/est/secrets", headers=admin,
                                          json={"organization": "default"}), 201)
    revoked = await _json(await client.delete(f"/api/v1/est/secrets/{other['id']}",
                                              headers=admin), 200)
    assert revoked["status"] == "revoked"
    assert await services.store.get_enrollment_secret(other["id"]) is None
    await _json(await client.delete(f"/api/v1/est/secrets/{other['id']}", headers=admin),
                404)


async def test_scep_challenge_and_queue(client: TestClient, services: Services) -> None:
    admin = await _auth(services)
    created = await _json(await client.post("/api/v1/scep/challenges", headers=admin,
                                            json={"organization": "default"}), 201)
    assert created["profile"] == "external_integration" and len(created["password"]) == 64
    listed = await _json(await client.get("/api/v1/scep/challenges", headers=admin), 200)
    assert [c["id"] for c in listed["items"]] == [created["id"]]
    assert created["password"] not in json.dumps(listed)
    await _json(await client.delete(f"/api/v1/scep/challenges/{created['id']}",
                                    headers=admin), 200)
    listed = await _json(await client.get("/api/v1/scep/challenges", headers=admin), 200)
    assert listed["items"] == []

    for tid in ("tid-a", "tid-b", "tid-c"):
        await _queue_scep(services, tid)
    first = await _json(await client.get("/api/v1/scep/pending", headers=admin,
                                         params={"limit": "2"}), 200)
    assert [t["id"] for t in first["items"]] == ["tid-a", "tid-b"] and first["next"]
    rest = await _json(await client.get("/api/v1/scep/pending", headers=admin,
                                        params={"cursor": first["next"]}), 200)
    assert [t["id"] for t in rest["items"]] == ["tid-c"] and rest["next"] is None
    approved = await _json(await client.post("/api/v1/scep/pending/tid-a/approve",
                                             headers=admin), 200)
    assert approved["status"] == "success" and approved["serial"]
    rejected = await _json(await client.post("/api/v1/scep/pending/tid-b/reject",
                                             headers=admin), 200)
    assert rejected["status"] == "rejected" and rejected["serial"] is None
    left = await _json(await client.get("/api/v1/scep/pending", headers=admin), 200)
    assert [t["id"] for t in left["items"]] == ["tid-c"]


async def test_refusals_are_problems_and_audited(client: TestClient,
                                                 services: Services) -> None:
    await services.admin.create_organization(SYSTEM, "other", "Other")
    await _queue_scep(services, "tid-other", "other")
    secret = await services.admin.enrollment.create_est_secret(SYSTEM, "other")
    admin, auditor = await _auth(services), await _auth(services, "auditor")
    for method, path, body, status in (
        ("get", "/api/v1/est/secrets", None, 403),  # as the auditor
        ("post", "/api/v1/scep/pending/tid-other/approve", None, 403),
    ):
        response = await client.request(method, path, headers=auditor, json=body)
        assert response.status == status
        assert response.content_type == "application/problem+json"
    for method, path, body in (
        ("get", "/api/v1/est/secrets?organization=other", None),
        ("post", "/api/v1/est/secrets", {"organization": "other"}),
        ("delete", f"/api/v1/est/secrets/{secret.user}", None),
        ("post", "/api/v1/scep/pending/tid-other/approve", None),
        ("post", "/api/v1/scep/pending/nope\u00e9/reject", None),
        ("get", "/api/v1/scep/pending?organization=nope", None),
    ):
        response = await client.request(method, path, headers=admin, json=body)
        assert response.status == 404, (path, await response.text())
        assert response.content_type == "application/problem+json"
    denials = [e for e in await services.store.audit_entries()
               if e.event.status == "denied"]
    assert len(denials) == 8
    for bad, detail in (
        ({"organization": "default", "expires_in_minutes": 0}, "expires_in_minutes"),
        ({"organization": "default", "expires_in_minutes": 200 * 24 * 60},
         "expires_in_minutes"),
        ({"organization": "default", "subject": "not a DN"}, "RFC 4514"),
        ({"organization": "default", "label": "nope"}, "no EST label"),
        ({}, "'organization' is required"),
    ):
        response = await client.post("/api/v1/est/secrets", headers=admin, json=bad)
        assert response.status in (400, 404) and detail in await response.text(), bad
    # the other organization's rows are where they were
    assert await services.store.get_enrollment_secret(secret.user) is not None
    assert (await services.store.get_scep_transaction("tid-other") or
            ScepTransaction("", "", "", "", "")).status == "pending"


# --- the store, on both backends --------------------------------------------------------

async def test_store_lists_and_deletes_unused_credentials(store: Store, seed: Seed) -> None:
    org = seed.org.org_id
    secrets = [EnrollmentSecretRecord(
        secret_id=f"est-{n}", org_id=org, label="", secret_hash=f"hash-{n}",
        expires_at=T0 + dt.timedelta(days=1), created_at=T0 + dt.timedelta(seconds=n))
        for n in range(3)]
    for secret in secrets:
        await store.add_enrollment_secret(secret, event("est.secret_created"))
    assert await store.list_enrollment_secrets(org, limit=2) == secrets[:2]
    after = (secrets[1].created_at or T0, secrets[1].secret_id)
    assert await store.list_enrollment_secrets(org, after) == secrets[2:]
    assert await store.list_enrollment_secrets(str(uuid.uuid4())) == []
    assert await store.get_enrollment_secret("est-0", str(uuid.uuid4())) is None
    assert await store.get_enrollment_secret("est-0", org) == secrets[0]
    await store.consume_secret("est-1", T0, event("est.secret_used"))
    revoked = event("est.secret_revoked")
    assert await store.delete_enrollment_secret("est-1", None, revoked) is None  # used
    assert await store.delete_enrollment_secret("est-0", str(uuid.uuid4()), revoked) \
        is None  # another organization's
    assert await store.delete_enrollment_secret("est-0", org, revoked) == secrets[0]
    assert [s.secret_id for s in await store.list_enrollment_secrets()] == ["est-1", "est-2"]

    challenges = [ScepChallenge(
        challenge_id=f"scep-{n}", org_id=org, profile="external_integration",
        secret_hash=f"chash-{n}", expires_at=T0 + dt.timedelta(hours=1),
        created_at=T0 + dt.timedelta(seconds=n)) for n in range(2)]
    for challenge in challenges:
        await store.add_scep_challenge(challenge, event("scep.challenge_created"))
    assert await store.list_scep_challenges(org) == challenges
    assert await store.get_scep_challenge("scep-0", org) == challenges[0]
    assert await store.get_scep_challenge("scep-0", str(uuid.uuid4())) is None
    assert await store.delete_scep_challenge("scep-1", None, event("scep.revoked")) == \
        challenges[1]
    assert await store.list_scep_challenges() == challenges[:1]

    transactions = [ScepTransaction(
        transaction_id=f"tid-{n}", key_fingerprint=f"k{n}", request_fingerprint=f"r{n}",
        org_id=org, status="pending", created_at=T0 + dt.timedelta(seconds=n),
        updated_at=T0, profile="external_integration", csr_der=b"\x30\x00",
        requester="static") for n in range(3)]
    for transaction in transactions:
        await store.record_scep_transaction(transaction, event("scep.request_pending"))
    assert await store.list_scep_transactions(org, "pending", None, 2) == transactions[:2]
    assert await store.list_scep_transactions(
        org, "pending", (T0 + dt.timedelta(seconds=1), "tid-1"), 5) == transactions[2:]
    assert await store.get_scep_transaction("tid-0", str(uuid.uuid4())) is None
    assert await store.get_scep_transaction("tid-0", org) == transactions[0]
    assert await store.list_pending_enrollments(org, "pending", None, 1) == []
    assert [e.event.event_type for e in await store.audit_entries()].count(
        "est.secret_revoked") == 1
    assert replace(transactions[0]) == transactions[0]
