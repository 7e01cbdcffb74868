"""The ``vcc-pki`` command line: init, serve, and the operator's commands (ca, org, template,
issue, revoke, token, service-account, audit, acme, est, crl, tsa; sign, verify and signer
from ``gateway.signing_cli``; service from ``gateway.service_cli``; backup and restore
from ``gateway.backup_cli``; report from ``gateway.report_cli``). ``DESCRIPTION`` is what
``vcc-pki --help`` says."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ca_core.admin import (
    MAX_LIMIT,
    AuditFilters,
    CaCreation,
    CertificateFilters,
    OrganizationChange,
    Page,
    audit_document,
    organization_document,
    template_document,
)
from ca_core.authority import (
    DEFAULT_PROFILE,
    DEFAULT_REVOCATION_REASON,
    ISSUING_CA_REFRESH_SECONDS,
    REVOCATION_REASONS,
    IssuanceRequest,
    parse_reason,
    serial_display,
)
from ca_core.cross import (
    add_cross_certificate,
    alternate_chains,
    cross_certification_request,
)
from ca_core.enrollment_admin import csr_subject
from ca_core.errors import BadCSR, BadPublicKey, BadRequest, CAError
from ca_core.est import AuthMethod, EstLabel
from ca_core.hierarchy import (
    ensure_hierarchy,
    ensure_organization,
)
from ca_core.keys import KeySpec
from ca_core.principal import ROLES, Principal
from ca_core.profiles import BUILTIN_PROFILES, EKU_NAMES, KEY_USAGE_NAMES, SAN_TYPES
from ca_core.templates import (
    BUILTIN_NAMES,
    NOT_BASES,
    SPEC_FIELDS,
    TEMPLATE_STATUSES,
    Template,
    TemplateSpec,
)
from ca_core.tsa import TimeStampAuthority, find_timestamp
from gateway import backup_cli, report_cli, service_cli, signing_cli
from gateway.config import Config, ConfigError, load_config
from gateway.observability import configure_logging
from gateway.runtime import Services, open_services, require_cas
from gateway.tls import ensure_server_certificate, export_ca_files
from protocols.acme.jws import b64url

CLI = Principal.system("vcc-pki cli")
T = TypeVar("T")


INIT_LEASE = "init"
INIT_LEASE_SECONDS = 600.0  # longer than any init (HSM key generation included)


@contextlib.asynccontextmanager
async def _init_lease(services: Services) -> AsyncIterator[None]:
    """One ``vcc-pki init`` at a time per store: replicas (or containers) started together
    on an empty database would otherwise race to create the root CA. The others wait, then
    find the hierarchy made (init is idempotent)."""
    holder = f"init-{os.getpid()}-{secrets.token_hex(4)}"
    waited = False
    while not await services.store.try_lock(INIT_LEASE, holder, INIT_LEASE_SECONDS):
        if not waited:
            print("another vcc-pki init is running on this store; waiting for it",
                  file=sys.stderr, flush=True)
            waited = True
        await asyncio.sleep(0.5)
    try:
        yield
    finally:
        await services.store.release_lock(INIT_LEASE, holder)


async def cmd_init(config: Config, args: argparse.Namespace) -> int:
    async with open_services(config, create=True) as services, _init_lease(services):
        created = await ensure_hierarchy(services.authority, config.tsa_settings())
        for ca in created:
            print(f"created {ca.ca_type} CA {ca.name}: {ca.subject}")
        if not created:
            print("CA hierarchy already present; nothing to create")
        await services.authority.load()
        tls_dir = await ensure_server_certificate(services)
        root = await export_ca_files(services)
        print(f"HTTPS server certificate: {tls_dir / 'server.pem'}")
        print(f"root certificate: {root}")
    return 0


async def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from gateway.server import run_server

    await run_server(config)
    return 0


async def _with_services(config: Config, fn: Callable[[Services], Awaitable[int]]) -> int:
    async with open_services(config) as services:
        await require_cas(services.store)
        return await fn(services)


async def cmd_ca_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'NAME':<24} {'TYPE':<13} {'STATUS':<8} {'KEY':<9} {'BACKEND':<9} "
              f"{'NOT AFTER':<20} SUBJECT")
        for ca in await services.store.list_cas():
            key = f"{ca.key_algorithm}-{ca.key_size}"
            print(f"{ca.name:<24} {ca.ca_type:<13} {ca.status:<8} {key:<9} {ca.key_backend:<9} "
                  f"{ca.not_after:%Y-%m-%d %H:%M}     {ca.subject_dn}")
        return 0
    return await _with_services(config, run)


async def cmd_ca_rollover(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        created = await services.admin.create_ca(CLI, CaCreation(
            "issuing", organization=args.org, parent=args.parent, key=args.key))
        print(f"{created.name}: next issuing CA of {args.org} ({created.subject_dn}); it "
              f"issues nothing until `vcc-pki ca activate {created.name}`, SCEP clients get "
              "it by GetNextCACert")
        return 0
    return await _with_services(config, run)


async def cmd_ca_intermediate(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        created = await services.admin.create_ca(CLI, CaCreation(
            "intermediate", organization=args.org, name=args.name, key=args.key,
            validity_days=args.validity_days))
        owner = f"of {args.org}" if args.org else "shared"
        print(f"{created.name}: intermediate CA {owner} ({created.subject_dn}), valid until "
              f"{created.not_after:%Y-%m-%d}; move an organization under it with `vcc-pki ca "
              f"rollover --org SLUG --parent {created.name}` then `vcc-pki ca activate`")
        return 0
    return await _with_services(config, run)


async def cmd_ca_activate(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        activated = await services.admin.activate_ca(CLI, args.name)
        print(f"{args.name} is active: it issues from now on (a running gateway follows "
              f"within {ISSUING_CA_REFRESH_SECONDS:g} s); {activated.retired} is retired and keeps "
              "answering OCSP and publishing CRLs for what it issued")
        return 0
    return await _with_services(config, run)


async def cmd_ca_export(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        record = await services.store.get_ca(args.name)
        if record is None:
            print(f"error: no CA named {args.name!r}", file=sys.stderr)
            return 1
        cert = x509.load_der_x509_certificate(record.certificate_der)
        encoding = serialization.Encoding.DER if args.der else serialization.Encoding.PEM
        sys.stdout.buffer.write(cert.public_bytes(encoding))
        return 0
    return await _with_services(config, run)


def _file_name(path: str) -> str:
    return "standard input" if path == "-" else path


def _about_file(path: str, detail: str) -> str:
    """``x.txt is not a ...`` / ``x.txt: the CSR signature does not verify``."""
    name = _file_name(path)
    return f"{name} is {detail}" if detail.startswith("not ") else f"{name}: {detail}"


def _check_certificates(pem: bytes, path: str) -> None:
    """Parse every certificate in ``pem`` whole (the library parses extensions and keys
    lazily), so that a damaged one is one line naming the file, not a traceback or the
    parser's own text."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise BadRequest(f"{_file_name(path)} holds no PEM certificates") from None
    for number, certificate in enumerate(certificates, 1):
        try:
            certificate.subject.rfc4514_string()
            certificate.issuer.rfc4514_string()
            _ = certificate.extensions
            certificate.public_key()
        except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType):
            raise BadRequest(f"{_file_name(path)}: certificate {number} is damaged or uses "
                             "an algorithm this CA does not support") from None


