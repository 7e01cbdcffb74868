"""ACME over HTTPS (RFC 8555): the web front-end.

Decode (JWS, nonce, URL, key or account) -> ``AcmeService`` -> encode (JSON resources,
Location, Link, Replay-Nonce, problem documents). Every response carries a fresh
Replay-Nonce and a Link to the directory. URLs are built from VCC_PKI_PUBLIC_HTTPS_URL so
that account and order URLs stay the same across restarts and replicas.

Routes (``{org}`` is an organization slug; ``/acme/directory`` is the default org's)::

    GET  /acme/directory, /acme/{org}/directory
    HEAD|GET /acme/{org}/new-nonce
    POST /acme/{org}/new-account, new-order, revoke-cert, key-change
    GET  /acme/{org}/renewal-info/{certID}
    POST /acme/acct/{id}, /acme/order/{id}, /acme/order/{id}/finalize,
         /acme/authz/{id}, /acme/chall/{authz}/{type}, /acme/cert/{id}
    POST /acme/cert/{id}/{n}    alternate chain n (from a cross-certificate)
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ca_core.acme import AccountKey, AcmeService
from ca_core.errors import CAError, Unavailable
from ca_core.records import AcmeAccount, AcmeAuthorization, AcmeChallenge, AcmeOrder, Organization
from protocols.acme import ari, problems
from protocols.acme import jws as jose
from protocols.acme.jws import b64url_decode, jwk_thumbprint
from protocols.acme.problems import AcmeProblem

log = logging.getLogger(__name__)

SERVICE = web.AppKey("acme_service", AcmeService)
BASE_URL = web.AppKey("acme_base_url", str)

JOSE_JSON = "application/jose+json"
PROBLEM_JSON = "application/problem+json"
MAX_BODY = 64 * 1024


def _time(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(value: Any, what: str) -> dt.datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AcmeProblem("malformed", f"{what} must be an RFC 3339 time")
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise AcmeProblem("malformed", f"{what} must be an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise AcmeProblem("malformed", f"{what} needs a time zone")
    return parsed


@dataclass(frozen=True, slots=True)
class Urls:
    base: str  # https://host:port, no trailing slash

    def org(self, slug: str, name: str) -> str:
        return f"{self.base}/acme/{slug}/{name}"

    def directory(self, slug: str) -> str:
        return self.org(slug, "directory")

    def account(self, account_id: str) -> str:
        return f"{self.base}/acme/acct/{account_id}"

    def order(self, order_id: str) -> str:
        return f"{self.base}/acme/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/acme/order/{order_id}/finalize"

    def authz(self, authz_id: str) -> str:
        return f"{self.base}/acme/authz/{authz_id}"

    def challenge(self, authz_id: str, kind: str) -> str:
        return f"{self.base}/acme/chall/{authz_id}/{kind}"

    def certificate(self, cert_id: str, chain: int = 0) -> str:
        url = f"{self.base}/acme/cert/{cert_id}"
        return url if chain == 0 else f"{url}/{chain}"


@dataclass(frozen=True, slots=True)
class Signed:
    """A verified request: the JWS, and either an account (kid) or a bare key (jwk)."""

    jws: jose.Jws
    account: AcmeAccount | None
    jwk: dict[str, Any] | None
    key: Any
    org: Organization | None = None  # the account's, read with it in this request


def _urls(request: web.Request) -> Urls:
    return Urls(request.app[BASE_URL])


def _service(request: web.Request) -> AcmeService:
    return request.app[SERVICE]


async def _org(request: web.Request) -> Organization:
    slug = request.match_info.get("org", "")
    if not slug:
        slug = _service(request).authority.settings.default_org
    return await _service(request).organization(slug)


_RESOURCE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _resource_id(request: web.Request, name: str = "id") -> str:
    """An account, order, authorization or certificate id from the URL path: ids are
    base64url or UUIDs, so anything else (a lone surrogate, a NUL) is no resource."""
    value = request.match_info[name]
    if not _RESOURCE_ID.fullmatch(value):
        raise AcmeProblem("malformed", "no such resource", 404)
    return value


def _org_slug(request: web.Request) -> str:
    return request.match_info.get("org") or _service(request).authority.settings.default_org


async def _with_nonce(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Replay-Nonce"] = await _service(request).new_nonce()
    response.headers["Cache-Control"] = "no-store"
    response.headers.add("Link", f'<{_urls(request).directory(_org_slug(request))}>;rel="index"')
    return response


def _problem_response(problem: AcmeProblem) -> web.Response:
    response = web.json_response(problem.document(), status=problem.status,
                                 content_type=PROBLEM_JSON)
    if problem.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(problem.retry_after + 0.999)))
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def acme_handler(handler: Handler) -> Handler:
    """Turns every failure into a problem document with a fresh nonce; never a traceback."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except AcmeProblem as problem:
            if problem.status >= 500:
                log.warning("ACME %s %s: %s", request.method, request.path, problem.detail)
            response = _problem_response(problem)
        except CAError as exc:
            mapped = problems.from_error(exc)
            if mapped.status >= 500:
                log.warning("ACME %s %s: %s", request.method, request.path, exc)
            response = _problem_response(mapped)
        except (web.HTTPException, ConnectionResetError):
            # A reset: the client went away (or the body deadline cut it off) while its
            # body was read; nobody is left to answer, the app middleware records it.
            raise
        except Exception:
            log.exception("ACME %s %s failed", request.method, request.path)
            response = _problem_response(AcmeProblem("serverInternal", "internal error", 500))
        try:
            return await _with_nonce(request, response)
        except Unavailable:
            return response  # no nonce store: the problem itself is the answer

    return wrapped


