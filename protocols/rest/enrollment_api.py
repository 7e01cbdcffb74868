"""EST and SCEP enrollment credentials and approval queues over REST (issue 17):
``/api/v1/est/secrets``, ``/api/v1/est/pending``, ``/api/v1/scep/challenges``,
``/api/v1/scep/pending``. Decode -> ``AdminService.enrollment`` (``ca_core.enrollment_admin``,
the CLI's too) -> encode. A secret or challenge password is in its creation answer only
(201), never in a list; revoking deletes an unused one. Lists answer ``{"items", "next"}``;
errors problem+json (``protocols.rest.problems``)."""

from __future__ import annotations

import datetime as dt

from aiohttp import web

from ca_core.enrollment_admin import (
    est_request_document,
    est_secret_document,
    scep_challenge_document,
    scep_request_document,
)
from protocols.rest.api import ADMIN, _field, _json_body, _limit, _page, _param, _principal


def _now(request: web.Request) -> dt.datetime:
    return request.app[ADMIN].authority.clock()


# --- EST ---------------------------------------------------------------------------------

async def list_est_secrets(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].enrollment.list_est_secrets(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    now = _now(request)
    return _page([est_secret_document(s, now) for s in page.items], page.next)


async def create_est_secret(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    created = await request.app[ADMIN].enrollment.create_est_secret(
        principal, _field(body, "organization", str, required=True),
        _field(body, "label", str) or "", _field(body, "subject", str),
        _field(body, "expires_in_minutes", int))
    # The HTTP Basic user and password of one enrollment (RFC 7030 3.2.3): in this answer
    # only (stored hashed).
    response = web.json_response({**est_secret_document(created.record, _now(request)),
                                  "user": created.user, "password": created.password},
                                 status=201)
    response.headers["Location"] = f"/api/v1/est/secrets/{created.user}"
    return response


async def revoke_est_secret(request: web.Request) -> web.Response:
    principal = await _principal(request)
    secret = await request.app[ADMIN].enrollment.revoke_est_secret(
        principal, request.match_info["secret_id"])
    return web.json_response({**est_secret_document(secret, _now(request)),
                              "status": "revoked"})


async def list_est_pending(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].enrollment.list_est_pending(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([est_request_document(p) for p in page.items], page.next)


async def _decide_est(request: web.Request, approve: bool) -> web.Response:
    principal = await _principal(request)
    decided = await request.app[ADMIN].enrollment.decide_est_request(
        principal, request.match_info["request_id"], approve)
    return web.json_response(est_request_document(decided.request,
                                                  decided.serial))


async def approve_est_request(request: web.Request) -> web.Response:
    return await _decide_est(request, True)


async def reject_est_request(request: web.Request) -> web.Response:
    return await _decide_est(request, False)


# --- SCEP --------------------------------------------------------------------------------

async def list_scep_challenges(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].enrollment.list_scep_challenges(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    now = _now(request)
    return _page([scep_challenge_document(c, now) for c in page.items], page.next)


async def create_scep_challenge(request: web.Request) -> web.Response:
    principal = await _principal(request)
    body = await _json_body(request)
    created = await request.app[ADMIN].enrollment.create_scep_challenge(
        principal, _field(body, "organization", str, required=True),
        _field(body, "profile", str), _field(body, "expires_in_minutes", int))
    # the challengePassword of one enrollment (RFC 8894 2.3): in this answer only
    response = web.json_response({**scep_challenge_document(created.record, _now(request)),
                                  "password": created.password}, status=201)
    response.headers["Location"] = f"/api/v1/scep/challenges/{created.challenge_id}"
    return response


async def revoke_scep_challenge(request: web.Request) -> web.Response:
    principal = await _principal(request)
    challenge = await request.app[ADMIN].enrollment.revoke_scep_challenge(
        principal, request.match_info["challenge_id"])
    return web.json_response({**scep_challenge_document(challenge, _now(request)),
                              "status": "revoked"})


async def list_scep_pending(request: web.Request) -> web.Response:
    principal = await _principal(request)
    page = await request.app[ADMIN].enrollment.list_scep_pending(
        principal, _param(request, "organization"), _param(request, "cursor"),
        _limit(request))
    return _page([scep_request_document(t) for t in page.items], page.next)


async def _decide_scep(request: web.Request, approve: bool) -> web.Response:
    principal = await _principal(request)
    decided = await request.app[ADMIN].enrollment.decide_scep_request(
        principal, request.match_info["transaction_id"], approve)
    return web.json_response(scep_request_document(decided.request,
                                                   decided.serial))


async def approve_scep_request(request: web.Request) -> web.Response:
    return await _decide_scep(request, True)


async def reject_scep_request(request: web.Request) -> web.Response:
    return await _decide_scep(request, False)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/est/secrets", list_est_secrets)
    app.router.add_post("/api/v1/est/secrets", create_est_secret)
    app.router.add_delete("/api/v1/est/secrets/{secret_id}", revoke_est_secret)
    app.router.add_get("/api/v1/est/pending", list_est_pending)
    app.router.add_post("/api/v1/est/pending/{request_id}/approve", approve_est_request)
    app.router.add_post("/api/v1/est/pending/{request_id}/reject", reject_est_request)
    app.router.add_get("/api/v1/scep/challenges", list_scep_challenges)
    app.router.add_post("/api/v1/scep/challenges", create_scep_challenge)
    app.router.add_delete("/api/v1/scep/challenges/{challenge_id}", revoke_scep_challenge)
    app.router.add_get("/api/v1/scep/pending", list_scep_pending)
    app.router.add_post("/api/v1/scep/pending/{transaction_id}/approve", approve_scep_request)
    app.router.add_post("/api/v1/scep/pending/{transaction_id}/reject", reject_scep_request)