async def cmd_ca_add_cross(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        try:
            pem = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
        _check_certificates(pem, args.file)
        try:
            record = await add_cross_certificate(services.authority, args.name, pem, CLI)
        except BadRequest as exc:
            raise BadRequest(_about_file(args.file, exc.detail)) from None
        print(f"cross-certificate of {args.name} recorded: sha256 {record.fingerprint}")
        print(f"  alternate chain up to {record.top_issuer}, until "
              f"{record.not_after:%Y-%m-%d %H:%M} UTC")
        return 0
    return await _with_services(config, run)


async def cmd_ca_csr(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        sys.stdout.buffer.write(await cross_certification_request(services.authority, args.name))
        return 0
    return await _with_services(config, run)


async def cmd_ca_chains(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        ca = await services.authority.ca(args.name)
        chains = [ca.chain, *await alternate_chains(services.authority, ca)]
        for number, chain in enumerate(chains):
            label = "default" if number == 0 else f"alternate {number}"
            print(f"chain {number} ({label}): up to {chain[-1].issuer.rfc4514_string()}")
            for certificate in chain:
                print(f"  {certificate.subject.rfc4514_string()}  "
                      f"<- {certificate.issuer.rfc4514_string()}")
        return 0
    return await _with_services(config, run)


async def cmd_org_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        created = await ensure_organization(services.authority, args.slug, args.name, CLI,
                                            args.key)
        for ca in created:
            print(f"created issuing CA {ca.name}: {ca.subject}")
        if not created:
            print(f"organization {args.slug} and its issuing CA already exist")
        await export_ca_files(services)
        return 0
    return await _with_services(config, run)


async def cmd_issue(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        csr = Path(args.csr).read_bytes() if args.csr != "-" else sys.stdin.buffer.read()
        # A certificate is recorded once issued, so an --out that cannot be written must
        # fail before issuing, not lose the PEM after: a temporary file beside it is made
        # first and renamed over it at the end (an existing file survives a failed issue).
        staged = None
        if args.out:
            target = Path(args.out)
            staged = tempfile.NamedTemporaryFile(
                "w", encoding="utf-8", dir=target.parent, prefix=f".{target.name}.",
                delete=False)
        try:
            try:
                issued = await services.authority.issue(
                    IssuanceRequest(csr=csr, profile=args.profile, org=args.org,
                                    validity_days=args.days),
                    CLI,
                )
            except (BadCSR, BadPublicKey) as exc:
                raise type(exc)(_about_file(args.csr, exc.detail)) from None
            pem = issued.certificate_pem + (issued.chain_pem if args.chain else "")
            if staged is None:
                sys.stdout.write(pem)
                print(f"serial {issued.serial}", file=sys.stderr)
                return 0
            staged.write(pem)
            staged.close()
            os.replace(staged.name, args.out)
            print(f"serial {issued.serial} written to {args.out}", file=sys.stderr)
            return 0
        finally:
            if staged is not None and not staged.closed:
                staged.close()
                Path(staged.name).unlink(missing_ok=True)
    return await _with_services(config, run)


async def cmd_revoke(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        record = await services.authority.revoke(args.serial, args.reason, CLI)
        print(f"revoked {serial_display(record.serial_hex)} ({record.revocation_reason})")
        return 0
    return await _with_services(config, run)


async def cmd_token_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        created = await services.authority.create_token(args.org, args.role, args.name or "",
                                                        principal=CLI)
        print(created.token)
        print(f"token {created.record.token_id} for role {args.role} in {args.org}; "
              "it is shown only once", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_audit_verify(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        result = await services.admin.verify_audit(CLI)
        if not result.intact:
            for p in result.problems:
                print(f"seq {p.seq}: {p.problem}")
            print(f"audit log BROKEN: {len(result.problems)} problem(s) in {result.entries} "
                  "entries")
            return 1
        print(f"audit log intact: {result.entries} entries, chain verified")
        return 0
    return await _with_services(config, run)


def _time_arg(text: str) -> dt.datetime:
    """An RFC 3339 time (a date alone is its midnight UTC)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _audit_filters(args: argparse.Namespace) -> AuditFilters:
    return AuditFilters(since=args.since, until=args.until, actor=args.actor,
                        action=args.action, resource=args.resource)


async def cmd_audit_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        page = await services.admin.query_audit(CLI, _audit_filters(args), args.cursor,
                                                args.limit)
        print(f"{'SEQ':>7} {'TIME':<20} {'ACTION':<22} {'STATUS':<8} {'ACTOR':<28} RESOURCE")
        for entry in page.items:
            event = entry.event
            print(f"{entry.seq:>7} {entry.timestamp:%Y-%m-%d %H:%M:%S} {event.action[:22]:<22} "
                  f"{event.status[:8]:<8} {(event.actor_id or '-')[:28]:<28} "
                  f"{event.resource_type or '-'}:{event.resource_id or '-'}")
        if page.next:
            print(f"more: --cursor {page.next}", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_audit_export(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        async for entry in await services.admin.export_audit(CLI, _audit_filters(args)):
            sys.stdout.write(json.dumps(audit_document(entry), ensure_ascii=False) + "\n")
        return 0
    return await _with_services(config, run)


async def cmd_token_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
        print(f"{'ID':<18} {'ORG':<16} {'ROLE':<16} {'STATE':<8} {'EXPIRES':<17} NAME")
        cursor = None
        while True:
            page = await services.admin.list_tokens(CLI, args.org, cursor, 500)
            for token in page.items:
                state = "revoked" if token.revoked else "active"
                expires = f"{token.expires_at:%Y-%m-%d %H:%M}" if token.expires_at else "never"
                print(f"{token.token_id:<18} {orgs.get(token.org_id, '?'):<16} "
                      f"{token.role:<16} {state:<8} {expires:<17} {token.name}")
            if page.next is None:
                return 0
            cursor = page.next
    return await _with_services(config, run)


async def cmd_token_revoke(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        token = await services.admin.revoke_token(CLI, args.token_id)
        print(f"token {token.token_id} revoked; it stops working at once")
        return 0
    return await _with_services(config, run)


async def cmd_service_account_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        data = Path(args.cert).read_bytes() if args.cert != "-" else sys.stdin.buffer.read()
        try:
            account = await services.admin.create_service_account(
                CLI, args.org, args.name, data, args.role)
        except BadRequest as exc:
            if "certificate" not in exc.detail:
                raise
            raise BadRequest(_about_file(args.cert, exc.detail)) from None
        print(account.account_id)
        print(f"service account {account.account_id} ({account.name}, role {account.role}) "
              f"in {args.org}: the client certificate {account.subject_dn} (SHA-256 "
              f"{account.fingerprint}) authenticates on the EST port "
              f"{config.est_port}", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_service_account_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
        print(f"{'ID':<20} {'ORG':<16} {'ROLE':<16} {'STATE':<8} {'NOT AFTER':<17} "
              f"{'NAME':<20} FINGERPRINT (SHA-256)  SUBJECT")
        cursor = None
        while True:
            page = await services.admin.list_service_accounts(CLI, args.org, cursor, 500)
            for account in page.items:
                state = "revoked" if account.revoked else "active"
                print(f"{account.account_id:<20} {orgs.get(account.org_id, '?'):<16} "
                      f"{account.role:<16} {state:<8} {account.not_after:%Y-%m-%d %H:%M} "
                      f"{account.name[:20]:<20} {account.fingerprint[:22]}  "
                      f"{account.subject_dn}")
            if page.next is None:
                return 0
            cursor = page.next
    return await _with_services(config, run)


async def cmd_service_account_revoke(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        account = await services.admin.revoke_service_account(CLI, args.account_id)
        print(f"service account {account.account_id} revoked; its certificate stops "
              "authenticating at once")
        return 0
    return await _with_services(config, run)


async def cmd_org_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'SLUG':<16} {'STATUS':<9} {'ISOLATION':<14} NAME")
        for org in (await services.admin.list_organizations(CLI, limit=500)).items:
            document = organization_document(org)
            level = document["isolation"]
            if level == "collaborative" and document["partners"]:
                level += f" ({','.join(document['partners'])})"
            print(f"{org.slug:<16} {org.status:<9} {level:<14} {org.name}")
        return 0
    return await _with_services(config, run)


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [v.strip() for v in text.split(",") if v.strip()]


async def cmd_org_update(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        policy: dict[str, Any] = {}
        for key, value in (("allowed_names", _csv(args.allowed_names)),
                           ("allowed_ip_ranges", _csv(args.allowed_ip_ranges)),
                           ("profiles", _csv(args.profiles))):
            if value is not None:
                policy[key] = value
        if args.max_validity_days is not None:
            policy["max_validity_days"] = args.max_validity_days
        partners = [] if args.no_partners else args.partner
        org = await services.admin.update_organization(CLI, args.slug, OrganizationChange(
            name=args.name, status=args.status, isolation=args.isolation,
            policy=policy or None, partners=partners))
        print(json.dumps(organization_document(org), indent=2))
        return 0
    return await _with_services(config, run)


def _template_spec(args: argparse.Namespace) -> TemplateSpec:
    """From ``--from FILE.json`` (a template document, as `template show` prints it, or
    the REST body), then the options given, which override the file's fields."""
    document: dict[str, Any] = {}
    if args.from_file:
        text = Path(args.from_file).read_text(encoding="utf-8") if args.from_file != "-" \
            else sys.stdin.read()
        try:
            loaded = json.loads(text)
        except ValueError:
            raise BadRequest(_about_file(args.from_file, "not valid JSON")) from None
        if not isinstance(loaded, dict):
            raise BadRequest(_about_file(args.from_file, "not a JSON object"))
        # a `template show` document: keep only what a template may say
        document = {k: v for k, v in loaded.items() if k in SPEC_FIELDS}
    for field, value in (("base", args.base), ("description", args.description),
                         ("max_validity_days", args.max_validity_days),
                         ("default_validity_days", args.default_validity_days),
                         ("key_usage", _csv(args.key_usage)),
                         ("extended_key_usage", _csv(args.extended_key_usage)),
                         ("allowed_keys", _csv(args.allowed_keys)),
                         ("san_types", _csv(args.san_types)),
                         ("allowed_roles", _csv(args.allowed_roles)),
                         ("require_san", args.require_san), ("status", args.status)):
        if value is not None:
            document[field] = value
    return TemplateSpec.parse(document)


def _print_template(template: Template) -> None:
    print(json.dumps(template_document(template), indent=2))


async def cmd_template_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        page = await services.admin.list_templates(CLI, args.org, args.cursor, args.limit)
        print(f"{'NAME':<24} {'BASE':<20} {'SCOPE':<12} {'STATUS':<9} {'DAYS':>5}  "
              "DESCRIPTION")
        for item in page.items:
            scope = "built-in" if item.builtin else "global" if item.org_id is None else \
                (await services.authority.organization_by_id(item.org_id)).slug
            profile = item.profile
            print(f"{profile.name:<24} {profile.base or '-':<20} {scope:<12} "
                  f"{item.status:<9} {profile.max_validity_days:>5}  {profile.description}")
        if page.next:
            print(f"next page: --cursor {page.next}", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_template_show(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        _print_template(await services.admin.get_template(CLI, args.name, args.org))
        return 0
    return await _with_services(config, run)


async def cmd_template_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        _print_template(await services.admin.create_template(
            CLI, args.name, _template_spec(args), args.org))
        return 0
    return await _with_services(config, run)


async def cmd_template_update(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        _print_template(await services.admin.update_template(
            CLI, args.name, _template_spec(args), args.org))
        return 0
    return await _with_services(config, run)


async def cmd_template_delete(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        deleted = await services.admin.delete_template(CLI, args.name, args.org)
        scope = "global" if deleted.org_id is None else args.org or "its organization"
        print(f"template {deleted.profile.name} ({scope}) deleted: requests naming it fail "
              "from now on")
        return 0
    return await _with_services(config, run)


async def cmd_org_disable(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        org = await services.admin.disable_organization(CLI, args.slug)
        print(f"organization {org.slug} disabled: its tokens and issuance stop at once")
        return 0
    return await _with_services(config, run)


async def cmd_cert_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        page = await services.admin.list_certificates(CLI, CertificateFilters(
            status=args.status, expiring_before=args.expiring_before, profile=args.profile,
            organization=args.org, text=args.search), args.cursor, args.limit)
        print(f"{'SERIAL':<42} {'STATUS':<8} {'PROFILE':<22} {'NOT AFTER':<17} SUBJECT")
        for record in page.items:
            print(f"{serial_display(record.serial_hex):<42} {record.status:<8} "
                  f"{record.profile[:22]:<22} {record.not_after:%Y-%m-%d %H:%M} "
                  f"{record.subject_dn}")
        if page.next:
            print(f"more: --cursor {page.next}", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_acme_eab_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
        print(f"{'KID':<22} {'ORG':<16} {'CREATED':<17} ACCOUNT")
        cursor = None
        while True:
            page = await services.admin.list_eab_keys(CLI, args.org, cursor, 500)
            for key in page.items:
                print(f"{key.kid:<22} {orgs.get(key.org_id, '?'):<16} "
                      f"{key.created_at:%Y-%m-%d %H:%M} {key.account_id or '-'}")
            if page.next is None:
                return 0
            cursor = page.next
    return await _with_services(config, run)


async def cmd_acme_eab_revoke(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        key = await services.admin.revoke_eab_key(CLI, args.kid)
        print(f"EAB key {key.kid} revoked; it registers no account")
        return 0
    return await _with_services(config, run)


async def cmd_acme_account_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
        print(f"{'ID':<18} {'ORG':<16} {'STATUS':<12} {'EAB KID':<22} CONTACT")
        cursor = None
        while True:
            page = await services.admin.list_acme_accounts(CLI, args.org, cursor, 500)
            for account in page.items:
                print(f"{account.account_id:<18} {orgs.get(account.org_id, '?'):<16} "
                      f"{account.status:<12} {account.eab_kid or '-':<22} "
                      f"{','.join(account.contact)}")
            if page.next is None:
                return 0
            cursor = page.next
    return await _with_services(config, run)


async def cmd_acme_account_deactivate(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        account = await services.admin.deactivate_acme_account(CLI, args.account_id)
        print(f"ACME account {account.account_id} deactivated; it is refused from now on")
        return 0
    return await _with_services(config, run)


async def cmd_acme_eab_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        key = await services.admin.create_eab_key(CLI, args.org)
        secret = b64url(key.hmac_key)
        if args.json:
            print(json.dumps({"kid": key.kid, "hmac_key": secret, "org": args.org}))
        else:
            print(f"kid      {key.kid}")
            print(f"hmac_key {secret}")
            print(f"# certbot --eab-kid {key.kid} --eab-hmac-key {secret}", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_acme_policy(config: Config, args: argparse.Namespace) -> int:
    def names(text: str | None) -> list[str] | None:
        return None if text is None else text.split(",")

    async def run(services: Services) -> int:
        policy = await services.acme.set_policy(
            args.org, allow_all=None if args.allow_all is None else args.allow_all == "yes",
            domains=names(args.domains), ip_ranges=names(args.ip_ranges),
            prevalidated=names(args.prevalidated), actor=CLI.actor_id)
        print(json.dumps({"org": args.org, "acme": policy}, indent=2))
        return 0
    return await _with_services(config, run)


async def cmd_est_label_set(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        org = await services.authority.organization(args.org)
        label = EstLabel(
            label=args.label, org_id=org.org_id, profile=args.profile, accept=args.accept,
            require_both=args.require_both, require_channel_binding=args.require_channel_binding,
            require_approval=args.require_approval,
            allow_subject_change=args.allow_subject_change,
            supersede_on_reenroll=args.supersede, key_type=args.key_type)
        await services.est.set_label(label, CLI)
        stored = await services.est.resolve_label(args.label)
        print(json.dumps({"label": stored.label, "org": org.slug, "profile": stored.profile,
                          **stored.policy()}, indent=2))
        return 0
    return await _with_services(config, run)


async def cmd_est_label_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'LABEL':<20} {'ORG':<16} {'PROFILE':<22} {'ACCEPT':<18} POLICY")
        for label in await services.est.list_labels():
            org = await services.authority.organization_by_id(label.org_id)
            flags = [name for name in ("require_both", "require_channel_binding",
                                       "require_approval", "allow_subject_change",
                                       "supersede_on_reenroll")
                     if getattr(label, name)]
            accept = ",".join(sorted(m.value for m in label.accept))
            print(f"{label.label or '(default)':<20} {org.slug:<16} {label.profile:<22} "
                  f"{accept:<18} key {label.key_type}{''.join(' ' + f for f in flags)}")
        return 0
    return await _with_services(config, run)


async def cmd_est_secret_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        created = await services.admin.enrollment.create_est_secret(
            CLI, args.org, args.label or "", args.subject, args.expires)
        print(f"user     {created.user}")
        print(f"password {created.password}")
        print(f"# one use, until {created.record.expires_at.isoformat(timespec='seconds')}"
              f"{f', for {created.record.subject}' if created.record.subject else ''}; "
              "shown only once", file=sys.stderr)
        return 0
    return await _with_services(config, run)


async def cmd_scep_challenge_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        created = await services.admin.enrollment.create_scep_challenge(
            CLI, args.org, args.profile, args.expires)
        print(created.password)
        print(f"# challenge {created.challenge_id}: one use, for {created.record.profile}, "
              f"until {created.record.expires_at.isoformat(timespec='seconds')}; shown "
              "only once", file=sys.stderr)
        return 0
    return await _with_services(config, run)


def _endpoint_json(policy: Any, org_slug: str) -> str:
    return json.dumps({"org": org_slug, "profile": policy.profile,
                       "require_approval": policy.require_approval,
                       "static_challenge": policy.secret_hash is not None}, indent=2)


async def cmd_scep_profile_set(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        policy = await services.scep.configure(args.org, args.profile, CLI,
                                               require_approval=args.require_approval)
        print(_endpoint_json(policy, args.org))
        return 0
    return await _with_services(config, run)


async def cmd_scep_profile_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'ORG':<16} {'PROFILE':<24} {'APPROVAL':<10} STATIC CHALLENGE")
        for policy in await services.scep.endpoints():
            org = await services.authority.organization_by_id(policy.org_id)
            print(f"{org.slug:<16} {policy.profile:<24} "
                  f"{'required' if policy.require_approval else 'no':<10} "
                  f"{'set' if policy.secret_hash else 'none'}")
        return 0
    return await _with_services(config, run)


def _read_secret() -> str:
    """The secret from standard input (its first line) when it is not a terminal, else
    typed twice without echo: never from the command line, where `ps` shows it."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass("static challenge: ")
    if getpass.getpass("again: ") != first:
        raise BadRequest("the two entries differ")
    return first


async def cmd_scep_secret_set(config: Config, args: argparse.Namespace) -> int:
    secret = None if args.clear else _read_secret()

    async def run(services: Services) -> int:
        policy = await services.scep.configure(args.org, args.profile, CLI, secret=secret,
                                               clear_secret=args.clear)
        print(f"static challenge of {args.org}/{policy.profile} "
              f"{'cleared' if args.clear else 'set (stored as a scrypt hash)'}")
        return 0
    return await _with_services(config, run)


async def cmd_scep_pending_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'TRANSACTION':<40} {'ORG':<12} {'PROFILE':<22} {'CREATED':<20} "
              f"{'REQUESTER':<28} SUBJECT")
        for pending in await _all(services.admin.enrollment.list_scep_pending, args.org):
            shown = csr_subject(pending.csr_der)
            org = await services.authority.organization_by_id(pending.org_id)
            created = f"{pending.created_at:%Y-%m-%d %H:%M:%S}" if pending.created_at else ""
            print(f"{pending.transaction_id:<40} {org.slug:<12} {pending.profile or '':<22} "
                  f"{created:<20} {(pending.requester or '')[:28]:<28} {shown}")
        return 0
    return await _with_services(config, run)


async def _all(list_page: Callable[..., Awaitable[Page[T]]], org: str | None) -> list[T]:
    """Every page of an admin list (as the CLI's operator, who sees every organization)."""
    items: list[T] = []
    cursor = None
    while True:
        page = await list_page(CLI, org, cursor, MAX_LIMIT)
        items += page.items
        if page.next is None:
            return items
        cursor = page.next


async def _scep_decide(config: Config, args: argparse.Namespace, approve: bool) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        decided = await services.admin.enrollment.decide_scep_request(
            CLI, args.transaction_id, approve)
        if decided.request.status == "success":
            serial = decided.serial
            print(f"request {args.transaction_id} approved: certificate {serial} issued; "
                  "the client receives it on its next CertPoll")
        else:
            print(f"request {args.transaction_id} rejected: its polls get FAILURE "
                  "badRequest")
        return 0
    return await _with_services(config, run)


async def cmd_scep_pending_approve(config: Config, args: argparse.Namespace) -> int:
    return await _scep_decide(config, args, True)


async def cmd_scep_pending_reject(config: Config, args: argparse.Namespace) -> int:
    return await _scep_decide(config, args, False)


async def cmd_est_pending_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'REQUEST':<18} {'LABEL':<16} {'CREATED':<20} {'REQUESTER':<30} SUBJECT")
        for pending in await _all(services.admin.enrollment.list_est_pending, args.org):
            subject = csr_subject(pending.csr_der)
            created = f"{pending.created_at:%Y-%m-%d %H:%M:%S}" if pending.created_at else ""
            print(f"{pending.request_id:<18} {pending.label or '(default)':<16} "
                  f"{created:<20} {pending.requester[:30]:<30} {subject}")
        return 0
    return await _with_services(config, run)


async def _est_decide(config: Config, args: argparse.Namespace, approve: bool) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        decided = await services.admin.enrollment.decide_est_request(
            CLI, args.request_id, approve)
        if decided.request.status == "issued":
            serial = decided.serial
            print(f"request {args.request_id} approved: certificate {serial} issued; the "
                  "client receives it on its next identical request")
        else:
            print(f"request {args.request_id} rejected")
        return 0
    return await _with_services(config, run)


async def cmd_est_pending_approve(config: Config, args: argparse.Namespace) -> int:
    return await _est_decide(config, args, True)


async def cmd_est_pending_reject(config: Config, args: argparse.Namespace) -> int:
    return await _est_decide(config, args, False)


async def cmd_crl_publish(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        published = await services.crls.publish_all(args.ca, CLI)
        for crl in published:
            where = services.authority.settings.crl_url(crl.ca_name, crl.partition)
            print(f"CRL {crl.crl_number} of {crl.ca_name}"
                  f"{f' partition {crl.partition}' if crl.partition else ''}: "
                  f"{crl.entries} entries, next update "
                  f"{crl.next_update.isoformat(timespec='seconds')}, {where}")
        return 0
    return await _with_services(config, run)


async def cmd_tsa_show(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        record = await find_timestamp(services.authority, args.serial)
        tsa = await services.store.get_ca_by_id(record.tsa_ca_id)
        print(f"serial          {serial_display(record.serial_hex)}")
        print(f"time            {record.gen_time.isoformat(timespec='milliseconds')}")
        print(f"policy          {record.policy_oid}")
        print(f"hash algorithm  {record.hash_algorithm}")
        print(f"message imprint {record.message_imprint.hex()}")
        print(f"nonce           {'yes' if record.has_nonce else 'no'}")
        print(f"certReq         {'yes' if record.cert_req else 'no'}")
        print(f"signed by       {tsa.name if tsa else record.tsa_ca_id}"
              f"{f' ({tsa.subject_dn})' if tsa else ''}")
        return 0
    return await _with_services(config, run)


async def cmd_tsa_chain(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        await services.authority.load()
        tsa = TimeStampAuthority(services.authority, config.tsa_settings())
        await tsa.open()
        sys.stdout.buffer.write(tsa.chain_pem())
        return 0
    return await _with_services(config, run)


DESCRIPTION = """\
Run and operate a VCC-PKI gateway: an on-premise CA (root -> intermediate -> one issuing CA
per organization) with REST, ACME, OCSP, CRL and RFC 3161 time-stamping front-ends, and
code signing (`vcc-pki sign FILE`, `vcc-pki verify FILE FILE.p7s`) and compliance reports
(`vcc-pki report certificate_lifecycle|crypto_inventory`).

Start with `vcc-pki init` (creates the PKI in ./vcc-pki-data, or $VCC_PKI_DATA_DIR), then
`vcc-pki serve`. Every other command works on the PKI that init made, whether or not the
gateway is serving. Settings come from VCC_PKI_* environment variables or a TOML file
(--config); `vcc-pki serve --help` lists them."""

EPILOG = """\
`vcc-pki COMMAND --help` shows a command's options, `vcc-pki ca --help` (and so on) the
subcommands of a group."""

# Shown in `serve --help`: the settings a first run is most likely to change, with the
# defaults read from Config so that help and behaviour cannot drift apart.
_SERVE_SETTINGS: tuple[tuple[str, str, str | None], ...] = (
    ("http_port", "HTTP listener: CA certificates, OCSP, CRLs, TSA, /metrics", None),
    ("https_port", "HTTPS listener: REST API, ACME", None),
    ("est_port", "HTTPS listener for EST (RFC 7030) and the REST API with client "
     "certificates (service accounts), the only one asking for them", None),
    ("bind", "listen address (0.0.0.0: every IPv4 interface)", None),
    ("public_http_url", "base of the OCSP, CA-issuer and CRL URLs put into certificates",
     "http://<bind>:<http_port>"),
    ("public_https_url", "base of the REST API and ACME URLs", "https://<bind>:<https_port>"),
    ("data_dir", "keys, SQLite file, TLS certificate, exported CA certificates", None),
    ("database_url", "sqlite:///FILE or postgresql://USER@HOST/DB",
     "sqlite:///<data_dir>/vcc-pki.db"),
    ("redis_url", "Redis for caches shared by several processes", "unset: in-process"),
    ("key_backend", "software (encrypted key files) or pkcs11 (an HSM)", None),
    ("key_passphrase", "passphrase of software keys", "read from <data_dir>/passphrase"),
    ("workers", "serving processes sharing the ports (SO_REUSEPORT); auto: one per core",
     "auto with redis_url set, else 1"),
    ("event_loop", "auto (uvloop when installed), uvloop or asyncio", None),
    ("log_format", "text, or json: one JSON object per log line and one line per request, "
     "with request and trace ids", None),
    ("otlp_endpoint", "send traces to this OTLP/HTTP collector (http://HOST:4318) or to "
     "stdout (console); needs the otel extra", "unset: no tracing"),
)
# Accepted by load_config but read by nothing: not offered in help.
_UNUSED_SETTINGS = frozenset({"log_level", "extra"})


_WIDTH = 92


def _serve_epilog() -> str:
    defaults = Config()
    paragraphs = [textwrap.fill(
        "settings: environment variables, or the same names in lowercase without VCC_PKI_ "
        "in the TOML file of --config (VCC_PKI_CONFIG); the environment wins. "
        "Read at start: restart serve after changing one.", _WIDTH)]
    for name, meaning, shown in _SERVE_SETTINGS:
        default = shown if shown is not None else str(getattr(defaults, name))
        paragraphs.append(textwrap.fill(
            f"{meaning} (default: {default})", _WIDTH,
            initial_indent=f"  VCC_PKI_{name.upper():<18} ", subsequent_indent=" " * 29))
    listed = {name for name, _, _ in _SERVE_SETTINGS}
    others = [f"VCC_PKI_{f.name.upper()}" for f in fields(Config)
              if f.name not in listed and f.name not in _UNUSED_SETTINGS]
    paragraphs.append("\n" + textwrap.fill(
        "more (meanings and defaults in README.md and deploy/vcc-pki.example.toml): "
        + ", ".join(others), _WIDTH))
    return "\n".join(paragraphs)


def _key_spec(text: str) -> KeySpec:
    try:
        return KeySpec.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown key type {text!r}; use one of "
                                         f"{', '.join(KEY_TYPES)}") from None


def _accept(text: str) -> frozenset[AuthMethod]:
    try:
        return frozenset(AuthMethod(m.strip()) for m in text.split(",") if m.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown method in {text!r}; use basic, certificate or basic,certificate"
        ) from None


def _duration(text: str) -> dt.timedelta:
    """``90m``, ``24h``, ``7d`` (or plain seconds)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return dt.timedelta(seconds=float(value[:-1]) * units[value[-1]])
        return dt.timedelta(seconds=float(value))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use e.g. 90m, 24h or 7d)") from None


def _reason(text: str) -> str:
    """RFC 5280 names (keyCompromise) and dashes are accepted too, as the REST API does."""
    try:
        return parse_reason(text)
    except CAError:
        return text  # argparse then lists the choices


KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096", "ed25519")
_PROFILES = [p for p in BUILTIN_PROFILES if not p.internal_only]


def build_parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="vcc-pki", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=raw)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML config file (default: $VCC_PKI_CONFIG; none: environment "
                        "and defaults only)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    # Not required=True: argparse would then report a missing command before an unknown
    # option (`vcc-pki --bogus`); main() asks for the command once the rest parsed.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parser.set_defaults(parser=parser)

    def group(name: str, help_text: str) -> argparse._SubParsersAction[
            argparse.ArgumentParser]:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(parser=command)
        return command.add_subparsers(dest=f"{name}_command", metavar="SUBCOMMAND",
                                      title="subcommands")

    def command(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                help_text: str, fn: Callable[[Config, argparse.Namespace], Awaitable[int]],
                **kwargs: Any) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = parent.add_parser(name, help=help_text,
                                                         description=help_text, **kwargs)
        cmd.set_defaults(fn=fn, parser=cmd)
        return cmd

    command(sub, "init", "create the PKI: root, intermediate, the default organization's "
            "issuing CA, the TSA and the HTTPS server certificate, in VCC_PKI_DATA_DIR "
            "(default ./vcc-pki-data) and VCC_PKI_DATABASE_URL; running it again creates only "
            "what is missing", cmd_init)
    defaults = Config()
    serve_help = (f"serve the gateway: HTTP on port {defaults.http_port} (VCC_PKI_HTTP_PORT) "
                  f"and HTTPS on port {defaults.https_port} (VCC_PKI_HTTPS_PORT) of "
                  f"{defaults.bind} (VCC_PKI_BIND); SIGTERM or Ctrl-C stops it gracefully")
    serve = command(sub, "serve", serve_help, cmd_serve, epilog=_serve_epilog(),
                    formatter_class=raw)
    serve.description = textwrap.fill(serve_help, _WIDTH)

    ca = group("ca", "certificate authorities: list, export, cross-certification")
    command(ca, "list", "list the CAs: name, type, key, key backend, expiry, subject",
            cmd_ca_list)
    export = command(ca, "export", "print a CA certificate (PEM, or DER with --der)",
                     cmd_ca_export)
    export.add_argument("name", help="CA name as `vcc-pki ca list` shows it: root, "
                        "intermediate, <org>-issuing, tsa-...")
    export.add_argument("--der", action="store_true", help="DER instead of PEM")
    csr = command(ca, "csr", "a CSR of a CA, signed by its key, for another CA to "
                  "cross-certify it (PEM to stdout)", cmd_ca_csr)
    csr.add_argument("name", help="the CA, e.g. intermediate or root")
    add_cross = command(
        ca, "add-cross", "record a cross-certificate of a CA (PEM: the cross-certificate, "
        "then the certificates above it); certificates below that CA get an alternate chain",
        cmd_ca_add_cross)
    add_cross.add_argument("name", help="the CA the cross-certificate certifies")
    add_cross.add_argument("file", help="PEM file, or - for standard input")
    rollover = command(ca, "rollover", "create the successor of an organization's issuing CA "
                       "(status next: it issues nothing until `ca activate`)", cmd_ca_rollover)
    rollover.add_argument("--org", required=True, metavar="SLUG", help="the organization")
    rollover.add_argument("--key", type=_key_spec, metavar="TYPE",
                          help=f"its key: {', '.join(KEY_TYPES)} (default: the current CA's)")
    rollover.add_argument("--parent", metavar="NAME",
                          help="the intermediate that signs it: shared or the organization's "
                          "own (default: the current CA's)")
    intermediate = command(ca, "intermediate", "create an intermediate CA under the root: an "
                           "organization's own (--org) or shared (--name)", cmd_ca_intermediate)
    intermediate.add_argument("--org", metavar="SLUG", help="the organization that owns it")
    intermediate.add_argument("--name", help="its name (default: SLUG-intermediate)")
    intermediate.add_argument("--key", type=_key_spec, metavar="TYPE",
                              help=f"its key: {', '.join(KEY_TYPES)} (default: the "
                              "configured intermediate key type)")
    intermediate.add_argument("--validity-days", type=int, metavar="DAYS",
                              help="its validity (default: the configured one; capped by "
                              "the root's)")
    activate = command(ca, "activate", "make a rollover's next CA the one that issues; the "
                       "previous one is retired (still OCSP and CRLs)", cmd_ca_activate)
    activate.add_argument("name", help="the next CA, as `ca rollover` printed it, e.g. "
                          "default-issuing-g2")
    chains = command(ca, "chains", "the chains (default and alternate) of the certificates "
                     "a CA issues", cmd_ca_chains)
    chains.add_argument("name", help="an issuing CA, e.g. default-issuing")

    org = group("org", "organizations (tenants), each with its own issuing CA")
    command(org, "list", "every organization: slug, status, isolation level, name",
            cmd_org_list)
    org_update = command(org, "update", "change an organization's name, status, isolation "
                         "level or issuance policy (the options given replace those values)",
                         cmd_org_update)
    org_update.add_argument("slug", help="the organization")
    org_update.add_argument("--name", help="display name")
    org_update.add_argument("--status", choices=("active", "disabled"),
                            help="disabled: its tokens and issuance stop at once")
    org_update.add_argument("--isolation", choices=("strict", "collaborative", "federated"),
                            help="who may read its certificates besides itself: nobody "
                            "(strict, the default), its --partner organizations "
                            "(collaborative), every federated organization (federated); "
                            "acting on them never crosses")
    org_partners = org_update.add_mutually_exclusive_group()
    org_partners.add_argument("--partner", action="append", metavar="SLUG",
                              help="an organization that may read its certificates when it "
                              "is collaborative (repeatable; the ones given replace the list)")
    org_partners.add_argument("--no-partners", action="store_true",
                              help="clear the partner list")
    org_update.add_argument("--allowed-names", metavar="D,..",
                            help="DNS suffixes its certificates may name, comma-separated "
                            "(empty: any)")
    org_update.add_argument("--allowed-ip-ranges", metavar="CIDR,..",
                            help="IP ranges its certificates may name, comma-separated")
    org_update.add_argument("--profiles", metavar="P,..",
                            help="profiles it may use, comma-separated (empty: any)")
    org_update.add_argument("--max-validity-days", type=int, metavar="N",
                            help="longest validity it may be issued")
    org_disable = command(org, "disable", "disable an organization: its tokens stop working "
                          "and it is issued nothing, at once, in every gateway process",
                          cmd_org_disable)
    org_disable.add_argument("slug", help="the organization")
    org_create = command(org, "create", "create an organization and its issuing CA "
                         "(<slug>-issuing); nothing if they exist", cmd_org_create)
    org_create.add_argument("slug", help="short name used in CA names and URLs: lowercase "
                            "letters, digits and '-', e.g. health")
    org_create.add_argument("--name", help="display name, e.g. \"Health Department\" "
                            "(default: the slug)")
    org_create.add_argument("--key", type=_key_spec, metavar="TYPE",
                            help=f"issuing CA key: {', '.join(KEY_TYPES)} (default: "
                            f"VCC_PKI_ISSUING_KEY_TYPE, {defaults.issuing_key_type})")

    template = group("template", "certificate templates: the built-in profiles (read-only) "
                     "and named narrowings of them, per organization or global")
    template_list = command(template, "list", "templates an organization sees: built-ins, "
                            "global ones and its own (without --org: every one)",
                            cmd_template_list)
    template_list.add_argument("--org", metavar="SLUG", help="as this organization sees them")
    template_list.add_argument("--limit", type=int, default=100,
                               help="page size (at most 500)")
    template_list.add_argument("--cursor", help="the next page, as the last page printed")
    template_show = command(template, "show", "one template as JSON (--org: as that "
                            "organization resolves the name)", cmd_template_show)
    bases = ", ".join(sorted(BUILTIN_NAMES - NOT_BASES))
    template_create = command(
        template, "create", "create a template: a built-in (--base) narrowed by the options "
        "given (what is left out is the base's); it may never allow more than the base or "
        "the organization's policy", cmd_template_create)
    template_update = command(template, "update", "change a template: the options given "
                              "replace those values, the rest is kept", cmd_template_update)
    template_delete = command(template, "delete", "delete a template (built-ins cannot be)",
                              cmd_template_delete)
    for each in (template_show, template_create, template_update, template_delete):
        each.add_argument("name", help="template name: lowercase letters, digits, '_', '.' "
                          "or '-'")
        each.add_argument("--org", metavar="SLUG", help="the organization's template "
                          "(default: a global one)")
    for each in (template_create, template_update):
        each.add_argument("--from", dest="from_file", metavar="FILE.json",
                          help="a JSON template document (as `template show` prints it); "
                          "the options override its fields; - for standard input")
        each.add_argument("--base", metavar="PROFILE", help=f"the built-in it narrows: "
                          f"{bases}")
        each.add_argument("--description", help="what it is for, shown in lists")
        each.add_argument("--max-validity-days", type=int, metavar="N",
                          help="longest validity: at most the base's and the organization "
                          "policy's")
        each.add_argument("--default-validity-days", type=int, metavar="N",
                          help="validity when a request names none (at most the maximum)")
        each.add_argument("--key-usage", metavar="KU,..", help="subset of the base's: "
                          + ", ".join(KEY_USAGE_NAMES))
        each.add_argument("--extended-key-usage", "--eku", metavar="EKU,..",
                          help="subset of the base's: " + ", ".join(EKU_NAMES))
        each.add_argument("--allowed-keys", metavar="TYPE,..", help="subset of the base's: "
                          + ", ".join(KEY_TYPES))
        each.add_argument("--san-types", metavar="TYPE,..", help="subset of the base's: "
                          + ", ".join(SAN_TYPES))
        each.add_argument("--allowed-roles", metavar="ROLE,..", help="who may request it: "
                          + ", ".join(ROLES))
        each.add_argument("--require-san", action=argparse.BooleanOptionalAction,
                          default=None, help="a subjectAltName is required")
        each.add_argument("--status", choices=TEMPLATE_STATUSES,
                          help="disabled: it issues nothing until active again")

    service = next(p for p in BUILTIN_PROFILES if p.name == DEFAULT_PROFILE)
    issue = command(sub, "issue", "issue a certificate from a PKCS#10 CSR (the certificate "
                    "PEM to stdout or --out, its serial to stderr)", cmd_issue)
    issue.add_argument("--csr", required=True, metavar="FILE",
                       help="the CSR, PEM or DER; - for standard input")
    issue.add_argument("--profile", default=service.name, metavar="PROFILE",
                       help=f"certificate profile (default: {service.name}); built in: "
                       + ", ".join(f"{p.name} ({', '.join(p.extended_key_usage)})"
                                   for p in _PROFILES)
                       + "; or a template (`vcc-pki template list`)")
    issue.add_argument("--org", metavar="SLUG",
                       help="organization whose issuing CA signs (default: "
                       f"VCC_PKI_DEFAULT_ORG, {defaults.default_org})")
    issue.add_argument("--days", type=int, metavar="N",
                       help="validity in days (default: the profile's, e.g. "
                       f"{service.default_validity_days} for {service.name}; at most its "
                       f"maximum, {service.max_validity_days} for {service.name})")
    issue.add_argument("--chain", action="store_true",
                       help="append the issuing and intermediate CA certificates")
    issue.add_argument("--out", metavar="FILE",
                       help="write the PEM here (replaced only once issued) instead of stdout")

    revoke = command(sub, "revoke", "revoke a certificate (a serving gateway's OCSP answers "
                     "and CRLs follow within seconds)", cmd_revoke)
    revoke.add_argument("serial", help="hex serial as `openssl x509 -serial` prints it "
                        "(0A1B..., 0a:1b:..., 0x0a1b... or serial=0A1B...)")
    revoke.add_argument("--reason", default=DEFAULT_REVOCATION_REASON, type=_reason,
                        choices=tuple(REVOCATION_REASONS), metavar="REASON",
                        help="RFC 5280 reason: " + ", ".join(REVOCATION_REASONS)
                        + " (default: unspecified; keyCompromise-style names work too)")

    token = group("token", "API bearer tokens for the REST API")
    token_create = command(token, "create", "create a token; it is printed once (stdout) "
                           "and stored hashed", cmd_token_create)
    token_create.add_argument("--org", required=True, metavar="SLUG",
                              help="organization the token acts in")
    token_create.add_argument("--role", required=True, choices=ROLES, metavar="ROLE",
                              help="what it may do: " + ", ".join(ROLES))
    token_create.add_argument("--name", help="a label to recognise the token by")
    token_list = command(token, "list", "tokens: id, organization, role, state, expiry, name "
                         "(never the secret)", cmd_token_list)
    token_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    token_revoke = command(token, "revoke", "revoke a token; it stops working at once, in "
                           "every gateway process", cmd_token_revoke)
    token_revoke.add_argument("token_id", metavar="ID", help="as `token list` shows it")

    service_account = group("service-account", "client certificates (mTLS) that act as an "
                            "organization's service account on the REST API of the EST port")
    sa_create = command(service_account, "create", "bind a client certificate (any CA's; "
                        "pinned by its SHA-256 fingerprint) to a new service account; its id "
                        "to stdout", cmd_service_account_create)
    sa_create.add_argument("--org", required=True, metavar="SLUG",
                           help="organization the service account acts in")
    sa_create.add_argument("--name", required=True, help="a label to recognise it by")
    sa_create.add_argument("--cert", required=True, metavar="FILE",
                           help="the client certificate, PEM or DER; - for standard input")
    sa_roles = [r for r in ROLES if r != "pki_super_admin"]
    sa_create.add_argument("--role", choices=sa_roles, metavar="ROLE",
                           help="what it may do (default: service_account): "
                           + ", ".join(sa_roles))
    sa_list = command(service_account, "list", "service accounts: id, organization, role, "
                      "state, certificate expiry, name, fingerprint, subject",
                      cmd_service_account_list)
    sa_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    sa_revoke = command(service_account, "revoke", "revoke a service account; its "
                        "certificate stops authenticating at once, in every gateway process",
                        cmd_service_account_revoke)
    sa_revoke.add_argument("account_id", metavar="ID", help="as `service-account list` shows it")

    audit = group("audit", "the hash-chained audit log")
    command(audit, "verify", "verify the audit log's hash chain (exit 1 when broken)",
            cmd_audit_verify)
    audit_list = command(audit, "list", "audit entries in chain order (one page)",
                         cmd_audit_list)
    audit_export = command(audit, "export", "every matching audit entry as JSON Lines, with "
                           "its hashes", cmd_audit_export)
    for audit_command in (audit_list, audit_export):
        audit_command.add_argument("--since", type=_time_arg, metavar="TIME",
                                   help="from this RFC 3339 time")
        audit_command.add_argument("--until", type=_time_arg, metavar="TIME",
                                   help="before this RFC 3339 time")
        audit_command.add_argument("--actor", help="actor id, e.g. token:0123abcd")
        audit_command.add_argument("--action", help="e.g. revoke, issue, create_token")
        audit_command.add_argument("--resource", help="resource id")
    audit_list.add_argument("--limit", type=int, default=100, help="page size (at most 500)")
    audit_list.add_argument("--cursor", help="the next page, as the last page printed")

    cert = group("cert", "issued certificates")
    cert_list = command(cert, "list", "certificates, newest first (one page)", cmd_cert_list)
    cert_list.add_argument("--status", choices=("active", "revoked", "expired"),
                           help="active (unrevoked, unexpired), revoked or expired")
    cert_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    cert_list.add_argument("--profile", help="only this profile's")
    cert_list.add_argument("--expiring-before", type=_time_arg, metavar="TIME",
                           help="notAfter before this RFC 3339 time")
    cert_list.add_argument("--search", metavar="TEXT",
                           help="substring of the subject or a SAN, any case")
    cert_list.add_argument("--limit", type=int, default=100, help="page size (at most 500)")
    cert_list.add_argument("--cursor", help="the next page, as the last page printed")

    acme = group("acme", "ACME (RFC 8555): External Account Binding keys, identifier "
                 "policies")
    eab = acme.add_parser("eab", help="External Account Binding keys",
                          description="External Account Binding keys")
    eab.set_defaults(parser=eab)
    eab_sub = eab.add_subparsers(dest="eab_command", metavar="SUBCOMMAND", title="subcommands")
    eab_create = command(eab_sub, "create", "a new EAB key id and HMAC key that bind an ACME "
                         "account to an organization", cmd_acme_eab_create)
    eab_create.add_argument("--org", required=True, metavar="SLUG",
                            help="organization the accounts will belong to")
    eab_create.add_argument("--json", action="store_true",
                            help="print {kid, hmac_key, org} as JSON")
    eab_list = command(eab_sub, "list", "EAB keys (never their HMAC keys) and the account "
                       "each bound", cmd_acme_eab_list)
    eab_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    eab_revoke = command(eab_sub, "revoke", "revoke an unused EAB key (a used one: "
                         "deactivate its account)", cmd_acme_eab_revoke)
    eab_revoke.add_argument("kid", help="the EAB key id")
    accounts = acme.add_parser("account", help="ACME accounts",
                               description="ACME accounts")
    accounts.set_defaults(parser=accounts)
    account_sub = accounts.add_subparsers(dest="account_command", metavar="SUBCOMMAND",
                                          title="subcommands")
    account_list = command(account_sub, "list", "ACME accounts", cmd_acme_account_list)
    account_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    account_deactivate = command(account_sub, "deactivate", "deactivate an ACME account: "
                                 "refused from its next request on",
                                 cmd_acme_account_deactivate)
    account_deactivate.add_argument("account_id", help="the account id (the end of its URL)")
    policy = command(acme, "policy", "show or set the identifiers an organization's ACME "
                     "accounts may order (the options given replace those lists)",
                     cmd_acme_policy)
    policy.add_argument("--org", required=True, metavar="SLUG", help="the organization")
    policy.add_argument("--domains", metavar="D,..",
                        help="allowed domain suffixes, comma-separated")
    policy.add_argument("--ip-ranges", metavar="CIDR,..",
                        help="allowed IP ranges (CIDR), comma-separated")
    policy.add_argument("--prevalidated", metavar="D,..",
                        help="domain suffixes authorized without a challenge, comma-separated")
    policy.add_argument("--allow-all", choices=("yes", "no"),
                        help="yes: every identifier is allowed (the demo default "
                        "organization's setting)")

    est = group("est", "EST (RFC 7030) device enrollment: labels, one-time secrets, requests "
                "awaiting approval")
    est_label = est.add_parser("label", help="labels: /.well-known/est/LABEL/ maps to an "
                               "organization, a profile and a policy",
                               description="EST labels (RFC 7030 3.2.2)")
    est_label.set_defaults(parser=est_label)
    est_label_sub = est_label.add_subparsers(dest="label_command", metavar="SUBCOMMAND",
                                             title="subcommands")
    label_set = command(est_label_sub, "set", "create or replace a label", cmd_est_label_set)
    label_set.add_argument("label", metavar="LABEL",
                           help="the path segment (letters, digits, . _ -); \"\" for the "
                           "unlabelled /.well-known/est/ paths")
    label_set.add_argument("--org", required=True, metavar="SLUG",
                           help="organization its certificates belong to")
    label_set.add_argument("--profile", required=True, metavar="PROFILE",
                           choices=[p.name for p in _PROFILES],
                           help="certificate profile: " + ", ".join(p.name for p in _PROFILES))
    label_set.add_argument("--accept", type=_accept, metavar="METHODS",
                           default=frozenset(AuthMethod),
                           help="authentication accepted: basic (one-time secret), "
                           "certificate (TLS client certificate) or basic,certificate "
                           "(default)")
    label_set.add_argument("--require-both", action="store_true",
                           help="a secret and a client certificate on every enrollment")
    label_set.add_argument("--require-channel-binding", action="store_true",
                           help="the CSR's challengePassword must hold the session's "
                           "channel binding: tls-unique on TLS 1.2 (RFC 7030 3.5), "
                           "tls-exporter on TLS 1.3 (RFC 9266)")
    label_set.add_argument("--require-approval", action="store_true",
                           help="answer 202 until an operator runs `vcc-pki est pending "
                           "approve`")
    label_set.add_argument("--allow-subject-change", action="store_true",
                           help="let simplereenroll change subject and subjectAltName")
    label_set.add_argument("--supersede", action="store_true",
                           help="simplereenroll with a new key revokes the certificate "
                           "being renewed (reason superseded)")
    label_set.add_argument("--key-type", default="ec-p256", choices=KEY_TYPES,
                           metavar="TYPE", help="key type of csrattrs and serverkeygen: "
                           + ", ".join(KEY_TYPES) + " (default ec-p256)")
    command(est_label_sub, "list", "every label with its organization, profile and policy",
            cmd_est_label_list)
    est_secret = est.add_parser("secret", help="one-time enrollment secrets (HTTP Basic)",
                                description="one-time enrollment secrets (HTTP Basic)")
    est_secret.set_defaults(parser=est_secret)
    est_secret_sub = est_secret.add_subparsers(dest="secret_command", metavar="SUBCOMMAND",
                                               title="subcommands")
    secret_create = command(est_secret_sub, "create", "a user and a password for one "
                            "enrollment; stored hashed, shown once", cmd_est_secret_create)
    secret_create.add_argument("--org", required=True, metavar="SLUG",
                               help="organization the device enrolls in")
    secret_create.add_argument("--label", metavar="LABEL",
                               help="only this label (default: any label of the organization)")
    secret_create.add_argument("--subject", metavar="DN",
                               help="the CSR's subject must be exactly this (RFC 4514, e.g. "
                               "CN=dev1.example)")
    secret_create.add_argument("--expires", type=_duration, metavar="DURATION",
                               help="lifetime, e.g. 90m, 24h, 7d (default 24h, at most 90d)")
    est_pending = est.add_parser("pending", help="requests waiting for approval",
                                 description="requests waiting for approval")
    est_pending.set_defaults(parser=est_pending)
    est_pending_sub = est_pending.add_subparsers(dest="pending_command", metavar="SUBCOMMAND",
                                                 title="subcommands")
    pending_list = command(est_pending_sub, "list", "requests waiting for approval, oldest "
                           "first", cmd_est_pending_list)
    pending_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    approve = command(est_pending_sub, "approve", "issue the certificate; the client gets it "
                      "on its next identical request", cmd_est_pending_approve)
    approve.add_argument("request_id", metavar="ID", help="as `est pending list` shows it")
    reject = command(est_pending_sub, "reject", "refuse the request; the client's retries "
                     "get 403", cmd_est_pending_reject)
    reject.add_argument("request_id", metavar="ID", help="as `est pending list` shows it")

    scep = group("scep", "SCEP (RFC 8894) enrollment: one-time challenge passwords, "
                 "endpoints (approval, static challenge), requests awaiting approval")
    scep_challenge = scep.add_parser("challenge", help="one-time challenge passwords",
                                     description="one-time challenge passwords (the CSR's "
                                     "challengePassword)")
    scep_challenge.set_defaults(parser=scep_challenge)
    scep_challenge_sub = scep_challenge.add_subparsers(
        dest="challenge_command", metavar="SUBCOMMAND", title="subcommands")
    challenge_create = command(scep_challenge_sub, "create", "a password for one enrollment; "
                               "stored hashed, printed once", cmd_scep_challenge_create)
    challenge_create.add_argument("--org", required=True, metavar="SLUG",
                                  help="organization the device enrolls in (its path: "
                                  "/scep/SLUG/PROFILE; /scep is the default organization)")
    challenge_create.add_argument("--profile", metavar="PROFILE",
                                  help="certificate profile (default external_integration)")
    challenge_create.add_argument("--expires", type=_duration, metavar="DURATION",
                                  help="lifetime, e.g. 90m, 24h, 7d (default 1h, at most 30d)")
    endpoint_help = ("certificate profile of the endpoint /scep/SLUG/PROFILE (default "
                     "external_integration, which /scep serves for the default organization)")
    scep_profile = scep.add_parser("profile", help="endpoints: manual approval",
                                   description="SCEP endpoints (an organization and a "
                                   "profile): manual approval")
    scep_profile.set_defaults(parser=scep_profile)
    scep_profile_sub = scep_profile.add_subparsers(dest="profile_command",
                                                   metavar="SUBCOMMAND", title="subcommands")
    profile_set = command(scep_profile_sub, "set", "set an endpoint's policy (what is not "
                          "given stays as it is)", cmd_scep_profile_set)
    profile_set.add_argument("--org", required=True, metavar="SLUG", help="organization")
    profile_set.add_argument("--profile", metavar="PROFILE", help=endpoint_help)
    profile_set.add_argument("--require-approval", action=argparse.BooleanOptionalAction,
                             help="answer PENDING until an operator runs `vcc-pki scep "
                             "pending approve` (the client polls with CertPoll)")
    command(scep_profile_sub, "list", "endpoints with a policy: approval, static challenge",
            cmd_scep_profile_list)
    scep_secret = scep.add_parser("secret", help="an endpoint's static challenge password",
                                  description="an endpoint's static challenge password "
                                  "(stored as a scrypt hash)")
    scep_secret.set_defaults(parser=scep_secret)
    scep_secret_sub = scep_secret.add_subparsers(dest="secret_command", metavar="SUBCOMMAND",
                                                 title="subcommands")
    secret_set = command(scep_secret_sub, "set", "set it from standard input (its first "
                         "line) or, on a terminal, as typed twice; --clear removes it",
                         cmd_scep_secret_set)
    secret_set.add_argument("--org", required=True, metavar="SLUG", help="organization")
    secret_set.add_argument("--profile", metavar="PROFILE", help=endpoint_help)
    secret_set.add_argument("--clear", action="store_true", help="remove the static challenge")
    scep_pending = scep.add_parser("pending", help="requests waiting for approval",
                                   description="SCEP requests waiting for approval")
    scep_pending.set_defaults(parser=scep_pending)
    scep_pending_sub = scep_pending.add_subparsers(dest="pending_command",
                                                   metavar="SUBCOMMAND", title="subcommands")
    scep_list = command(scep_pending_sub, "list", "requests waiting for approval, oldest "
                        "first", cmd_scep_pending_list)
    scep_list.add_argument("--org", metavar="SLUG", help="only this organization's")
    scep_approve = command(scep_pending_sub, "approve", "issue the certificate; the client "
                           "gets it on its next CertPoll", cmd_scep_pending_approve)
    scep_approve.add_argument("transaction_id", metavar="TRANSACTION",
                              help="the transactionID, as `scep pending list` shows it")
    scep_reject = command(scep_pending_sub, "reject", "refuse the request; the client's polls "
                          "get FAILURE badRequest", cmd_scep_pending_reject)
    scep_reject.add_argument("transaction_id", metavar="TRANSACTION",
                             help="the transactionID, as `scep pending list` shows it")

    crl = group("crl", "certificate revocation lists")
    crl_publish = command(crl, "publish", "make and store every CRL now (the gateway also "
                          "does, after revocations and on schedule)", cmd_crl_publish)
    crl_publish.add_argument("--ca", metavar="NAME", help="only this CA's CRLs")

    tsa = group("tsa", "RFC 3161 time-stamping authority")
    tsa_show = command(tsa, "show", "a recorded time-stamp token, by serial", cmd_tsa_show)
    tsa_show.add_argument("serial", help="hex, as `openssl ts -reply -text` prints it")
    command(tsa, "chain", "the TSA certificate and its CAs below the root (PEM), for "
            "`openssl ts -verify -untrusted`", cmd_tsa_chain)
    signing_cli.add_commands(sub, command, group)
    service_cli.add_commands(sub, command, group)
    backup_cli.add_commands(sub, command)
    report_cli.add_commands(sub, command)
    return parser


def run_loop(config: Config, main: Coroutine[Any, Any, int]) -> int:
    """uvloop where installed (VCC_PKI_EVENT_LOOP=auto): its C event loop and TLS transport
    take about a tenth off the CPU of every request; asyncio otherwise."""
    if config.event_loop != "asyncio":
        try:
            import uvloop
        except ImportError:
            if config.event_loop == "uvloop":
                main.close()
                raise ConfigError("VCC_PKI_EVENT_LOOP=uvloop but uvloop is not installed"
                                  ) from None
        else:
            result: int = uvloop.run(main)
            return result
    return asyncio.run(main)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not hasattr(args, "fn"):  # `vcc-pki`, `vcc-pki ca`: a command (group) without one
        chosen: argparse.ArgumentParser = args.parser
        chosen.print_usage(sys.stderr)
        choices = next(a for a in chosen._actions
                       if isinstance(a, argparse._SubParsersAction)).choices
        print(f"{chosen.prog}: error: choose a command: {', '.join(choices)} "
              f"(`{chosen.prog} --help` says what each does)", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(path=args.config)
        configure_logging(config.log_format)
        result: int = run_loop(config, args.fn(config, args))
        return result
    except (CAError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file named on the command line, the data directory
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