async def _verified(request: web.Request, allow_jwk: bool = False,
                    require_jwk: bool = False) -> Signed:
    if request.content_type != JOSE_JSON:
        raise AcmeProblem("malformed", f"send {JOSE_JSON}", 415)
    if (request.content_length or 0) > MAX_BODY:
        raise AcmeProblem("malformed", "the request is too large", 413)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked, beyond the app's client_max_size
        raise AcmeProblem("malformed", "the request is too large", 413) from None
    if len(body) > MAX_BODY:  # chunked: no Content-Length to check first
        raise AcmeProblem("malformed", "the request is too large", 413)
    parsed = jose.parse(body)
    protected = parsed.protected
    alg = protected.get("alg")
    if alg not in jose.ACCOUNT_ALGORITHMS:
        raise AcmeProblem("badSignatureAlgorithm",
                          f"algorithm {alg!r} is not accepted; use one of "
                          f"{', '.join(jose.ACCOUNT_ALGORITHMS)}")
    nonce = protected.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise AcmeProblem("badNonce", "the JWS has no nonce")
    url = protected.get("url")
    expected = f"{_urls(request).base}{request.path_qs}"
    if url != expected and url != str(request.url):
        raise AcmeProblem("unauthorized", f"the JWS url must be {expected}", 401)
    has_jwk, has_kid = "jwk" in protected, "kid" in protected
    if has_jwk == has_kid:
        raise AcmeProblem("malformed", "the JWS needs exactly one of jwk and kid")
    service = _service(request)
    if has_jwk:
        if not allow_jwk:
            raise AcmeProblem("malformed", "this request must be signed by an account (kid)")
        jwk = protected["jwk"]
        key = jose.public_key(jwk)
        jose.verify(parsed, key)
        await service.use_nonce(nonce)
        return Signed(parsed, None, jwk, key)
    if require_jwk:
        raise AcmeProblem("malformed", "this request must carry the key (jwk)")
    kid = protected["kid"]
    prefix = _urls(request).account("")
    if not isinstance(kid, str) or not kid.startswith(prefix):
        raise AcmeProblem("accountDoesNotExist", "the kid is not an account URL of this server")
    account_id = kid[len(prefix):]
    if not _RESOURCE_ID.fullmatch(account_id):
        raise AcmeProblem("accountDoesNotExist", "the kid is not an account URL of this server")
    account, org = await service.account_and_org(account_id)
    key = jose.account_public_key(account.key_thumbprint, account.jwk)
    jose.verify(parsed, key)
    await service.use_nonce(nonce)
    return Signed(parsed, account, None, key, org)


