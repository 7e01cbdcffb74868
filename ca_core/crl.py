"""Certificate revocation lists (RFC 5280 section 5), signed through each CA's Signer.

Every CA that signs certificates (root, intermediate, issuing) publishes a full CRL; an
issuing CA with ``crl_partitions`` > 0 also publishes partitioned CRLs, each carrying a
critical IssuingDistributionPoint that names its URL, which is the CRL distribution point of
the certificates fixed to that partition at issuance. So a relying party downloads only the
partition its certificate names, and a CA with millions of certificates publishes small CRLs.

When a CRL is made again:
- a revocation of one of its certificates happened since it was made (the store's revocation
  order, ``RevocationEvent.generation``, is followed; any process may have revoked),
- half of its validity has passed (so a client that caches it until nextUpdate never holds
  an expired one),
- there is none yet, or an operator forces it (``vcc-pki crl publish``).

CRL numbers grow by one per (CA, partition); the store keeps a CRL only if its number is
higher than the stored one's, so two publishers racing cannot step a number backwards.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from asn1crypto import pem as asn1_pem
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core import x509build
from ca_core.authority import REVOCATION_REASONS, Authority, LoadedCA
from ca_core.errors import NotFound, Unavailable
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CrlHead, CrlRecord, Revocation, RevocationEvent
from ca_core.signing import Purpose, upkeep
from ca_core.storage import CertificateStore, CrlStore, StoreUnavailable

log = logging.getLogger(__name__)

PUBLISHING_CA_TYPES = ("root", "intermediate", "issuing")
# The newest CRL in a CA's revocation order: a CRL made from the store at generation g holds
# every revocation up to g (writes are serialised; see db.records.RevocationEvent).
_EVENT_PAGE = 1000


@dataclass(frozen=True, slots=True)
class CrlSettings:
    next_update: dt.timedelta = dt.timedelta(hours=24)
    partitions: int = 0  # per issuing CA, besides the full CRL
    # After a revocation, a CRL is made again no sooner than its last making took divided by
    # this share: under a stream of revocations a 100k-entry CRL (about 1.5 s) is remade
    # every 15 s, not back to back. OCSP is the fast path; CRLs follow.
    busy_share: float = 0.1


@dataclass(frozen=True, slots=True)
class PublishedCrl:
    ca_name: str
    partition: int
    crl_number: int
    entries: int
    this_update: dt.datetime
    next_update: dt.datetime
    seconds: float  # to read the entries, build, sign and store
    der_bytes: int


def revoked_entry(revocation: Revocation) -> x509.RevokedCertificate:
    """One CRL entry: serial, revocation date, reason code and invalidity date when known."""
    builder = x509.RevokedCertificateBuilder(
        serial_number=int(revocation.serial_hex, 16), revocation_date=revocation.revoked_at)
    flag = REVOCATION_REASONS.get(revocation.reason)
    # RFC 5280 5.3.1: the reason code SHOULD be absent rather than "unspecified".
    if flag is not None and flag != x509.ReasonFlags.unspecified:
        builder = builder.add_extension(x509.CRLReason(flag), critical=False)
    if revocation.invalidity_date is not None:
        builder = builder.add_extension(
            x509.InvalidityDate(revocation.invalidity_date), critical=False)
    return builder.build()


def crl_builder(
    issuer: x509build.IssuerContext,
    crl_number: int,
    this_update: dt.datetime,
    next_update: dt.datetime,
    revocations: Sequence[Revocation],
    partition_url: str | None = None,
) -> x509.CertificateRevocationListBuilder:
    """The to-be-signed CRL; ``partition_url``: a partitioned CRL's own URL (critical IDP)."""
    number = x509.CRLNumber(crl_number)
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        issuer.authority_key_identifier, x509.Extension(number.oid, False, number)]
    if partition_url is not None:
        point = x509build.distribution_point(partition_url)
        idp = x509.IssuingDistributionPoint(
            full_name=point.full_name, relative_name=None,
            only_contains_user_certs=True, only_contains_ca_certs=False,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False)
        extensions.append(x509.Extension(idp.oid, True, idp))
    # One constructor call: add_revoked_certificate copies the builder each time, which is
    # quadratic in the number of entries.
    return x509.CertificateRevocationListBuilder(
        issuer_name=issuer.name, last_update=this_update, next_update=next_update,
        extensions=extensions,
        revoked_certificates=[revoked_entry(r) for r in revocations],
    )


