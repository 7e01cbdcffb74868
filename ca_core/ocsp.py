"""OCSP responses: signing, precomputation and the responder's cache (RFC 6960, RFC 5019).

Each issuing CA answers through a delegated responder (RFC 6960 4.2.2.2): a certificate
with EKU OCSPSigning and id-pkix-ocsp-nocheck issued by the CA itself
(``hierarchy.ensure_ocsp_responder``), its key in the CA's key backend, its certificate in
every response, ResponderID byKey. thisUpdate and nextUpdate are always set; nextUpdate is
thisUpdate plus the configured validity (default four days), never beyond the responder
certificate.

Responses are *precomputed* (RFC 5019 2.2.1): signed when a certificate is issued (in the
background, off the issuing request) and again the moment it is revoked (before ``revoke``
returns), kept in the ``ResponseCache`` until nextUpdate and re-signed by the refresher
once half their validity has passed. A cache hit is a dictionary lookup (issuer hashes ->
CA), a cache read and the stored bytes: no query, no signature. A miss (or a request the
cache cannot answer: several CertIDs, a nonce when nonces are on, an unusual CertID
encoding) is answered live from the store under a concurrency limit, and written back.

The cache never goes from "revoked" back to "good" (see ``db.cache``). Revocations by other
processes (the CLI, other replicas) reach this one through ``apply_revocations``, fed by a
poll of the store's revocation generations.

Errors (mapped to OCSP response statuses in exactly one place, ``protocols.ocsp``)::

    CAError
    ├── BadRequest      -> malformedRequest  (MalformedOcspRequest: too many CertIDs,
    │                                          a nonce outside 1..128 octets)
    ├── NotFound        -> unauthorized      (UnknownIssuer: an issuer we do not serve;
    │                                          UnknownCertificate: a serial never issued)
    ├── Unavailable     -> tryLater          (store down, no responder key, overload)
    └── anything else   -> internalError
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from asn1crypto import algos as a_algos
from asn1crypto import core as a_core
from asn1crypto import ocsp as a_ocsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca_core.authority import REVOCATION_REASONS, Authority, IssuedCertificate, LoadedCA
from ca_core.errors import BadRequest, NotFound, Unavailable
from ca_core.hierarchy import OCSP_RESPONDER_VALIDITY_DAYS, ensure_ocsp_responder
from ca_core.keys import KeyAlgorithm
from ca_core.leases import held_lease
from ca_core.metrics import OCSP_LIVE_ANSWERS
from ca_core.records import CertificateRecord, OcspResponderRecord, RevocationEvent
from ca_core.response_cache import CachedResponse, CacheUnavailable, ResponseCache
from ca_core.signers.base import KeyBackendError, Signer
from ca_core.signing import Purpose, SigningKey, upkeep
from ca_core.storage import CaStore, CertificateStore, LeaseStore, StoreError
from ca_core.tracing import traced

_MISS = OCSP_LIVE_ANSWERS.labels("miss")
_UNCACHEABLE = OCSP_LIVE_ANSWERS.labels("uncacheable")

log = logging.getLogger(__name__)

# CertID hash algorithms we index issuers under (RFC 6960 4.1.1; SHA-1 is what RFC 5019
# clients send, SHA-256 what newer ones send).
HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}
# Precomputed at issuance and on revocation; the others are signed on first request.
PRECOMPUTED = ("sha1",)
MAX_NONCE = 128  # RFC 9654: 1..128 octets

T = TypeVar("T")


class MalformedOcspRequest(BadRequest):
    kind = "ocsp_malformed"


class UnknownIssuer(NotFound):
    kind = "ocsp_unknown_issuer"


class UnknownCertificate(NotFound):
    kind = "ocsp_unknown_certificate"


def responder_lease(ca_id: str) -> str:
    """The lease under which one process renews a CA's OCSP responder certificate."""
    return f"ocsp-responder:{ca_id}"