def _json(request: web.Request, document: dict[str, Any], status: int = 200,
          location: str | None = None) -> web.Response:
    response = web.json_response(document, status=status)
    if location is not None:
        response.headers["Location"] = location
    return response


# ---------------------------------------------------------------------------- resources

def account_json(account: AcmeAccount) -> dict[str, Any]:
    document: dict[str, Any] = {"status": account.status, "contact": list(account.contact),
                                "termsOfServiceAgreed": account.tos_agreed, "key": account.jwk}
    if account.eab_kid:
        document["externalAccountBinding"] = {"kid": account.eab_kid}
    return document


def challenge_json(urls: Urls, authz: AcmeAuthorization, challenge: AcmeChallenge
                   ) -> dict[str, Any]:
    document: dict[str, Any] = {"type": challenge.type,
                                "url": urls.challenge(authz.authz_id, challenge.type),
                                "status": challenge.status, "token": challenge.token}
    if challenge.validated is not None:
        document["validated"] = _time(challenge.validated)
    if challenge.error is not None:
        document["error"] = problems.stored(challenge.error)
    return document


def authz_json(urls: Urls, authz: AcmeAuthorization) -> dict[str, Any]:
    document: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
        "status": authz.status, "expires": _time(authz.expires),
        "challenges": [challenge_json(urls, authz, c) for c in authz.challenges],
    }
    if authz.wildcard:
        document["wildcard"] = True
    return document


def order_json(urls: Urls, order: AcmeOrder) -> dict[str, Any]:
    document: dict[str, Any] = {
        "status": order.status, "expires": _time(order.expires),
        "identifiers": [{"type": t, "value": v} for t, v in order.identifiers],
        "authorizations": [urls.authz(a) for a in order.authz_ids],
        "finalize": urls.finalize(order.order_id),
        "profile": order.profile,
    }
    if order.not_before is not None:
        document["notBefore"] = _time(order.not_before)
    if order.not_after is not None:
        document["notAfter"] = _time(order.not_after)
    if order.replaces is not None:
        document["replaces"] = order.replaces
    if order.error is not None:
        document["error"] = problems.stored(order.error)
    if order.status == "valid" and order.cert_id is not None:
        document["certificate"] = urls.certificate(order.cert_id)
    return document


# ---------------------------------------------------------------------------- handlers

@acme_handler
async def directory(request: web.Request) -> web.StreamResponse:
    org = await _org(request)
    service = _service(request)
    urls = _urls(request)
    meta: dict[str, Any] = {
        "externalAccountRequired": service.settings.eab_required,
        "profiles": {name: service.profile_description(name) for name in service.profile_names},
    }
    if service.settings.terms_of_service:
        meta["termsOfService"] = service.settings.terms_of_service
    if service.settings.website:
        meta["website"] = service.settings.website
    if service.settings.caa_identities:
        meta["caaIdentities"] = list(service.settings.caa_identities)
    return web.json_response({
        "newNonce": urls.org(org.slug, "new-nonce"),
        "newAccount": urls.org(org.slug, "new-account"),
        "newOrder": urls.org(org.slug, "new-order"),
        "revokeCert": urls.org(org.slug, "revoke-cert"),
        "keyChange": urls.org(org.slug, "key-change"),
        "renewalInfo": urls.org(org.slug, "renewal-info"),
        "meta": meta,
    })