@dataclass
class _Dirty:
    """(CA id, partition) -> the revocation generation its next CRL must include."""

    wanted: dict[tuple[str, int], int] = field(default_factory=dict)

    def mark(self, ca_id: str, partition: int, generation: int) -> None:
        key = (ca_id, partition)
        self.wanted[key] = max(self.wanted.get(key, 0), generation)


@dataclass
class ServedCrl:
    """A stored CRL as the HTTP endpoint serves it; the PEM form is made once, on demand."""

    head: CrlHead
    crl_der: bytes
    _pem: bytes | None = None

    @property
    def pem(self) -> bytes:
        if self._pem is None:
            self._pem = asn1_pem.armor("X509 CRL", self.crl_der)
        return self._pem


class CrlPublisherStore(CrlStore, CertificateStore, Protocol):
    """What the CRL publisher reads and writes: CRLs, and the revocations they list."""


class CrlPublisher:
    """Makes and stores the CRLs of every CA; reads them back for the HTTP endpoint."""

    def __init__(self, authority: Authority, settings: CrlSettings) -> None:
        self.authority = authority
        self.store: CrlPublisherStore = authority.store
        self.settings = settings
        self._cursor: int | None = None  # revocation generation seen by this publisher
        self._dirty = _Dirty()
        self._lock = asyncio.Lock()  # one publishing run at a time in this process
        self._took: dict[tuple[str, int], float] = {}  # seconds the last making took
        self._served: dict[tuple[str, int], ServedCrl] = {}  # the last CRL read, per key

    # ------------------------------------------------------------------ reading
    async def get(self, ca_name: str, partition: int = 0) -> ServedCrl:
        """The newest stored CRL. Its DER (which runs to megabytes) is read from the store
        only when the stored CRL number has moved; each request reads just the head."""
        try:
            ca = await self.authority.ca(ca_name)
            if ca.record.ca_type not in PUBLISHING_CA_TYPES:
                raise NotFound(f"CA {ca_name} publishes no CRL")
            key = (ca.record.ca_id, partition)
            head = await self.store.get_crl_head(*key)
            served = self._served.get(key)
            if head is not None and (served is None or served.head != head):
                crl = await self.store.get_crl(*key)
                if crl is not None:
                    served = self._served[key] = ServedCrl(crl.head, crl.crl_der)
                    head = crl.head
        except StoreUnavailable as exc:
            raise Unavailable("the CRL store is not available") from exc
        if head is None or served is None:
            raise NotFound(f"no CRL {partition} of CA {ca_name} has been published yet"
                           if partition else f"no CRL of CA {ca_name} has been published yet")
        return served

    # ------------------------------------------------------------------ making
    def _publishing_cas(self, only: str | None = None) -> list[LoadedCA]:
        cas = [ca for ca in self.authority.loaded_cas()
               if ca.record.ca_type in PUBLISHING_CA_TYPES]
        if only is not None:
            cas = [ca for ca in cas if ca.record.name == only]
            if not cas:
                raise NotFound(f"no CA named {only!r} publishes CRLs")
        return cas

    def _partitions(self, ca: LoadedCA, heads: dict[tuple[str, int], CrlHead]) -> list[int]:
        """0 (the full CRL), the configured partitions of an issuing CA, and any partition
        published before (certificates keep naming it if the setting is lowered)."""
        wanted = {0}
        if ca.record.ca_type == "issuing":
            wanted.update(range(1, self.settings.partitions + 1))
        wanted.update(p for (ca_id, p) in heads if ca_id == ca.record.ca_id)
        return sorted(wanted)

    @upkeep
    async def generate(
        self, ca: LoadedCA, partition: int = 0, principal: Principal | None = None
    ) -> PublishedCrl | None:
        """Make, sign and store one CRL; None if a newer one was stored meanwhile."""
        started = time.perf_counter()
        store = self.store
        # Read the generation first: every revocation up to it is then in the list below.
        generation = await store.revocation_generation()
        previous = next((h for h in await store.list_crl_heads()
                         if h.ca_id == ca.record.ca_id and h.partition == partition), None)
        revocations = await store.list_revocations(ca.record.ca_id,
                                                   partition if partition else None)
        now = self.authority.clock().replace(microsecond=0)
        next_update = now + self.settings.next_update
        number = 1 if previous is None else previous.crl_number + 1
        issuer = ca.issuer_context(self.authority.settings)
        url = (self.authority.settings.crl_url(ca.record.name, partition)
               if partition else None)
        signer = ca.signer

        def build() -> bytes:
            builder = crl_builder(issuer, number, now, next_update, revocations, url)
            crl = builder.sign(signer.builder_key(),
                               signer.key_spec.hash_algorithm)  # type: ignore[arg-type]
            return crl.public_bytes(serialization.Encoding.DER)

        der = await ca.signing_key.sign(Purpose.CRL, build)
        head = CrlHead(ca_id=ca.record.ca_id, partition=partition, crl_number=number,
                       this_update=now, next_update=next_update,
                       source_generation=generation, entries=len(revocations))
        principal = principal or Principal.system("vcc-pki crl")
        event = AuditEvent(
            event_type="crl.published", category="ca", action="publish_crl",
            actor_type=principal.actor_type, actor_id=principal.actor_id,
            org_id=ca.record.org_id, resource_type="crl",
            resource_id=f"{ca.record.name}/{partition}",
            data={"ca": ca.record.name, "partition": partition, "crl_number": number,
                  "entries": len(revocations), "next_update": next_update.isoformat()},
        )
        self._took[(ca.record.ca_id, partition)] = time.perf_counter() - started
        if not await store.save_crl(CrlRecord(head, der), event):
            log.info("CRL %d of %s/%d lost a race to a newer one", number, ca.record.name,
                     partition)
            return None
        return PublishedCrl(ca.record.name, partition, number, len(revocations), now,
                            next_update, time.perf_counter() - started, len(der))

    async def publish_all(self, ca_name: str | None = None,
                          principal: Principal | None = None) -> list[PublishedCrl]:
        """Make every CRL (of one CA, or of all) now, whether due or not."""
        async with self._lock:
            heads = {(h.ca_id, h.partition): h
                     for h in await self.store.list_crl_heads()}
            published = []
            for ca in self._publishing_cas(ca_name):
                for partition in self._partitions(ca, heads):
                    result = await self.generate(ca, partition, principal)
                    if result is not None:
                        published.append(result)
            return published

    async def _follow_revocations(self, heads: dict[tuple[str, int], CrlHead]) -> None:
        store = self.store
        if self._cursor is None:
            # Start at the oldest source among the stored CRLs: what came after may be missing.
            self._cursor = min((h.source_generation for h in heads.values()), default=0)
        while True:
            events: list[RevocationEvent] = await store.revocations_since(
                self._cursor, _EVENT_PAGE)
            for event in events:
                revocation = event.revocation
                self._dirty.mark(revocation.ca_id, 0, event.generation)
                if revocation.crl_partition:
                    self._dirty.mark(revocation.ca_id, revocation.crl_partition,
                                     event.generation)
            if events:
                self._cursor = events[-1].generation
            if len(events) < _EVENT_PAGE:
                return

    async def due(self) -> list[tuple[LoadedCA, int]]:
        """The CRLs to make now: missing, past half their validity, or behind a revocation."""
        heads = {(h.ca_id, h.partition): h
                 for h in await self.store.list_crl_heads()}
        await self._follow_revocations(heads)
        now = self.authority.clock()
        result = []
        for ca in self._publishing_cas():
            for partition in self._partitions(ca, heads):
                key = (ca.record.ca_id, partition)
                head = heads.get(key)
                wanted = self._dirty.wanted.get(key)
                if wanted is not None and head is not None and \
                        head.source_generation >= wanted:
                    del self._dirty.wanted[key]  # another process made it already
                    wanted = None
                if head is None:
                    result.append((ca, partition))
                    continue
                half = head.this_update + (head.next_update - head.this_update) / 2
                pause = dt.timedelta(seconds=self._took.get(key, 0.0) / self.settings.busy_share)
                if now >= half or (wanted is not None and now >= head.this_update + pause):
                    result.append((ca, partition))
        return result

    async def publish_due(self) -> list[PublishedCrl]:
        async with self._lock:
            published = []
            for ca, partition in await self.due():
                wanted = self._dirty.wanted.pop((ca.record.ca_id, partition), None)
                try:
                    result = await self.generate(ca, partition)
                except Exception:
                    if wanted is not None:
                        self._dirty.mark(ca.record.ca_id, partition, wanted)
                    raise
                if result is not None:
                    published.append(result)
            return published
