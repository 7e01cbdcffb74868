"""``vcc-pki service list|bootstrap|renew``: the service registry from the command line
(``ca_core.services.ServiceRegistry``, the REST API's too), and the seed's init loop: register
each service of a file and give it an ``mtls_service`` certificate and key in
``DIR/<slug>/{cert,key,chain}.pem``.

The bootstrap is idempotent: a service that is registered as the file says, whose
certificate in ``DIR/<slug>/cert.pem`` is its active one, with its key beside it, and not
due, is left alone (no write, no issuance, no audit event).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ca_core.authority import IssuedCertificate
from ca_core.errors import BadRequest, NotFound
from ca_core.principal import Principal
from ca_core.services import (
    DEFAULT_DUE_DAYS,
    SERVICE_TYPES,
    ServiceChange,
    ServiceSpec,
    check_slug,
    new_service_key,
    renewal_state,
)
from gateway.config import Config
from gateway.runtime import Services, open_services, require_cas

CLI = Principal.system("vcc-pki cli")


@dataclass(frozen=True, slots=True)
class BootstrapEntry:
    spec: ServiceSpec
    dns: tuple[str, ...]
    ips: tuple[str, ...]


def _strings(entry: dict[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(f"{where}: {name} must be a list of strings")
    return tuple(value)


def load_bootstrap(path: Path, default_org: str) -> list[BootstrapEntry]:
    """The services of a TOML file (``[[services]]`` tables, optional top-level
    ``organization``) or a JSON one (a list, or ``{"services": [...]}``); each with
    ``name``, ``slug``, ``sans`` (DNS names, at least one; ``ips`` optional) and optionally
    ``type``, ``endpoints``, ``health_check_url``, ``version``, ``environment``,
    ``metadata``, ``organization``. Checked whole before anything is done."""
    raw = path.read_bytes()
    try:
        document: Any = json.loads(raw) if path.suffix == ".json" else \
            tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'}"
                         f": {exc}") from None
    org = default_org
    if isinstance(document, dict):
        org = document.get("organization", default_org)
        document = document.get("services")
    if not isinstance(document, list) or not document or not isinstance(org, str):
        raise BadRequest(f"{path}: expected a non-empty list of services")
    entries: list[BootstrapEntry] = []
    seen: set[tuple[str, str]] = set()
    for n, entry in enumerate(document, 1):
        where = f"{path} service {n}"
        if not isinstance(entry, dict):
            raise BadRequest(f"{where}: not a table/object")
        name, slug = entry.get("name"), entry.get("slug")
        if not isinstance(name, str) or not isinstance(slug, str):
            raise BadRequest(f"{where}: name and slug are required strings")
        try:
            check_slug(slug)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc.detail}") from None
        kind = entry.get("type", "api")
        if kind not in SERVICE_TYPES:
            raise BadRequest(f"{where}: type must be one of {', '.join(SERVICE_TYPES)}")
        dns, ips = _strings(entry, "sans", where), _strings(entry, "ips", where)
        if not dns and not ips:
            raise BadRequest(f"{where}: give the certificate's names in sans")
        service_org = entry.get("organization", org)
        metadata = entry.get("metadata", {})
        if not isinstance(service_org, str) or not isinstance(metadata, dict):
            raise BadRequest(f"{where}: organization must be a slug, metadata a table")
        optional = {k: entry.get(k) for k in ("health_check_url", "version")}
        if not all(v is None or isinstance(v, str) for v in optional.values()) or \
                not isinstance(entry.get("environment", ""), str):
            raise BadRequest(f"{where}: health_check_url, version, environment are strings")
        if (service_org, slug) in seen:
            raise BadRequest(f"{where}: slug {slug} twice")
        seen.add((service_org, slug))
        entries.append(BootstrapEntry(ServiceSpec(
            name=name, slug=slug, service_type=kind, organization=service_org,
            endpoints=_strings(entry, "endpoints", where),
            health_check_url=optional["health_check_url"], version=optional["version"],
            environment=entry.get("environment") or "production", metadata=metadata),
            dns, ips))
    return entries


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically (a temporary file renamed), created with ``mode`` (0600 for keys: never
    readable by others, not even for a moment)."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


async def _write_certificate(services: Services, directory: Path, issued: IssuedCertificate
                             ) -> None:
    ca = await services.authority.ca_by_id(issued.record.issuer_ca_id)
    chain = await services.authority.chain_with_root(ca)
    _write(directory / "cert.pem", issued.certificate_pem.encode())
    _write(directory / "chain.pem", b"".join(
        c.public_bytes(serialization.Encoding.PEM) for c in chain))


def _changes(spec: ServiceSpec, current: Any) -> ServiceChange | None:
    change = ServiceChange(
        name=spec.name if spec.name != current.name else None,
        service_type=spec.service_type if spec.service_type != current.service_type
        else None,
        endpoints=spec.endpoints if list(spec.endpoints) != current.endpoints else None,
        health_check_url=spec.health_check_url
        if spec.health_check_url != current.health_check_url else None,
        version=spec.version if spec.version != current.version else None,
        environment=spec.environment if spec.environment != current.environment else None,
        metadata=spec.metadata if spec.metadata != current.metadata else None)
    return None if change == ServiceChange() else change


async def bootstrap_one(services: Services, entry: BootstrapEntry, out: Path) -> list[str]:
    """Register (or update) one service and make sure ``out/<slug>`` holds its active,
    not-due certificate and key; what was done, as words (empty: nothing)."""
    registry, spec, done = services.registry, entry.spec, []
    try:
        current = await registry.get(CLI, spec.slug, spec.organization)
    except NotFound:
        current = await registry.register(CLI, spec)
        done.append("registered")
    else:
        change = _changes(spec, current)
        if change is not None:
            current = await registry.update(CLI, spec.slug, change, spec.organization)
            done.append("updated")
    directory = out / spec.slug
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    active = None if current.active_cert_id is None else \
        await services.store.get_certificate_by_id(current.active_cert_id)
    if active is not None and key_file.exists() and cert_file.exists() and \
            renewal_state(current, services.authority.clock(), DEFAULT_DUE_DAYS) == "ok":
        on_disk = cert_file.read_bytes()
        if _der_of(on_disk) == active.certificate_der:
            return done
    directory.mkdir(parents=True, exist_ok=True)
    key = new_service_key(entry.dns[0] if entry.dns else entry.ips[0], entry.dns, entry.ips)
    issued = await registry.issue_certificate(CLI, spec.slug, key.csr,
                                              organization=spec.organization)
    _write(key_file, key.key_pem, 0o600)
    await _write_certificate(services, directory, issued)
    done.append(f"certificate {issued.serial} issued (until "
                f"{issued.record.not_after:%Y-%m-%d})")
    return done


def _der_of(pem: bytes) -> bytes | None:
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None


async def cmd_service_bootstrap(config: Config, args: argparse.Namespace) -> int:
    entries = load_bootstrap(Path(args.source), args.org or config.default_org)
    out = Path(args.out)
    terminal = sys.stdout.isatty()
    async with open_services(config) as services:
        await require_cas(services.store)
        for n, entry in enumerate(entries, 1):
            if terminal:
                print(f"\r[{n}/{len(entries)}] {entry.spec.slug} ...", end="", flush=True)
            done = await bootstrap_one(services, entry, out)
            said = ", ".join(done) if done else "unchanged"
            if terminal:
                print(f"\r[{n}/{len(entries)}] {entry.spec.slug}: {said}\033[K")
            else:
                print(f"{entry.spec.slug}: {said}")
    return 0


def parse_days(text: str) -> int:
    match = re.fullmatch(r"(\d{1,4})d?", text.strip())
    if match is None:
        raise BadRequest("--due takes days, like 30d or 30")
    return int(match.group(1))


async def cmd_service_renew(config: Config, args: argparse.Namespace) -> int:
    days = parse_days(args.due)
    async with open_services(config) as services:
        await require_cas(services.store)
        renewed = await services.registry.renew_due(CLI, days, args.org)
        for service, issued in renewed:
            directory = Path(args.out) / service.slug
            wrote = ""
            if (directory / "key.pem").exists():
                await _write_certificate(services, directory, issued)
                wrote = f", written to {directory}"
            print(f"{service.slug}: renewed, certificate {issued.serial} until "
                  f"{issued.record.not_after:%Y-%m-%d}{wrote}")
        if not renewed:
            print(f"no service certificate ends within {days} days")
    return 0


async def cmd_service_list(config: Config, args: argparse.Namespace) -> int:
    async with open_services(config) as services:
        orgs = {o.org_id: o.slug for o in await services.store.list_organizations()}
        now = services.authority.clock()
        print(f"{'SLUG':<16} {'ORG':<12} {'TYPE':<12} {'RENEWAL':<8} {'NOT AFTER':<16} "
              f"{'HEALTH':<10} {'LAST SEEN':<16} NAME")
        cursor = None
        while True:
            page = await services.registry.list_services(CLI, args.org, cursor, 500)
            for s in page.items:
                not_after = "-" if s.cert_not_after is None else \
                    f"{s.cert_not_after:%Y-%m-%d %H:%M}"
                seen = "-" if s.last_seen is None else f"{s.last_seen:%Y-%m-%d %H:%M}"
                print(f"{s.slug:<16} {orgs.get(s.org_id, '?'):<12} {s.service_type:<12} "
                      f"{renewal_state(s, now, DEFAULT_DUE_DAYS):<8} {not_after:<16} "
                      f"{s.health_status or '-':<10} {seen:<16} {s.name}")
            if page.next is None:
                break
            cursor = page.next
    return 0


def add_commands(sub: Any, command: Any, group: Any) -> None:
    """Register ``vcc-pki service ...`` on the parser (``gateway.cli``)."""
    service = group("service", "the service registry: services, their mTLS certificates, "
                    "renewal")
    listing = command(service, "list", "one service per line: slug, organization, type, "
                      "renewal state (ok/due/expired/none), certificate end, health",
                      cmd_service_list)
    listing.add_argument("--org", metavar="SLUG", help="one organization (default: all)")
    boot = command(service, "bootstrap", "register the services of FILE (TOML or JSON: "
                   "name, slug, sans, ...) and issue each an mtls_service certificate and "
                   "key into DIR/<slug>/cert.pem, key.pem (0600), chain.pem; run again, it "
                   "changes nothing", cmd_service_bootstrap)
    boot.add_argument("--from", dest="source", required=True, metavar="FILE",
                      help="e.g. deploy/vcc-services.toml")
    boot.add_argument("--out", default="services", metavar="DIR",
                      help="where the certificates and keys go (default services/)")
    boot.add_argument("--org", metavar="SLUG",
                      help="organization of services that name none (default: default)")
    renew = command(service, "renew", "renew the certificates of services that end within "
                    "--due (e.g. 30d), the same query as the registry's renewal state",
                    cmd_service_renew)
    renew.add_argument("--due", default=f"{DEFAULT_DUE_DAYS}d", metavar="DAYS",
                       help=f"window, like 30d (default {DEFAULT_DUE_DAYS}d)")
    renew.add_argument("--org", metavar="SLUG", help="one organization (default: all)")
    renew.add_argument("--out", default="services", metavar="DIR",
                       help="where bootstrap wrote the keys: a renewed certificate goes to "
                       "DIR/<slug>/ when its key.pem is there (default services/)")