@acme_handler
async def new_nonce(request: web.Request) -> web.StreamResponse:
    await _org(request)
    # RFC 8555 7.2: 200 for HEAD, 204 for GET.
    return web.Response(status=200 if request.method == "HEAD" else 204)


@acme_handler
async def new_account(request: web.Request) -> web.StreamResponse:
    org = await _org(request)
    signed = await _verified(request, allow_jwk=True, require_jwk=True)
    assert signed.jwk is not None
    payload = signed.jws.payload_json()
    service = _service(request)
    urls = _urls(request)
    key = AccountKey(signed.jwk, jwk_thumbprint(signed.jwk))
    if payload.get("onlyReturnExisting") is True:
        existing = await service.find_account(key.thumbprint)
        if existing is None:
            raise AcmeProblem("accountDoesNotExist", "no account has this key")
        return _json(request, account_json(existing), 200, urls.account(existing.account_id))
    contact = payload.get("contact", [])
    if not isinstance(contact, list):
        raise AcmeProblem("malformed", "contact must be a list")
    eab = None
    binding = payload.get("externalAccountBinding")
    if binding is not None and await service.find_account(key.thumbprint) is None:
        eab = await _check_eab(request, org, binding, key)
    account, created = await service.new_account(
        org, key, contact, payload.get("termsOfServiceAgreed") is True, eab)
    return _json(request, account_json(account), 201 if created else 200,
                 urls.account(account.account_id))


async def _check_eab(request: web.Request, org: Organization, binding: Any,
                     account_key: AccountKey) -> Any:
    if not isinstance(binding, dict):
        raise AcmeProblem("malformed", "externalAccountBinding must be a JWS")
    inner = jose.parse(binding)
    kid = inner.protected.get("kid")
    if not isinstance(kid, str):
        raise AcmeProblem("malformed", "the EAB JWS needs a kid")
    if inner.protected.get("url") != _urls(request).org(org.slug, "new-account") \
            and inner.protected.get("url") != str(request.url):
        raise AcmeProblem("unauthorized", "the EAB url must be the newAccount URL", 401)
    if "nonce" in inner.protected:
        raise AcmeProblem("malformed", "the EAB JWS must not carry a nonce")
    key = await _service(request).eab_key(kid, org)
    jose.verify_mac(inner, key.hmac_key)
    try:
        bound = inner.payload_json()
    except AcmeProblem:
        raise AcmeProblem("malformed", "the EAB payload must be the account key") from None
    if jwk_thumbprint(bound) != account_key.thumbprint:
        raise AcmeProblem("unauthorized", "the EAB binds another key", 401)
    return key


@acme_handler
async def account(request: web.Request) -> web.StreamResponse:
    signed = await _verified(request)
    assert signed.account is not None
    if signed.account.account_id != _resource_id(request):
        raise AcmeProblem("unauthorized", "this is another account", 403)
    service = _service(request)
    updated = signed.account
    if signed.jws.payload:
        payload = signed.jws.payload_json()
        contact = payload.get("contact")
        if contact is not None and not isinstance(contact, list):
            raise AcmeProblem("malformed", "contact must be a list")
        status = payload.get("status")
        if status not in (None, "valid", "deactivated"):
            raise AcmeProblem("malformed", "status may only be set to deactivated")
        updated = await service.update_account(signed.account, contact,
                                               status == "deactivated")
    return _json(request, account_json(updated), 200, _urls(request).account(updated.account_id))


