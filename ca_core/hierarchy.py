"""The CA hierarchy: root -> intermediate -> one issuing CA per organization.

``ensure_hierarchy`` is idempotent: it creates what is missing and leaves what exists.
Keys are generated in the configured key backend (a PKCS#11 token in production), under a
label that carries a random suffix so that a half-finished earlier run never collides.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import uuid
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core import x509build
from ca_core.authority import (
    Authority,
    IssuanceRequest,
    LoadedCA,
    issuing_ca_name,
    serial_hex,
)
from ca_core.errors import BadRequest, Conflict, NotFound
from ca_core.keys import KeySpec
from ca_core.principal import Principal
from ca_core.records import AuditEvent, CARecord, OcspResponderRecord, Organization
from ca_core.storage import StoreConflict
from ca_core.tsa import TSA_CA_TYPE, TsaSettings, ensure_tsa

ROOT = "root"
INTERMEDIATE = "intermediate"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")  # \Z: "$" lets a final "\n" in
# Path segments the ACME server uses after /acme/: an organization of that name would have
# its directory shadowed (/acme/cert/new-order is a certificate URL).
RESERVED_SLUGS = frozenset({"acct", "order", "authz", "chall", "cert", "directory",
                            "new-nonce", "new-account", "new-order", "revoke-cert",
                            "key-change", "renewal-info"})

# path length: root -> intermediate -> issuing -> leaf
_PATH_LENGTH = {"root": 2, "intermediate": 1, "issuing": 0}


@dataclass(frozen=True, slots=True)
class CreatedCA:
    name: str
    ca_type: str
    subject: str


async def _create_ca(
    authority: Authority,
    name: str,
    ca_type: str,
    common_name: str,
    spec: KeySpec,
    validity_days: int,
    parent: LoadedCA | None,
    org: Organization | None,
    principal: Principal,
    status: str = "active",
) -> CreatedCA:
    settings = authority.settings
    label = f"vcc-{name}-{secrets.token_hex(4)}"
    signer = await asyncio.to_thread(authority.keys.generate, spec, label)
    now = authority.clock().replace(microsecond=0)
    not_after = now + dt.timedelta(days=validity_days)
    if parent is not None:
        not_after = min(not_after, parent.certificate.not_valid_after_utc)
    subject = x509build.name(common_name, settings.organization_name, settings.country)
    builder = x509build.ca_builder(
        subject=subject, public_key=signer.public_key, serial=x509.random_serial_number(),
        not_before=now - dt.timedelta(minutes=5), not_after=not_after,
        path_length=_PATH_LENGTH[ca_type],
        issuer=None if parent is None else parent.issuer_context(settings),
    )
    issuing_signer = signer if parent is None else parent.signer
    certificate = await issuing_signer.run(
        lambda: x509build.sign(builder, issuing_signer.builder_key(), issuing_signer.key_spec)
    )
    record = CARecord(
        ca_id=str(uuid.uuid4()), name=name, ca_type=ca_type,
        org_id=None if org is None else org.org_id,
        parent_ca_id=None if parent is None else parent.record.ca_id,
        subject_dn=certificate.subject.rfc4514_string(),
        serial_hex=serial_hex(certificate.serial_number),
        certificate_der=certificate.public_bytes(serialization.Encoding.DER),
        key_ref=signer.key_ref, key_backend=authority.keys.name,
        key_algorithm=spec.algorithm.value, key_size=spec.size,
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        status=status, created_at=authority.clock(),
    )
    event = AuditEvent(
        event_type="ca.created", category="ca", action="create_ca",
        actor_type=principal.actor_type, actor_id=principal.actor_id,
        org_id=record.org_id, resource_type="certificate_authority", resource_id=record.ca_id,
        data={"name": name, "type": ca_type, "subject": record.subject_dn,
              "key": str(spec), "key_backend": authority.keys.name,
              "not_after": record.not_after.isoformat(), "status": status},
    )
    await authority.store.add_ca(record, event)
    return CreatedCA(name, ca_type, record.subject_dn)


async def ensure_organization(
    authority: Authority, slug: str, name: str | None = None,
    principal: Principal | None = None, key: KeySpec | None = None,
    parent: str | None = None,
) -> list[CreatedCA]:
    """The organization and its issuing CA (signed by ``parent``, an intermediate: the
    shared one by default), created when missing."""
    principal = principal or Principal.system()
    if not _SLUG.match(slug):
        raise BadRequest("organization slugs are lowercase letters, digits and '-'")
    if slug in RESERVED_SLUGS and await authority.store.get_organization(slug) is None:
        raise BadRequest(f"{slug!r} is reserved (an ACME path); choose another slug")
    created: list[CreatedCA] = []
    org = await authority.store.get_organization(slug)
    if org is None:
        org = Organization(org_id=str(uuid.uuid4()), slug=slug, name=name or slug,
                           created_at=authority.clock())
        event = AuditEvent(
            event_type="organization.created", category="configuration",
            action="create_organization", actor_type=principal.actor_type,
            actor_id=principal.actor_id, org_id=org.org_id, resource_type="organization",
            resource_id=org.org_id, data={"slug": slug, "name": org.name},
        )
        try:
            await authority.store.add_organization(org, event)
        except StoreConflict:
            raise Conflict(f"organization {slug} exists") from None
    ca_name = issuing_ca_name(slug)
    if await authority.store.get_ca(ca_name) is None:
        intermediate = await _intermediate_for(authority, org, parent or INTERMEDIATE)
        settings = authority.settings
        created.append(await _create_ca(
            authority, ca_name, "issuing", f"{settings.organization_name} Issuing CA {slug}",
            key or settings.issuing_key, settings.issuing_validity_days, intermediate, org,
            principal,
        ))
    await ensure_ocsp_responder(authority, ca_name, principal=principal)
    return created


async def _intermediate_for(authority: Authority, org: Organization, name: str) -> LoadedCA:
    """The intermediate that is to sign an issuing CA of ``org``: an active intermediate that
    is shared or the organization's own (another organization's is NotFound, as if absent)."""
    record = await authority.store.get_ca(name)
    if record is None or record.ca_type != "intermediate" or \
            record.org_id not in (None, org.org_id):
        raise NotFound(f"no intermediate CA named {name!r}")
    if record.status != "active":
        raise Conflict(f"intermediate CA {name} is {record.status}")
    return await authority.ca(name)


async def create_intermediate_ca(authority: Authority, name: str, org: Organization | None,
                                 principal: Principal, key: KeySpec | None = None,
                                 validity_days: int | None = None) -> CreatedCA:
    """An intermediate CA under the root: shared (``org`` None) or one organization's, whose
    issuing CAs it may then sign (``rollover_issuing_ca(parent=...)``). Its subject names it,
    so that it is never confused with the shared intermediate."""
    if not _SLUG.match(name) or name in (ROOT, INTERMEDIATE):
        raise BadRequest("a CA name is lowercase letters, digits and '-', and not "
                         "'root' or 'intermediate'")
    if await authority.store.get_ca(name) is not None:
        raise Conflict(f"a CA named {name} exists")
    settings = authority.settings
    try:
        return await _create_ca(
            authority, name, "intermediate",
            f"{settings.organization_name} Intermediate CA {name}",
            key or settings.intermediate_key,
            validity_days or settings.intermediate_validity_days,
            await authority.ca(ROOT), org, principal)
    except StoreConflict:  # made by a concurrent call meanwhile
        raise Conflict(f"a CA named {name} exists") from None


async def rollover_issuing_ca(authority: Authority, slug: str,
                              principal: Principal | None = None,
                              key: KeySpec | None = None,
                              parent: str | None = None) -> CreatedCA:
    """`vcc-pki ca rollover --org SLUG`: the successor of the organization's issuing CA (a
    new key in the same key backend, ``{slug}-issuing-gN`` with a subject of its own so
    that name-based lookups never confuse the two) with status "next" and its OCSP
    responder. ``parent`` names the intermediate that signs it (an organization moves under
    its own intermediate this way); by default the current CA's. It issues nothing but its
    own certificates until ``activate_issuing_ca``; SCEP offers it through GetNextCACert
    meanwhile."""
    principal = principal or Principal.system("vcc-pki ca rollover")
    org = await authority.organization(slug)
    cas = await authority.issuing_cas(org)
    if cas.next is not None:
        raise Conflict(f"{cas.next} is the next CA of {slug} already: activate it first")
    current = await authority.ca(cas.active)
    if parent is not None:
        signer = await _intermediate_for(authority, org, parent)
    elif current.record.parent_ca_id is not None:
        signer = await authority.ca_by_id(current.record.parent_ca_id)
    else:
        signer = await authority.ca(INTERMEDIATE)
    generation = len(cas.all) + 1
    name = f"{issuing_ca_name(slug)}-g{generation}"
    settings = authority.settings
    created = await _create_ca(
        authority, name, "issuing",
        f"{settings.organization_name} Issuing CA {slug} G{generation}",
        key or current.signer.key_spec, settings.issuing_validity_days,
        signer, org, principal, status="next")
    authority.forget_issuing_cas(org.org_id)
    await ensure_ocsp_responder(authority, name, principal=principal)
    return created


async def activate_issuing_ca(authority: Authority, name: str,
                              principal: Principal | None = None) -> str:
    """`vcc-pki ca activate NAME`: the "next" issuing CA issues from now on (every process
    within ISSUING_CA_REFRESH_SECONDS); the one it replaces is "retired" and keeps
    answering OCSP and publishing CRLs for what it issued. Returns the retired CA's
    name."""
    principal = principal or Principal.system("vcc-pki ca activate")
    record = await authority.store.get_ca(name)
    if record is None or record.ca_type != "issuing" or record.org_id is None:
        raise NotFound(f"no issuing CA named {name!r}")
    if record.status != "next":
        raise Conflict(f"CA {name} is {record.status}: only a rollover's next CA activates")
    org = await authority.organization_by_id(record.org_id)
    previous = (await authority.issuing_cas(org)).active
    event = AuditEvent(
        event_type="ca.activated", category="ca", action="activate_ca",
        actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
        resource_type="certificate_authority", resource_id=record.ca_id,
        data={"name": name, "retired": previous})
    if not await authority.store.activate_issuing_ca(org.org_id, record.ca_id, event):
        raise Conflict(f"CA {name} was activated meanwhile")
    authority.forget_issuing_cas(org.org_id)
    return previous


async def ensure_hierarchy(
    authority: Authority, tsa: TsaSettings | None = None
) -> list[CreatedCA]:
    """Root, intermediate, the default organization's issuing CA and the time-stamping
    authority (created, or renewed before expiry); idempotent."""
    settings = authority.settings
    principal = Principal.system("vcc-pki init")
    created: list[CreatedCA] = []
    if await authority.store.get_ca(ROOT) is None:
        created.append(await _create_ca(
            authority, ROOT, "root", f"{settings.organization_name} Root CA",
            settings.root_key, settings.root_validity_days, None, None, principal,
        ))
    if await authority.store.get_ca(INTERMEDIATE) is None:
        root = await authority.ca(ROOT)
        created.append(await _create_ca(
            authority, INTERMEDIATE, "intermediate",
            f"{settings.organization_name} Intermediate CA",
            settings.intermediate_key, settings.intermediate_validity_days, root, None,
            principal,
        ))
    created += await ensure_organization(
        authority, settings.default_org, "Default Organization", principal
    )
    created_tsa = await ensure_tsa(authority, tsa)
    if created_tsa is not None:
        created.append(CreatedCA(created_tsa.name, TSA_CA_TYPE, created_tsa.subject))
    await authority.publish_profiles()
    return created


OCSP_RESPONDER_VALIDITY_DAYS = 30


async def ensure_ocsp_responder(
    authority: Authority,
    ca_name: str,
    validity_days: int = OCSP_RESPONDER_VALIDITY_DAYS,
    renew_before: dt.timedelta | None = None,
    principal: Principal | None = None,
) -> tuple[OcspResponderRecord, bool]:
    """The delegated OCSP responder of an issuing CA (RFC 6960 4.2.2.2); idempotent.

    A new key in the CA's key backend and a certificate for it (profile ``ocsp_signing``:
    EKU OCSPSigning, id-pkix-ocsp-nocheck) issued by the CA itself, stored like every other
    certificate, are made only when the CA has no responder whose certificate is valid for
    longer than ``renew_before`` (default: a third of ``validity_days``). Returns the
    responder to use and whether it is new.
    """
    principal = principal or Principal.system("vcc-pki ocsp")
    ca = await authority.ca(ca_name)
    if ca.record.ca_type != "issuing" or ca.record.org_id is None:
        raise BadRequest(f"CA {ca_name} is not an issuing CA")
    if renew_before is None:
        renew_before = dt.timedelta(days=max(1.0, validity_days / 3))
    now = authority.clock()
    current = await authority.store.list_ocsp_responders(ca.record.ca_id)
    if current and current[0].not_after - now > renew_before:
        return current[0], False
    spec = ca.signer.key_spec
    label = f"vcc-ocsp-{ca_name}-{secrets.token_hex(4)}"[:100]
    signer = await asyncio.to_thread(authority.keys.generate, spec, label)
    subject = x509build.name(
        f"{authority.settings.organization_name} OCSP Responder {ca_name}")
    csr_builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    csr = await signer.run(lambda: csr_builder.sign(
        signer.builder_key(), spec.hash_algorithm))  # type: ignore[arg-type]
    org = await authority.organization_by_id(ca.record.org_id)
    issued = await authority.issue(
        IssuanceRequest(csr=csr.public_bytes(serialization.Encoding.DER),
                        profile="ocsp_signing", org=org.slug, validity_days=validity_days,
                        ca=ca_name),
        principal,
    )
    record = OcspResponderRecord(
        responder_id=str(uuid.uuid4()), ca_id=ca.record.ca_id,
        cert_id=issued.record.cert_id, key_ref=signer.key_ref,
        key_backend=authority.keys.name, certificate_der=issued.record.certificate_der,
        not_before=issued.record.not_before, not_after=issued.record.not_after,
        created_at=authority.clock(),
    )
    event = AuditEvent(
        event_type="ocsp_responder.created", category="ca", action="create_ocsp_responder",
        actor_type=principal.actor_type, actor_id=principal.actor_id, org_id=org.org_id,
        resource_type="ocsp_responder", resource_id=record.responder_id,
        data={"ca": ca_name, "serial": issued.record.serial_hex, "key": str(spec),
              "key_backend": authority.keys.name, "not_after": record.not_after.isoformat()},
    )
    await authority.store.add_ocsp_responder(record, event)
    return record, True
