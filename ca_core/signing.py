"""One signing path for every CA signature: certificates, CRLs, OCSP responses and time-stamp
tokens (and code signatures) all go through ``SigningKey.sign``.

It checks that the certificate of the key allows the use (RFC 5280 4.2.1.3 key usage,
4.2.1.9 basic constraints, 4.2.1.12 extended key usage; RFC 6960 4.2.2.2 for a delegated
OCSP responder, RFC 3161 2.3 for a TSA), runs the build off the event loop when the key is
in a token (``Signer.run``), and counts it (``pki_ca_signing_operations_total``,
``pki_ca_key_usage_total``). The allowed uses are read from the certificate once.
"""

from __future__ import annotations

import contextlib
import enum
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client import Counter

from ca_core.errors import Unavailable
from ca_core.metrics import CA_KEY_USAGE, CA_SIGNING_OPERATIONS
from ca_core.signers.base import Signer
from ca_core.tracing import span

T = TypeVar("T")
P = ParamSpec("P")


class Purpose(enum.StrEnum):
    CERTIFICATE = "certificate"
    CRL = "crl"
    OCSP = "ocsp"
    TIMESTAMP = "timestamp"
    CODE = "code"  # a code signature (ca_core.code_signing)


class KeyUsageRefused(Unavailable):
    """The key's certificate does not allow this signature: a configuration fault of this
    CA, so the request is refused as unavailable (and logged), never signed."""


class SigningBusy(Unavailable):
    """More signatures are being made than the process allows: the request is refused at
    once (503, OCSP tryLater, SCEP/EST 503) rather than queued behind them, so that a flood
    cannot grow a queue without bound or hold every client's connection open."""


class SignatureLimit:
    """How many signatures this process makes at once, over every key and purpose. The
    event loop is single-threaded: a plain counter needs no lock."""

    __slots__ = ("in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0


# The gateway sets the limit from VCC_PKI_MAX_SIGNATURES_IN_FLIGHT (limit_signatures).
SIGNATURES = SignatureLimit(256)


# Set while the CA's own upkeep signs (OCSP refresh and precompute, the revoked response of
# a revocation, CRLs): that work is bounded by its own jobs (sequential, or a semaphore),
# and refusing it under client load would let OCSP responses and CRLs go stale. It counts
# in ``in_flight`` (clients see fewer free slots) but is never refused.
_UPKEEP: ContextVar[bool] = ContextVar("vcc_pki_upkeep_signing", default=False)


@contextlib.contextmanager
def upkeep_signing() -> Iterator[None]:
    """Signatures made inside (and in tasks started inside) are upkeep: never SigningBusy."""
    token = _UPKEEP.set(True)
    try:
        yield
    finally:
        _UPKEEP.reset(token)


def upkeep(call: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """An async method whose signatures are upkeep (see ``upkeep_signing``)."""
    @functools.wraps(call)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        with upkeep_signing():
            return await call(*args, **kwargs)
    return run


def limit_signatures(limit: int) -> None:
    if limit < 1:
        raise ValueError("the signature limit must be at least 1")
    SIGNATURES.limit = limit


def allowed_purposes(certificate: x509.Certificate) -> frozenset[Purpose]:
    """The signatures the certificate's key may make. An absent key usage extension allows
    every key usage (RFC 5280 4.2.1.3); an absent extended key usage allows no EKU-bound use
    but a CA's own (a CA may sign OCSP responses itself, RFC 6960 4.2.2.2)."""
    try:
        usage: x509.KeyUsage | None = certificate.extensions.get_extension_for_class(
            x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    try:
        extended = set(certificate.extensions.get_extension_for_class(
            x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        extended = set()
    try:
        is_ca = certificate.extensions.get_extension_for_class(
            x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    allowed: set[Purpose] = set()
    if is_ca and (usage is None or usage.key_cert_sign):
        allowed.add(Purpose.CERTIFICATE)
    if usage is None or usage.crl_sign:
        allowed.add(Purpose.CRL)
    signs = usage is None or usage.digital_signature
    if (signs and ExtendedKeyUsageOID.OCSP_SIGNING in extended) or (
            is_ca and (signs or usage is None or usage.key_cert_sign)):
        allowed.add(Purpose.OCSP)
    if (signs or (usage is not None and usage.content_commitment)) and \
            ExtendedKeyUsageOID.TIME_STAMPING in extended:
        allowed.add(Purpose.TIMESTAMP)
    if signs and ExtendedKeyUsageOID.CODE_SIGNING in extended:
        allowed.add(Purpose.CODE)
    return frozenset(allowed)


class SigningKey:
    """A signer bound to its certificate, under the name its metrics carry (the CA's)."""

    __slots__ = ("_counters", "_key_usage", "allowed", "certificate", "name", "signer")

    def __init__(self, name: str, signer: Signer, certificate: x509.Certificate) -> None:
        self.name = name
        self.signer = signer
        self.certificate = certificate
        self.allowed = allowed_purposes(certificate)
        # labels() looks the children up by string each time: once per purpose suffices.
        self._counters: dict[Purpose, tuple[Counter, Counter]] = {}

    def check(self, purpose: Purpose) -> None:
        """Raise KeyUsageRefused unless the certificate allows ``purpose``."""
        if purpose not in self.allowed:
            raise KeyUsageRefused(
                f"the key of {self.name} may not sign {purpose.value}s (its certificate's "
                "key usage does not allow it)")

    async def sign(self, purpose: Purpose, build: Callable[[], T]) -> T:
        """Run ``build`` (which signs with ``self.signer``) as a ``purpose`` signature."""
        return await self.signing(purpose, lambda: self.signer.run(build))

    async def signing(self, purpose: Purpose, work: Callable[[], Awaitable[T]]) -> T:
        """Await ``work`` (which signs with ``self.signer`` through its async calls, e.g. a
        CMS SignedData) as a ``purpose`` signature: checked first, counted after."""
        counters = self._counters.get(purpose)
        if counters is None:
            self.check(purpose)
            counters = self._counters[purpose] = (
                CA_SIGNING_OPERATIONS.labels(self.name, purpose.value, "success"),
                CA_SIGNING_OPERATIONS.labels(self.name, purpose.value, "error"))
            self._key_usage = CA_KEY_USAGE.labels(self.name, str(self.signer.hsm_backed).lower())
        limit = SIGNATURES
        if limit.in_flight >= limit.limit and not _UPKEEP.get():
            raise SigningBusy(f"{limit.limit} signatures are already being made; retry shortly")
        limit.in_flight += 1
        try:
            with span("sign") as current:
                if current is not None:  # tracing on: which key, for what, in a token or not
                    current.set_attributes({"ca.name": self.name, "sign.purpose": purpose.value,
                                            "key.hsm": self.signer.hsm_backed})
                result = await work()
        except Exception:
            counters[1].inc()
            raise
        finally:
            limit.in_flight -= 1
        counters[0].inc()
        self._key_usage.inc()
        return result