@acme_handler
async def key_change(request: web.Request) -> web.StreamResponse:
    await _org(request)
    signed = await _verified(request)
    assert signed.account is not None
    inner = jose.parse(signed.jws.payload_json())
    new_jwk = inner.protected.get("jwk")
    if "kid" in inner.protected or not isinstance(new_jwk, dict):
        raise AcmeProblem("malformed", "the inner JWS must carry the new key as jwk")
    if inner.protected.get("url") != signed.jws.protected.get("url"):
        raise AcmeProblem("malformed", "the inner JWS url must match the outer one")
    if "nonce" in inner.protected:
        raise AcmeProblem("malformed", "the inner JWS must not carry a nonce")
    jose.verify(inner, jose.public_key(new_jwk))
    payload = inner.payload_json()
    urls = _urls(request)
    if payload.get("account") != urls.account(signed.account.account_id):
        raise AcmeProblem("malformed", "the inner payload names another account")
    old = payload.get("oldKey")
    if not isinstance(old, dict) or jwk_thumbprint(old) != signed.account.key_thumbprint:
        raise AcmeProblem("malformed", "oldKey is not the account's key")
    updated = await _service(request).change_key(
        signed.account, AccountKey(new_jwk, jwk_thumbprint(new_jwk)))
    return _json(request, account_json(updated), 200, urls.account(updated.account_id))


@acme_handler
async def new_order(request: web.Request) -> web.StreamResponse:
    await _org(request)
    signed = await _verified(request)
    assert signed.account is not None
    payload = signed.jws.payload_json()
    replaces = payload.get("replaces")
    if replaces is not None and not isinstance(replaces, str):
        raise AcmeProblem("malformed", "replaces must be a string")
    profile = payload.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise AcmeProblem("malformed", "profile must be a string")
    order, _ = await _service(request).new_order(
        signed.account, payload.get("identifiers"),
        _parse_time(payload.get("notBefore"), "notBefore"),
        _parse_time(payload.get("notAfter"), "notAfter"), profile,
        None if replaces is None else ari.parse_cert_id(replaces), signed.org)
    urls = _urls(request)
    return _json(request, order_json(urls, order), 201, urls.order(order.order_id))


@acme_handler
async def order(request: web.Request) -> web.StreamResponse:
    signed = await _verified(request)
    assert signed.account is not None
    found, _ = await _service(request).order(signed.account, _resource_id(request))
    urls = _urls(request)
    response = _json(request, order_json(urls, found), 200, urls.order(found.order_id))
    if found.status == "processing":
        response.headers["Retry-After"] = "1"
    return response


@acme_handler
async def finalize(request: web.Request) -> web.StreamResponse:
    signed = await _verified(request)
    assert signed.account is not None
    payload = signed.jws.payload_json()
    csr = b64url_decode(payload.get("csr"), "csr")
    done = await _service(request).finalize(signed.account, _resource_id(request), csr)
    urls = _urls(request)
    response = _json(request, order_json(urls, done), 200, urls.order(done.order_id))
    if done.status == "processing":
        response.headers["Retry-After"] = "1"
    return response


@acme_handler
async def authorization(request: web.Request) -> web.StreamResponse:
    signed = await _verified(request)
    assert signed.account is not None
    service = _service(request)
    authz_id = _resource_id(request)
    if signed.jws.payload:
        payload = signed.jws.payload_json()
        if payload.get("status") != "deactivated":
            raise AcmeProblem("malformed", "an authorization may only be deactivated")
        found = await service.deactivate_authorization(signed.account, authz_id)
    else:
        found = await service.authorization(signed.account, authz_id)
    response = _json(request, authz_json(_urls(request), found))
    if any(c.status == "processing" for c in found.challenges):
        response.headers["Retry-After"] = "1"
    return response


@acme_handler
async def challenge(request: web.Request) -> web.StreamResponse:
    signed = await _verified(request)
    assert signed.account is not None
    service = _service(request)
    authz_id, kind = _resource_id(request, "authz"), request.match_info["type"]
    found: AcmeChallenge | None
    if signed.jws.payload:  # "{}": the client is ready (RFC 8555 7.5.1)
        signed.jws.payload_json()
        authz, found = await service.respond_to_challenge(signed.account, authz_id, kind)
    else:
        authz = await service.authorization(signed.account, authz_id)
        found = next((c for c in authz.challenges if c.type == kind), None)
    if found is None:
        raise AcmeProblem("malformed", "no such challenge", 404)
    urls = _urls(request)
    response = _json(request, challenge_json(urls, authz, found))
    response.headers.add("Link", f'<{urls.authz(authz_id)}>;rel="up"')
    if found.status == "processing":
        response.headers["Retry-After"] = "1"
    return response