@dataclass(frozen=True, slots=True)
class OcspSettings:
    validity: dt.timedelta = dt.timedelta(days=4)
    refresh_fraction: float = 0.5  # re-sign once this part of the validity has passed
    nonce: bool = False  # True: sign live and echo a request's nonce (RFC 9654)
    max_cert_ids: int = 32
    live_concurrency: int = 16
    live_timeout: float = 5.0  # seconds a live answer may take before tryLater
    responder_validity_days: int = OCSP_RESPONDER_VALIDITY_DAYS
    precompute_concurrency: int = 4
    # With a shared (Redis) cache: keep hits in this process this long (0: off). A
    # revocation by another process is then seen at most this much later; this process's
    # own writes replace its entries at once.
    front_cache_seconds: float = 0.25
    front_cache_max_entries: int = 50_000

    @property
    def responder_renew_before(self) -> dt.timedelta:
        return max(dt.timedelta(days=self.responder_validity_days / 3), 2 * self.validity)


@dataclass(frozen=True, slots=True)
class CertId:
    """One CertID of a request (RFC 6960 4.1.1); ``raw`` is its DER when the decoder has it."""

    algorithm: str  # a key of HASHES
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class OcspQuery:
    request_der: bytes
    cert_ids: tuple[CertId, ...]
    nonce: bytes | None = None


@dataclass(frozen=True, slots=True)
class _Status:
    serial: int
    revoked_at: dt.datetime | None = None
    reason: str | None = None


class OcspStore(CertificateStore, CaStore, LeaseStore, Protocol):
    """What the OCSP responder reads: certificate statuses and the revocation feed, its CAs
    and delegated responders, and the leases of its background jobs."""


@dataclass(frozen=True, slots=True)
class _Responder:
    record: OcspResponderRecord
    certificate: x509.Certificate
    signer: Signer
    asn1_certificate: a_x509.Certificate
    key_hash: bytes  # SHA-1 of the responder's public key: the ResponderID byKey
    signing_key: SigningKey  # the responder's key, counted under the issuing CA's name
    # cryptography's builder with what every response of this responder carries set once
    # (ResponderID byKey, certs): each response adds its SingleResponse to it.
    builder: ocsp.OCSPResponseBuilder


@dataclass(slots=True)
class _Issuer:
    ca: LoadedCA
    key_id: str  # hex SHA-1 of the CA's public key: part of the cache key
    hashes: dict[str, tuple[bytes, bytes]]  # algorithm -> (issuerNameHash, issuerKeyHash)
    cert_id_prefix: dict[str, bytes] = field(default_factory=dict)
    responder: _Responder | None = None

    @property
    def ca_id(self) -> str:
        return self.ca.record.ca_id


def cache_key(algorithm: str, key_id: str, serial: int) -> str:
    return f"{algorithm}:{key_id}:{serial:x}"


