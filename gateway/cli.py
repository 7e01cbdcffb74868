"""The ``vcc-pki`` command line: init, serve, ca, org, issue, revoke, token, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from ca_core.authority import IssuanceRequest, serial_display
from ca_core.cross import (
    add_cross_certificate,
    alternate_chains,
    cross_certification_request,
)
from ca_core.errors import CAError
from ca_core.hierarchy import ensure_hierarchy, ensure_organization
from ca_core.keys import KeySpec
from ca_core.principal import ROLES, Principal
from ca_core.tsa import TimeStampAuthority, find_timestamp
from db.audit_chain import verify_chain
from gateway.config import Config, ConfigError, load_config
from gateway.runtime import Services, open_services
from gateway.tls import ensure_server_certificate, export_ca_files
from protocols.acme.jws import b64url

CLI = Principal.system("vcc-pki cli")


async def cmd_init(config: Config, args: argparse.Namespace) -> int:
    async with open_services(config, create=True) as services:
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
        return await fn(services)


async def cmd_ca_list(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        print(f"{'NAME':<24} {'TYPE':<13} {'KEY':<9} {'BACKEND':<9} {'NOT AFTER':<20} SUBJECT")
        for ca in await services.store.list_cas():
            key = f"{ca.key_algorithm}-{ca.key_size}"
            print(f"{ca.name:<24} {ca.ca_type:<13} {key:<9} {ca.key_backend:<9} "
                  f"{ca.not_after:%Y-%m-%d %H:%M}     {ca.subject_dn}")
        return 0
    return await _with_services(config, run)


async def cmd_ca_export(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        record = await services.store.get_ca(args.name)
        if record is None:
            print(f"error: no CA named {args.name!r}", file=sys.stderr)
            return 1
        from cryptography import x509

        cert = x509.load_der_x509_certificate(record.certificate_der)
        encoding = serialization.Encoding.DER if args.der else serialization.Encoding.PEM
        sys.stdout.buffer.write(cert.public_bytes(encoding))
        return 0
    return await _with_services(config, run)


async def cmd_ca_add_cross(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        try:
            pem = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
        except OSError as exc:
            print(f"error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
            return 1
        record = await add_cross_certificate(services.authority, args.name, pem, CLI)
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
        key = KeySpec.parse(args.key) if args.key else None
        created = await ensure_organization(services.authority, args.slug, args.name, CLI, key)
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
            issued = await services.authority.issue(
                IssuanceRequest(csr=csr, profile=args.profile, org=args.org,
                                validity_days=args.days),
                CLI,
            )
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
        entries = []
        after = 0
        while True:
            batch = await services.store.audit_entries(after_seq=after, limit=10_000)
            if not batch:
                break
            entries.extend(batch)
            after = batch[-1].seq
        problems = verify_chain(entries, await services.store.audit_head())
        if problems:
            for p in problems:
                print(f"seq {p.seq}: {p.problem}")
            print(f"audit log BROKEN: {len(problems)} problem(s) in {len(entries)} entries")
            return 1
        print(f"audit log intact: {len(entries)} entries, chain verified")
        return 0
    return await _with_services(config, run)


async def cmd_acme_eab_create(config: Config, args: argparse.Namespace) -> int:
    async def run(services: Services) -> int:
        key = await services.acme.create_eab_key(args.org)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vcc-pki", description=__doc__)
    parser.add_argument("--config", help="TOML config file (default: $VCC_PKI_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("init", help="create the CA hierarchy and the HTTPS certificate (idempotent)"
                   ).set_defaults(fn=cmd_init)
    sub.add_parser("serve", help="serve HTTP and HTTPS listeners").set_defaults(fn=cmd_serve)

    ca = sub.add_parser("ca", help="certificate authorities").add_subparsers(
        dest="ca_command", required=True)
    ca.add_parser("list", help="list CAs").set_defaults(fn=cmd_ca_list)
    export = ca.add_parser("export", help="print a CA certificate (PEM) to stdout")
    export.add_argument("name", help="root, intermediate, or <org>-issuing")
    export.add_argument("--der", action="store_true")
    export.set_defaults(fn=cmd_ca_export)
    csr = ca.add_parser("csr", help="a CSR of a CA, signed by its key, for another CA to "
                        "cross-certify it (PEM to stdout)")
    csr.add_argument("name")
    csr.set_defaults(fn=cmd_ca_csr)
    add_cross = ca.add_parser(
        "add-cross", help="record a cross-certificate of a CA (PEM: the cross-certificate, "
        "then the certificates above it); certificates below that CA get an alternate chain")
    add_cross.add_argument("name", help="the CA the cross-certificate certifies")
    add_cross.add_argument("file", help="PEM file, or - for standard input")
    add_cross.set_defaults(fn=cmd_ca_add_cross)
    chains = ca.add_parser("chains", help="the chains of the certificates a CA issues")
    chains.add_argument("name")
    chains.set_defaults(fn=cmd_ca_chains)

    org = sub.add_parser("org", help="organizations (tenants)").add_subparsers(
        dest="org_command", required=True)
    org_create = org.add_parser("create", help="create an organization and its issuing CA")
    org_create.add_argument("slug")
    org_create.add_argument("--name")
    org_create.add_argument("--key", help="issuing CA key type, e.g. ec-p256, rsa-3072")
    org_create.set_defaults(fn=cmd_org_create)

    issue = sub.add_parser("issue", help="issue a certificate from a CSR")
    issue.add_argument("--csr", required=True, help="PEM or DER file, '-' for stdin")
    issue.add_argument("--profile", default="vcc_service")
    issue.add_argument("--org")
    issue.add_argument("--days", type=int)
    issue.add_argument("--chain", action="store_true", help="append the CA chain")
    issue.add_argument("--out")
    issue.set_defaults(fn=cmd_issue)

    revoke = sub.add_parser("revoke", help="revoke a certificate by serial")
    revoke.add_argument("serial")
    revoke.add_argument("--reason", default="unspecified")
    revoke.set_defaults(fn=cmd_revoke)

    token = sub.add_parser("token", help="API bearer tokens").add_subparsers(
        dest="token_command", required=True)
    token_create = token.add_parser("create", help="create a token (printed once)")
    token_create.add_argument("--org", required=True)
    token_create.add_argument("--role", required=True, choices=ROLES)
    token_create.add_argument("--name")
    token_create.set_defaults(fn=cmd_token_create)

    audit = sub.add_parser("audit", help="audit log").add_subparsers(
        dest="audit_command", required=True)
    audit.add_parser("verify", help="verify the hash chain").set_defaults(fn=cmd_audit_verify)

    acme = sub.add_parser("acme", help="ACME (RFC 8555)").add_subparsers(
        dest="acme_command", required=True)
    eab = acme.add_parser("eab", help="External Account Binding keys").add_subparsers(
        dest="eab_command", required=True)
    eab_create = eab.add_parser("create", help="a new EAB key id and HMAC key for an org")
    eab_create.add_argument("--org", required=True)
    eab_create.add_argument("--json", action="store_true")
    eab_create.set_defaults(fn=cmd_acme_eab_create)
    policy = acme.add_parser("policy", help="show or set an organization's identifier policy")
    policy.add_argument("--org", required=True)
    policy.add_argument("--domains", help="allowed domain suffixes, comma-separated")
    policy.add_argument("--ip-ranges", help="allowed IP ranges (CIDR), comma-separated")
    policy.add_argument("--prevalidated", help="domain suffixes authorized without challenge")
    policy.add_argument("--allow-all", choices=("yes", "no"))
    policy.set_defaults(fn=cmd_acme_policy)

    crl = sub.add_parser("crl", help="certificate revocation lists").add_subparsers(
        dest="crl_command", required=True)
    crl_publish = crl.add_parser("publish", help="make and store every CRL now "
                                 "(the gateway also does, after revocations and on schedule)")
    crl_publish.add_argument("--ca", help="only this CA's CRLs")
    crl_publish.set_defaults(fn=cmd_crl_publish)

    tsa = sub.add_parser("tsa", help="RFC 3161 time-stamping authority").add_subparsers(
        dest="tsa_command", required=True)
    tsa_show = tsa.add_parser("show", help="a recorded time-stamp token, by serial")
    tsa_show.add_argument("serial", help="hex, as `openssl ts -reply -text` prints it")
    tsa_show.set_defaults(fn=cmd_tsa_show)
    tsa.add_parser("chain", help="the TSA certificate and its CAs below the root (PEM), "
                   "for `openssl ts -verify -untrusted`").set_defaults(fn=cmd_tsa_chain)
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
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(path=args.config)
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