@acme_handler
async def certificate(request: web.Request) -> web.StreamResponse:
    """The certificate with its default chain at /acme/cert/{id}, alternate chains (from
    cross-certificates) at /acme/cert/{id}/{n}; each links to the others (RFC 8555 7.4.2)."""
    signed = await _verified(request)
    assert signed.account is not None
    service = _service(request)
    cert_id = _resource_id(request)
    chains, issuer_url = await service.certificate_chains(signed.account, cert_id)
    alt = request.match_info.get("alt", "0")
    # ASCII digits only: str.isdigit() admits "²", which int() refuses.
    if not (alt.isascii() and alt.isdigit() and len(alt) <= 3) or int(alt) >= len(chains):
        raise AcmeProblem("malformed", "no such certificate chain", 404)
    wanted = int(alt)
    response = web.Response(body=chains[wanted],
                            content_type="application/pem-certificate-chain")
    response.headers.add("Link", f'<{issuer_url}>;rel="up"')
    urls = _urls(request)
    for number in range(len(chains)):
        if number != wanted:
            response.headers.add("Link", f'<{urls.certificate(cert_id, number)}>;rel="alternate"')
    return response


@acme_handler
async def revoke_cert(request: web.Request) -> web.StreamResponse:
    await _org(request)
    signed = await _verified(request, allow_jwk=True)
    payload = signed.jws.payload_json()
    der = b64url_decode(payload.get("certificate"), "certificate")
    reason = payload.get("reason")
    if reason is not None and (not isinstance(reason, int) or isinstance(reason, bool)):
        raise AcmeProblem("badRevocationReason", "reason must be an integer")
    await _service(request).revoke(der, reason, signed.account,
                                   signed.key if signed.account is None else None)
    return web.Response(status=200)


@acme_handler
async def renewal_info(request: web.Request) -> web.StreamResponse:
    await _org(request)
    window = await _service(request).renewal_info(
        ari.parse_cert_id(request.match_info["cert_id"]))
    document: dict[str, Any] = {"suggestedWindow": {"start": _time(window.start),
                                                    "end": _time(window.end)}}
    response = web.json_response(document)
    response.headers["Retry-After"] = "21600"  # RFC 9773 4.3: poll again in six hours
    return response


def add_routes(app: web.Application, service: AcmeService, public_https_url: str) -> None:
    app[SERVICE] = service
    app[BASE_URL] = public_https_url.rstrip("/")
    router = app.router
    router.add_post("/acme/acct/{id}", account)
    router.add_post("/acme/order/{id}", order)
    router.add_post("/acme/order/{id}/finalize", finalize)
    router.add_post("/acme/authz/{id}", authorization)
    router.add_post("/acme/chall/{authz}/{type}", challenge)
    router.add_post("/acme/cert/{id}", certificate)
    router.add_post("/acme/cert/{id}/{alt}", certificate)
    router.add_get("/acme/directory", directory)
    for prefix in ("/acme", "/acme/{org}"):
        if prefix != "/acme":
            router.add_get(f"{prefix}/directory", directory)
        router.add_route("HEAD", f"{prefix}/new-nonce", new_nonce)
        router.add_get(f"{prefix}/new-nonce", new_nonce, allow_head=False)
        router.add_post(f"{prefix}/new-account", new_account)
        router.add_post(f"{prefix}/new-order", new_order)
        router.add_post(f"{prefix}/revoke-cert", revoke_cert)
        router.add_post(f"{prefix}/key-change", key_change)
        router.add_get(f"{prefix}/renewal-info/{{cert_id}}", renewal_info)