def _issuer_hashes(certificate: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """issuerNameHash and issuerKeyHash of a CA for every algorithm (RFC 6960 4.1.1)."""
    name_der = certificate.subject.public_bytes()
    spki = a_x509.Certificate.load(
        certificate.public_bytes(serialization.Encoding.DER)).public_key
    key_bits = bytes(spki["public_key"])
    return {
        name: (hashlib.new(name, name_der).digest(), hashlib.new(name, key_bits).digest())
        for name in HASHES
    }


def _signature_algorithm(signer: Signer) -> str:
    spec = signer.key_spec
    if spec.algorithm is KeyAlgorithm.ED25519:
        return "ed25519"
    digest = spec.hash_algorithm.name if spec.hash_algorithm is not None else "sha256"
    return f"{digest}_ecdsa" if spec.algorithm is KeyAlgorithm.ECDSA else f"{digest}_rsa"


def _request_cert_ids(request_der: bytes) -> list[bytes]:
    """The DER of every CertID of a request, exactly as the client encoded it."""
    try:
        request = a_ocsp.OCSPRequest.load(request_der)
        return [item["req_cert"].dump() for item in request["tbs_request"]["request_list"]]
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedOcspRequest("the request cannot be decoded") from exc


def _reason(name: str | None) -> x509.ReasonFlags | None:
    # RFC 5280 5.3.1: the reason code "unspecified" SHOULD be left out.
    if name is None or name == "unspecified":
        return None
    return REVOCATION_REASONS.get(name)


def _etag(der: bytes) -> str:
    return '"' + hashlib.sha1(der, usedforsecurity=False).hexdigest() + '"'


class OcspResponder:
    """OCSP answers for every issuing CA of an Authority, through a ResponseCache."""

    def __init__(
        self,
        authority: Authority,
        cache: ResponseCache,
        settings: OcspSettings | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.authority = authority
        self.store: OcspStore = authority.store
        self.cache = cache
        self.settings = settings or OcspSettings()
        self.clock = clock or authority.clock
        self.instance_id = uuid.uuid4().hex
        self._index: dict[tuple[str, bytes, bytes], _Issuer] = {}
        self._by_ca_id: dict[str, _Issuer] = {}
        self._by_key_id: dict[str, _Issuer] = {}
        self._live = asyncio.Semaphore(self.settings.live_concurrency)
        self._background = asyncio.Semaphore(self.settings.precompute_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._loaded = False
        self._load_lock = asyncio.Lock()
        # Revocations whose responses could not be written (cache down): retried.
        self._pending: dict[str, _Status] = {}
        self._pending_retry_at = 0.0
        # key -> (monotonic expiry, entry): a few hundred ms of hits without a Redis trip.
        self._front: dict[str, tuple[float, CachedResponse]] = {}
        self._front_ttl = self.settings.front_cache_seconds if cache.shared else 0.0
        # Counts this process's cache writes: a read that overlapped a write does not go
        # into the front cache (it may hold what the write replaced).
        self._writes = 0

    # ------------------------------------------------------------------ loading
    async def load(self, create: bool = False) -> None:
        """Index every issuing CA and open its newest responder; ``create`` makes or renews
        responders that are missing or about to expire (see ``maintain``)."""
        async with self._load_lock:
            for record in await self.store.list_cas():
                # A rollover's retired CA keeps answering for what it issued, and its next
                # CA answers from the start (its responder and RA certificates).
                if record.ca_type != "issuing" or \
                        record.status not in ("active", "next", "retired"):
                    continue
                ca = await self.authority.ca(record.name)
                issuer = self._by_ca_id.get(record.ca_id)
                if issuer is None:
                    issuer = self._add_issuer(ca)
                if create:
                    await self._ensure_responder(issuer)
                await self._load_responder(issuer)
            self._loaded = True

    async def _ready(self) -> bool:
        """Whether issuance and revocation should touch the cache. A CLI process loads the
        responders only when the cache is shared (Redis): its own in-process cache would
        die with it, and the gateway learns of the change from the store anyway."""
        if self._loaded:
            return True
        if not self.cache.shared or self._closing:
            return False
        try:
            await self.load()
        except Exception as exc:
            log.warning("cannot load the OCSP responders: %s", exc)
            return False
        return True

    def _add_issuer(self, ca: LoadedCA) -> _Issuer:
        hashes_by_alg = _issuer_hashes(ca.certificate)
        key_id = hashes_by_alg["sha1"][1].hex()
        issuer = _Issuer(ca=ca, key_id=key_id, hashes=hashes_by_alg)
        for name, (name_hash, key_hash) in hashes_by_alg.items():
            algorithm = a_algos.DigestAlgorithm({"algorithm": name, "parameters": a_core.Null()})
            # CertID = hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber: the first
            # three are fixed per issuer, encoded once here by asn1crypto.
            issuer.cert_id_prefix[name] = (algorithm.dump() + a_core.OctetString(name_hash).dump()
                                           + a_core.OctetString(key_hash).dump())
            self._index[(name, name_hash, key_hash)] = issuer
        self._by_ca_id[ca.record.ca_id] = issuer
        self._by_key_id[key_id] = issuer
        return issuer

    async def _ensure_responder(self, issuer: _Issuer) -> None:
        # A short lease renewed while the renewal runs (issue 15): a replica killed in the
        # middle blocks it for LEASE_SECONDS, not for minutes.
        async with held_lease(self.store, responder_lease(issuer.ca_id),
                              self.instance_id) as held:
            if not held:
                return
            _, created = await ensure_ocsp_responder(
                self.authority, issuer.ca.record.name,
                validity_days=self.settings.responder_validity_days,
                renew_before=self.settings.responder_renew_before,
            )
            if created:
                log.info("new OCSP responder certificate for CA %s", issuer.ca.record.name)

    async def _load_responder(self, issuer: _Issuer) -> None:
        records = await self.store.list_ocsp_responders(issuer.ca_id)
        now = self.clock()
        usable = [r for r in records if r.not_before <= now < r.not_after]
        if not usable:
            if issuer.responder is None:
                log.warning("CA %s has no valid OCSP responder; answering tryLater",
                            issuer.ca.record.name)
            return
        record = usable[0]
        if issuer.responder is not None and issuer.responder.record.responder_id == \
                record.responder_id:
            return
        try:
            signer = await asyncio.to_thread(self.authority.keys.load, record.key_ref)
        except KeyBackendError as exc:
            log.error("cannot open the OCSP responder key of CA %s: %s",
                      issuer.ca.record.name, exc)
            return
        certificate = x509.load_der_x509_certificate(record.certificate_der)
        asn1_certificate = a_x509.Certificate.load(record.certificate_der)
        key_hash = asn1_certificate.public_key.sha1
        issuer.responder = _Responder(
            record, certificate, signer, asn1_certificate, key_hash,
            SigningKey(issuer.ca.record.name, signer, certificate),
            ocsp.OCSPResponseBuilder().responder_id(
                ocsp.OCSPResponderEncoding.HASH, certificate).certificates([certificate]),
        )

    async def maintain(self) -> None:
        """Periodic: pick up new CAs and responders, renew responders before they expire."""
        await self.load(create=True)

    def issuers(self) -> list[str]:
        return [issuer.ca.record.name for issuer in self._by_ca_id.values()]

    @property
    def has_pending(self) -> bool:
        """Revoked responses that could not be written to the cache yet."""
        return bool(self._pending)

    # ------------------------------------------------------------------ answering
    @traced("ca.ocsp_answer")
    async def answer(self, query: OcspQuery) -> CachedResponse:
        """The response for ``query``: from the cache when it can, else signed live."""
        nonce = query.nonce if self.settings.nonce else None
        if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE:
            raise MalformedOcspRequest("a nonce must be 1 to 128 octets long")
        cert_ids = query.cert_ids
        if len(cert_ids) == 1 and nonce is None:
            cid = cert_ids[0]
            issuer = self._index.get((cid.algorithm, cid.issuer_name_hash, cid.issuer_key_hash))
            if issuer is None:
                raise UnknownIssuer("this responder does not serve that issuer")
            key = cache_key(cid.algorithm, issuer.key_id, cid.serial)
            entry = self._front_get(key)
            if entry is None:
                writes = self._writes
                try:
                    entry = await self.cache.get(key)
                except CacheUnavailable:
                    entry = None
                if entry is not None and entry.der and writes == self._writes:
                    self._front_put(key, entry)
            if entry is not None and entry.der and entry.cert_id in query.request_der \
                    and entry.next_update > self.clock().timestamp():
                return entry
            # counted once answered: a live answer that fails (unknown certificate,
            # tryLater) is no successful response, and hits = successful - these
            entry = await self._answer_live(query, None, issuer, key)
            _MISS.inc()
            return entry
        entry = await self._answer_live(query, nonce, None, None)
        _UNCACHEABLE.inc()
        return entry

    async def _answer_live(
        self, query: OcspQuery, nonce: bytes | None, issuer: _Issuer | None, key: str | None
    ) -> CachedResponse:
        cert_ids = query.cert_ids
        if not cert_ids:
            raise MalformedOcspRequest("the request names no certificate")
        if len(cert_ids) > self.settings.max_cert_ids:
            raise MalformedOcspRequest(
                f"at most {self.settings.max_cert_ids} certificates per request")
        if issuer is None:
            found: dict[str, _Issuer] = {}
            for c in cert_ids:
                match = self._index.get((c.algorithm, c.issuer_name_hash, c.issuer_key_hash))
                if match is None:
                    raise UnknownIssuer("this responder does not serve that issuer")
                found[match.ca_id] = match
            if len(found) != 1:
                # One response has one signer, and each CA has its own responder.
                raise UnknownIssuer("ask about one issuer's certificates per request")
            (issuer,) = found.values()
        responder = issuer.responder
        if responder is None:
            raise Unavailable("no OCSP responder key is available for that issuer")
        try:
            async with asyncio.timeout(self.settings.live_timeout), self._live:
                statuses = await self.store.certificate_statuses(
                    issuer.ca_id, [format(c.serial, "x") for c in cert_ids])
                by_serial = {s.serial_hex: s for s in statuses}
                wanted: list[_Status] = []
                for c in cert_ids:
                    record = by_serial.get(format(c.serial, "x"))
                    if record is None:
                        raise UnknownCertificate("no certificate with that serial was issued")
                    revoked = record.status == "revoked"
                    wanted.append(_Status(
                        c.serial, record.revoked_at if revoked else None,
                        record.revocation_reason if revoked else None))
                single = len(cert_ids) == 1
                canonical = single and self._cert_id(issuer, cert_ids[0].algorithm,
                                                     cert_ids[0].serial) in query.request_der
                if canonical:
                    entry = await self._sign(issuer, responder, cert_ids[0].algorithm,
                                             wanted[0], nonce)
                else:
                    raw = [c.raw for c in cert_ids]
                    if any(r is None for r in raw):
                        raw = list(_request_cert_ids(query.request_der))
                    entry = await self._sign_many(
                        issuer, responder, [r for r in raw if r is not None], wanted, nonce)
        except TimeoutError:
            raise Unavailable("the responder is busy") from None
        except StoreError as exc:
            log.warning("OCSP live answer: store unavailable: %s", exc)
            raise Unavailable("the certificate store is not available") from exc
        if key is not None and canonical and nonce is None:
            await self._put([(key, entry, self._refresh_at(entry))])
        return entry

    # ------------------------------------------------------------------ signing
    def _cert_id(self, issuer: _Issuer, algorithm: str, serial: int) -> bytes:
        """The DER CertID the precomputed responses carry (parameters NULL, as OpenSSL,
        Go and cryptography encode it): the fields asn1crypto encoded once per issuer, then
        the serial."""
        cert_id: bytes = a_ocsp.CertId(
            contents=issuer.cert_id_prefix[algorithm] + a_core.Integer(serial).dump()).dump()
        return cert_id

    def _times(self, responder: _Responder) -> tuple[dt.datetime, dt.datetime]:
        this_update = self.clock().replace(microsecond=0)
        next_update = min(this_update + self.settings.validity,
                          responder.certificate.not_valid_after_utc)
        return this_update, next_update

    def _refresh_at(self, entry: CachedResponse) -> int:
        span = entry.next_update - entry.this_update
        return entry.this_update + int(span * self.settings.refresh_fraction)

    async def _sign(
        self, issuer: _Issuer, responder: _Responder, algorithm: str, status: _Status,
        nonce: bytes | None = None,
    ) -> CachedResponse:
        """One SingleResponse, built and signed by cryptography's OCSPResponseBuilder (a
        token key signs through ``builder_key``, see ``signers.base``).

        Measured per response (software P-256, issue 18, a loaded machine): this path
        ~170 us CPU (the signature ~45 us of it), asn1crypto from dicts ~630 us or more; a
        hand-rolled DER encoder was ~60 us, but the house rule is no hand-rolled ASN.1."""
        this_update, next_update = self._times(responder)
        name_hash, key_hash = issuer.hashes[algorithm]
        revoked = status.revoked_at is not None
        builder = responder.builder.add_response_by_hash(
            issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=status.serial,
            algorithm=HASHES[algorithm],
            cert_status=ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD,
            this_update=this_update, next_update=next_update,
            revocation_time=status.revoked_at, revocation_reason=_reason(status.reason),
        )
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        signer = responder.signer
        response = await responder.signing_key.sign(
            Purpose.OCSP,
            lambda: builder.sign(signer.builder_key(), signer.key_spec.hash_algorithm))
        der = response.public_bytes(serialization.Encoding.DER)
        return CachedResponse(
            der, revoked, int(this_update.timestamp()), int(next_update.timestamp()),
            self._cert_id(issuer, algorithm, status.serial), _etag(der))

    async def _sign_many(
        self, issuer: _Issuer, responder: _Responder, raw_cert_ids: Sequence[bytes],
        statuses: Sequence[_Status], nonce: bytes | None,
    ) -> CachedResponse:
        """A BasicOCSPResponse with one SingleResponse per CertID, each echoing the request's
        CertID byte for byte; built with asn1crypto and signed through the Signer (what
        cryptography's builder cannot do: it makes one SingleResponse)."""
        this_update, next_update = self._times(responder)
        responses = []
        for raw, status in zip(raw_cert_ids, statuses, strict=True):
            if status.revoked_at is None:
                cert_status = a_ocsp.CertStatus(name="good", value=a_core.Null())
            else:
                info: dict[str, object] = {"revocation_time": status.revoked_at}
                if _reason(status.reason) is not None:
                    info["revocation_reason"] = status.reason  # same names as asn1crypto
                cert_status = a_ocsp.CertStatus(name="revoked", value=info)
            responses.append({
                "cert_id": a_ocsp.CertId.load(raw), "cert_status": cert_status,
                "this_update": this_update, "next_update": next_update,
            })
        tbs: dict[str, object] = {
            "responder_id": a_ocsp.ResponderId(name="by_key", value=responder.key_hash),
            "produced_at": this_update,
            "responses": responses,
        }
        if nonce is not None:
            tbs["response_extensions"] = [
                {"extn_id": "nonce", "critical": False, "extn_value": nonce}]
        tbs_data = a_ocsp.ResponseData(tbs)
        tbs_der = tbs_data.dump()
        signer = responder.signer
        signature = await responder.signing_key.sign(
            Purpose.OCSP, lambda: signer.sign_sync(tbs_der))
        basic = a_ocsp.BasicOCSPResponse({
            "tbs_response_data": tbs_data,
            "signature_algorithm": {"algorithm": _signature_algorithm(signer)},
            "signature": signature,
            "certs": [responder.asn1_certificate],
        })
        der = a_ocsp.OCSPResponse({
            "response_status": "successful",
            "response_bytes": {"response_type": "basic_ocsp_response", "response": basic},
        }).dump()
        return CachedResponse(
            der, any(s.revoked_at is not None for s in statuses),
            int(this_update.timestamp()), int(next_update.timestamp()), b"", _etag(der))

    def _front_get(self, key: str) -> CachedResponse | None:
        if not self._front_ttl:
            return None
        found = self._front.get(key)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._front[key]
            return None
        return found[1]

    def _front_put(self, key: str, entry: CachedResponse) -> None:
        if not self._front_ttl:
            return
        if len(self._front) >= self.settings.front_cache_max_entries:
            self._front.clear()  # entries live a fraction of a second: start over
        self._front[key] = (time.monotonic() + self._front_ttl, entry)

    async def _put(self, items: Sequence[tuple[str, CachedResponse, int | None]]) -> bool:
        self._writes += 1
        for key, _, _ in items:
            self._front.pop(key, None)
        try:
            await self.cache.put_many(items)
        except CacheUnavailable as exc:
            log.debug("OCSP cache write skipped: %s", exc)
            return False
        finally:
            # This process's own writes show at once: nothing read before them stays.
            self._writes += 1
            for key, _, _ in items:
                self._front.pop(key, None)
        return True

    # ------------------------------------------------------------------ precompute, revoke
    async def certificate_issued(self, issued: IssuedCertificate) -> None:
        """Precompute the "good" response in the background: issuance does not wait."""
        if self._closing or (not self._loaded and not self.cache.shared):
            return  # what _ready() would say, without a task per certificate to say it
        record = issued.record
        task = asyncio.create_task(self._precompute(record.issuer_ca_id, record.serial_hex))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @upkeep
    async def _precompute(self, ca_id: str, serial_hex: str) -> None:
        if not await self._ready():
            return
        issuer = self._by_ca_id.get(ca_id)
        if issuer is None or issuer.responder is None:
            return
        try:
            async with self._background:
                status = _Status(int(serial_hex, 16))
                items = []
                for algorithm in PRECOMPUTED:
                    entry = await self._sign(issuer, issuer.responder, algorithm, status)
                    key = cache_key(algorithm, issuer.key_id, status.serial)
                    items.append((key, entry, self._refresh_at(entry)))
                await self._put(items)
        except Exception:  # a precompute that fails is a later cache miss, nothing worse
            log.exception("precomputing the OCSP response of %s failed", serial_hex)

    async def certificate_revoked(self, record: CertificateRecord) -> None:
        """Re-sign the revoked response now; tombstone the other CertID algorithms."""
        if record.revoked_at is None or not await self._ready():
            return
        status = _Status(int(record.serial_hex, 16), record.revoked_at, record.revocation_reason)
        await self._publish_revoked(record.issuer_ca_id, status)

    @upkeep
    async def _publish_revoked(self, ca_id: str, status: _Status) -> bool:
        issuer = self._by_ca_id.get(ca_id)
        if issuer is None:
            return True
        expires = int(self.clock().timestamp() + self.settings.validity.total_seconds()) + 60
        items: list[tuple[str, CachedResponse, int | None]] = []
        for algorithm in HASHES:
            key = cache_key(algorithm, issuer.key_id, status.serial)
            entry = None
            if algorithm in PRECOMPUTED and issuer.responder is not None:
                try:
                    entry = await self._sign(issuer, issuer.responder, algorithm, status)
                except Exception:
                    log.exception("signing the revoked OCSP response of %x failed",
                                  status.serial)
            if entry is None:
                items.append((key, CachedResponse.tombstone(expires), None))
            else:
                items.append((key, entry, self._refresh_at(entry)))
        pending_key = f"{ca_id}:{status.serial:x}"
        if await self._put(items):
            self._pending.pop(pending_key, None)
            return True
        self._pending[pending_key] = status
        return False

    async def apply_revocations(self, events: Sequence[RevocationEvent]) -> bool:
        """Revocations the store reports (possibly made by another process): make sure the
        cache says "revoked" for each. False when the cache could not be written (the
        caller retries the same events later)."""
        ok = True
        if self._pending and time.monotonic() >= self._pending_retry_at:
            self._pending_retry_at = time.monotonic() + 5.0
            for pending_key, status in list(self._pending.items()):
                ok = await self._publish_revoked(pending_key.split(":", 1)[0], status) and ok
        wanted: list[tuple[str, _Status, str]] = []
        for event in events:
            revocation = event.revocation
            issuer = self._by_ca_id.get(revocation.ca_id)
            if issuer is None:
                continue
            status = _Status(int(revocation.serial_hex, 16), revocation.revoked_at,
                             revocation.reason)
            wanted.append((cache_key(PRECOMPUTED[0], issuer.key_id, status.serial), status,
                           revocation.ca_id))
        if not wanted:
            return ok
        try:
            current = await self.cache.get_many([key for key, _, _ in wanted])
        except CacheUnavailable:
            current = [None] * len(wanted)
            ok = False
        for (_, status, ca_id), entry in zip(wanted, current, strict=True):
            if entry is not None and entry.revoked and entry.der:
                continue  # another process (or this one, on revoke) already did it
            ok = await self._publish_revoked(ca_id, status) and ok
        return ok

    # ------------------------------------------------------------------ refresh, warm
    @upkeep
    async def refresh_due(self, limit: int = 500) -> int:
        """Re-sign cached responses past their refresh time; returns how many."""
        now = self.clock()
        try:
            keys = await self.cache.due(int(now.timestamp()), limit)
        except CacheUnavailable:
            return 0
        groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for key in keys:
            try:
                algorithm, key_id, serial_text = key.split(":")
                groups.setdefault((algorithm, key_id), []).append((key, int(serial_text, 16)))
            except ValueError:
                await self._forget(key)
        refreshed = 0
        for (algorithm, key_id), members in groups.items():
            issuer = self._by_key_id.get(key_id)
            if issuer is None or issuer.responder is None or algorithm not in HASHES:
                for key, _ in members:
                    await self._forget(key)
                continue
            statuses = {
                s.serial_hex: s for s in await self.store.certificate_statuses(
                    issuer.ca_id, [format(serial, "x") for _, serial in members])
            }
            items: list[tuple[str, CachedResponse, int | None]] = []
            for key, serial in members:
                record = statuses.get(format(serial, "x"))
                if record is None or record.not_after <= now:
                    await self._forget(key)  # expired certificates are not kept fresh
                    continue
                revoked = record.status == "revoked"
                entry = await self._sign(issuer, issuer.responder, algorithm, _Status(
                    serial, record.revoked_at if revoked else None,
                    record.revocation_reason if revoked else None))
                items.append((key, entry, self._refresh_at(entry)))
            if await self._put(items):
                refreshed += len(items)
        return refreshed

    async def _forget(self, key: str) -> None:
        self._writes += 1
        self._front.pop(key, None)
        try:
            await self.cache.forget(key)
        except CacheUnavailable:
            pass

    async def warm(self, page: int = 500, limit: int | None = None) -> int:
        """Precompute missing responses of every unexpired certificate (after a restart with
        an in-process cache, or a flushed Redis); returns how many were signed."""
        signed = 0
        for issuer in list(self._by_ca_id.values()):
            after = ""
            while not self._closing:
                responder = issuer.responder
                if responder is None:
                    break
                now = self.clock()
                rows = await self.store.list_certificate_statuses(
                    issuer.ca_id, now, after, page)
                if not rows:
                    break
                after = rows[-1].serial_hex
                keys = [cache_key(PRECOMPUTED[0], issuer.key_id, int(r.serial_hex, 16))
                        for r in rows]
                try:
                    current = await self.cache.get_many(keys)
                except CacheUnavailable:
                    return signed
                items: list[tuple[str, CachedResponse, int | None]] = []
                for key, row, entry in zip(keys, rows, current, strict=True):
                    if entry is not None and entry.der:
                        continue
                    revoked = row.status == "revoked"
                    fresh = await self._sign(issuer, responder, PRECOMPUTED[0], _Status(
                        int(row.serial_hex, 16), row.revoked_at if revoked else None,
                        row.revocation_reason if revoked else None))
                    items.append((key, fresh, self._refresh_at(fresh)))
                await self._put(items)
                signed += len(items)
                if limit is not None and signed >= limit:
                    return signed
                await asyncio.sleep(0)  # let requests through between pages
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # redis-py may have swallowed the CancelledError mid-command
                    raise asyncio.CancelledError
        return signed

    # ------------------------------------------------------------------ lifecycle
    async def drain(self) -> None:
        """Wait for background precomputations (tests; shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        self._closing = True
        await self.drain()
