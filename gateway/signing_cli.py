"""``vcc-pki sign``, ``vcc-pki verify`` and ``vcc-pki signer ensure``: code signing from the
command line (issue 14).

``sign`` is a client of a running gateway: it hashes the file here (the file never leaves
the machine), asks ``POST /api/v1/signatures`` at ``VCC_PKI_URL`` with the bearer token in
``VCC_PKI_TOKEN``, trusting the root in the data directory (``<data_dir>/ca/root.pem``, what
``vcc-pki init`` exports) or the PEM bundle ``VCC_PKI_CA_BUNDLE``, and writes the DER
signature to ``FILE.p7s``. ``verify`` needs no server: it checks the signature, its path to
that root and its time-stamp (``ca_core.code_signing.check_signature``), and revocation from
the CRLs given with ``--crl``. ``signer ensure`` makes or renews an organization's
code-signing key on the PKI itself, like the other operator commands.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import os
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography import x509

from ca_core.code_signing import (
    ARTIFACT_TYPES,
    DIGEST_LENGTHS,
    Verdict,
    check_signature_offline,
)
from ca_core.errors import BadRequest
from gateway.config import Config, ConfigError
from gateway.runtime import open_services, require_cas

# What `sign` waits for an answer: a signature is a key operation and a time-stamp.
TIMEOUT_SECONDS = 30.0


def _bundle_path(config: Config) -> Path:
    named = os.environ.get("VCC_PKI_CA_BUNDLE")
    return Path(named) if named else config.data_dir / "ca" / "root.pem"


def _load_roots(config: Config) -> list[x509.Certificate]:
    path = _bundle_path(config)
    try:
        roots = x509.load_pem_x509_certificates(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no trusted root: {path} does not exist (set VCC_PKI_CA_BUNDLE to "
                          "the PKI's root certificate, PEM)") from None
    except ValueError:
        raise ConfigError(f"{path} holds no PEM certificate") from None
    return roots


def _file_hash(path: Path, algorithm: str) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, algorithm).digest()


def _post(url: str, token: str, body: dict[str, Any], context: ssl.SSLContext
          ) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS,
                                    context=context) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("detail") or exc.reason
        except ValueError:
            detail = exc.reason
        raise BadRequest(f"the gateway refused ({exc.code}): {detail}") from None
    except urllib.error.URLError as exc:
        raise ConfigError(f"cannot reach {url}: {exc.reason}") from None


async def cmd_sign(config: Config, args: argparse.Namespace) -> int:
    path = Path(args.file)
    token = os.environ.get("VCC_PKI_TOKEN", "")
    if not token:
        raise ConfigError("set VCC_PKI_TOKEN to a code_signer token "
                          "(`vcc-pki token create --org ORG --role code_signer`)")
    base = os.environ.get("VCC_PKI_URL") or config.effective_public_https_url
    digest = await asyncio.to_thread(_file_hash, path, args.hash)
    context = ssl.create_default_context(cafile=str(_bundle_path(config))) \
        if _bundle_path(config).exists() else ssl.create_default_context()
    body: dict[str, Any] = {"hash": digest.hex(), "hash_algorithm": args.hash,
                            "artifact_type": args.type, "name": args.name or path.name}
    if args.metadata:
        try:
            body["metadata"] = json.loads(args.metadata)
        except ValueError:
            raise BadRequest("--metadata must be a JSON object") from None
    if args.org:
        body["organization"] = args.org
    answer = await asyncio.to_thread(
        _post, base.rstrip("/") + "/api/v1/signatures", token, body, context)
    out = Path(args.out) if args.out else path.with_name(path.name + ".p7s")
    out.write_bytes(base64.b64decode(answer["signature"]))
    signer = answer.get("signer") or {}
    print(f"signed {path} ({args.hash} {digest.hex()}): {out}")
    print(f"signer {signer.get('subject')} serial {signer.get('serial')}; "
          f"signed at {answer.get('signed_at')}"
          f"{'; time-stamped' if answer.get('timestamped') else ''}")
    return 0


def _load_crls(paths: list[str]) -> list[x509.CertificateRevocationList]:
    crls = []
    for name in paths:
        data = Path(name).read_bytes()
        try:
            crls.append(x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----")
                        else x509.load_der_x509_crl(data))
        except ValueError:
            raise BadRequest(f"{name} is not a CRL (PEM or DER)") from None
    return crls


def describe(verdict: Verdict) -> str:
    """One line per fact: the verdict, the signer, the time-stamp, the reasons."""
    lines = [{"valid": "valid", "valid_at_signing_time": "valid at signing time",
              "invalid": "NOT valid"}[verdict.status]]
    if verdict.signer is not None:
        lines.append(f"signer: {verdict.signer.subject.rfc4514_string()} serial "
                     f"{verdict.signer.serial_number:X}")
    if verdict.signing_time is not None:
        lines.append(f"signing time: {verdict.signing_time:%Y-%m-%d %H:%M:%S} UTC")
    if verdict.time_stamp is not None:
        lines.append(f"time-stamp: {verdict.time_stamp.time:%Y-%m-%d %H:%M:%S.%f} UTC by "
                     f"{verdict.time_stamp.tsa} serial {verdict.time_stamp.serial}")
    lines.extend(f"note: {reason}" for reason in verdict.reasons)
    return "\n".join(lines)


async def cmd_verify(config: Config, args: argparse.Namespace) -> int:
    path = Path(args.file)
    signature = Path(args.signature).read_bytes()
    if signature.lstrip().startswith(b"-----BEGIN"):
        try:  # openssl cms -outform PEM: accept it too
            text = b"".join(line for line in signature.splitlines()
                            if line and not line.startswith(b"-----"))
            signature = base64.b64decode(text, validate=True)
        except ValueError:
            raise BadRequest(f"{args.signature} is not a PEM signature") from None
    roots = _load_roots(config)
    crls = _load_crls(args.crl or [])
    content = path.read_bytes() if path.stat().st_size <= 64 * 1024 * 1024 else None

    def content_hash(algorithm: str) -> bytes:
        if algorithm not in DIGEST_LENGTHS:
            return b""
        return hashlib.new(algorithm, content).digest() if content is not None \
            else _file_hash(path, algorithm)

    _, verdict = await asyncio.to_thread(
        check_signature_offline, signature, content_hash, roots, dt.datetime.now(dt.UTC),
        crls)
    print(f"{path}: {describe(verdict)}")
    return 0 if verdict.valid else 1


async def cmd_signer_ensure(config: Config, args: argparse.Namespace) -> int:
    async with open_services(config) as services:
        await require_cas(services.store)
        org = await services.authority.organization(args.org or config.default_org)
        record, created = await services.signatures.ensure_signer(org)
        cert = await services.store.get_certificate_by_id(record.cert_id)
        serial = cert.serial_hex.upper() if cert else record.cert_id
        state = "created" if created else "already valid"
        print(f"code-signing certificate of {org.slug} {state}: serial {serial}, key "
              f"{record.key_backend}, valid until {record.not_after:%Y-%m-%d %H:%M} UTC")
    return 0


def add_commands(sub: Any, command: Any, group: Any) -> None:
    """Register sign, verify and signer on the ``vcc-pki`` parser (``gateway.cli``)."""
    sign = command(sub, "sign", "sign FILE through the gateway (VCC_PKI_URL, VCC_PKI_TOKEN "
                   "of a code_signer; trusting VCC_PKI_CA_BUNDLE or <data_dir>/ca/root.pem): "
                   "the file is hashed here and FILE.p7s (detached CMS, DER, time-stamped) "
                   "written", cmd_sign)
    sign.add_argument("file", help="the artifact")
    sign.add_argument("--type", required=True, choices=ARTIFACT_TYPES,
                      help="artifact type")
    sign.add_argument("--name", help="name recorded with the signature (default: the "
                      "file's name)")
    sign.add_argument("--hash", choices=tuple(DIGEST_LENGTHS), default="sha256",
                      help="hash of the file (default sha256)")
    sign.add_argument("--metadata", metavar="JSON", help="a JSON object stored with it")
    sign.add_argument("--org", metavar="SLUG", help="organization (default: the token's)")
    sign.add_argument("--out", metavar="FILE", help="where to write (default FILE.p7s)")
    verify = command(sub, "verify", "check FILE against its signature offline, trusting "
                     "VCC_PKI_CA_BUNDLE or <data_dir>/ca/root.pem; exits 1 when it is not "
                     "valid. A certificate expired or revoked after the signature's "
                     "time-stamp is 'valid at signing time'", cmd_verify)
    verify.add_argument("file", help="the artifact")
    verify.add_argument("signature", help="its signature (FILE.p7s, DER or PEM)")
    verify.add_argument("--crl", action="append", metavar="FILE",
                        help="a CRL (PEM or DER, e.g. from /crl/<org>-issuing.crl) to "
                        "check revocation with; repeatable")
    signer = group("signer", "organizations' code-signing keys")
    ensure = command(signer, "ensure", "make the organization's code-signing key and "
                     "certificate (code_signing profile), or renew it within 30 days of "
                     "expiry; otherwise nothing", cmd_signer_ensure)
    ensure.add_argument("--org", metavar="SLUG", help="organization (default: default)")
