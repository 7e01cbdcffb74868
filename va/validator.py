"""ACME challenge validation (RFC 8555 section 8, RFC 8737 tls-alpn-01, RFC 8738 IP).

The ``ChallengeValidator`` that ca_core.acme declares, over the network: HTTP (aiohttp),
DNS (dnspython) and TLS-ALPN connections to the applicant. Each validator fetches what the
applicant published and compares it with the key authorization
(``token || '.' || base64url(JWK thumbprint)``). Targets are configurable for internal
networks and tests: the HTTP and TLS ports, and one DNS resolver (host:port) used both for
TXT lookups and for resolving names. A failure raises a ``ValidationFailed`` of ca_core
(ConnectionFailed, DnsFailed, TlsFailed, IncorrectResponse) with a message for the client;
nothing internal leaks into it.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from josepy import json_util

from ca_core.errors import (
    ConnectionFailed,
    DnsFailed,
    IncorrectResponse,
    TlsFailed,
    ValidationFailed,
)

# aiohttp, dnspython and c-ares (aiodns, pycares) are imported where a validation uses
# them: every `vcc-pki` command builds a Validator (gateway.runtime.open_services) and
# almost none validates, and importing them cost each command start about 0.3 s.
if TYPE_CHECKING:
    import aiodns
    import aiohttp
    import dns.asyncresolver

log = logging.getLogger(__name__)

ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # id-pe-acmeIdentifier
ACME_TLS_ALPN = "acme-tls/1"
MAX_HTTP_BODY = 8 * 1024
# A and AAAA through c-ares (aiodns): the lookups of a validation cost about a quarter of
# the CPU of dnspython's resolver (650 against 2,300 us a pair, measured on a loaded
# machine), and c-ares keeps answers for their TTL (its query cache, on by default).
# TXT (dns-01) stays with dnspython, uncached: a record an applicant has just published
# or fixed is read as it is now.


def _dns_key(name: str) -> str:
    """A DNS name as compared (RFC 4343: case-insensitive), without the root's dot."""
    return name.rstrip(".").lower()


@dataclass(frozen=True, slots=True)
class ValidationSettings:
    http01_port: int = 80
    tlsalpn01_port: int = 443
    dns_resolver: str | None = None  # host:port; None: the system resolver
    timeout: float = 5.0


def dns01_digest(key_authorization: str) -> str:
    text: str = json_util.encode_b64jose(hashlib.sha256(key_authorization.encode("ascii")).digest())
    return text


class Validator:
    def __init__(self, settings: ValidationSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._nameserver = ""  # host:port for c-ares, [host]:port for IPv6
        if settings.dns_resolver:
            import dns.asyncresolver

            host, _, port = settings.dns_resolver.rpartition(":")
            address = host.strip("[]") or "127.0.0.1"
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [address]
            resolver.port = int(port)
            resolver.lifetime = settings.timeout
            self._resolver = resolver
            self._nameserver = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        self._ares: aiodns.DNSResolver | None = None  # made on the loop that uses it

    async def validate(self, challenge_type: str, identifier_type: str, value: str,
                       token: str, key_authorization: str) -> None:
        if challenge_type == "http-01":
            await self._http01(identifier_type, value, token, key_authorization)
        elif challenge_type == "dns-01":
            await self._dns01(value, key_authorization)
        elif challenge_type == "tls-alpn-01":
            await self._tls_alpn01(identifier_type, value, key_authorization)
        else:  # the RA never offers another type
            raise ValidationFailed(f"unsupported challenge type {challenge_type}")

    # ------------------------------------------------------------------ resolution
    async def _addresses(self, identifier_type: str, value: str) -> list[str]:
        if identifier_type == "ip":
            return [value]
        if self._resolver is None:
            loop = asyncio.get_running_loop()
            try:
                infos = await asyncio.wait_for(
                    loop.getaddrinfo(value, None, type=socket.SOCK_STREAM),
                    self.settings.timeout)
            except (OSError, TimeoutError) as exc:
                raise DnsFailed(f"cannot resolve {value}") from exc
            return list(dict.fromkeys(str(info[4][0]) for info in infos))
        import aiodns
        import aiodns.error
        import pycares

        no_records = (pycares.errno.ARES_ENODATA, pycares.errno.ARES_ENOTFOUND)
        address_data: dict[str, type[pycares.ARecordData | pycares.AAAARecordData]] = {
            "A": pycares.ARecordData, "AAAA": pycares.AAAARecordData}
        if self._ares is None:
            # Two tries, each half the timeout: the whole lookup within it, as before.
            self._ares = aiodns.DNSResolver(nameservers=[self._nameserver],
                                            timeout=self.settings.timeout / 2, tries=2)
        ares = self._ares

        async def lookup(rdtype: str) -> list[str]:
            try:
                result = await asyncio.wait_for(ares.query_dns(value, rdtype),
                                                self.settings.timeout)
            except aiodns.error.DNSError as exc:
                if exc.args and exc.args[0] in no_records:  # NXDOMAIN, or no such records
                    return []
                raise DnsFailed(f"DNS lookup of {value} failed") from exc
            except TimeoutError as exc:
                raise DnsFailed(f"DNS lookup of {value} failed") from exc
            # The answer may hold a CNAME chain before the addresses: the addresses of the
            # name or of a name it leads to count, nothing else the answer carries.
            chain = {_dns_key(value)}
            for record in result.answer:
                if isinstance(record.data, pycares.CNAMERecordData) \
                        and _dns_key(record.name) in chain:
                    chain.add(_dns_key(record.data.cname))
            wanted = address_data[rdtype]
            return [str(ipaddress.ip_address(record.data.addr)) for record in result.answer
                    if isinstance(record.data, wanted) and _dns_key(record.name) in chain]

        # Both at once: the validation waits for one round trip, not two.
        results = await asyncio.gather(lookup("A"), lookup("AAAA"), return_exceptions=True)
        addresses: list[str] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            addresses.extend(result)
        if not addresses:
            raise DnsFailed(f"no A or AAAA record for {value}")
        return addresses

    # ------------------------------------------------------------------ http-01
    async def _http01(self, identifier_type: str, value: str, token: str,
                      key_authorization: str) -> None:
        port = self.settings.http01_port
        host = f"[{value}]" if identifier_type == "ip" and ":" in value else value
        url = f"http://{host}:{port}/.well-known/acme-challenge/{token}"
        last: ValidationFailed | None = None
        for address in await self._addresses(identifier_type, value):
            target = f"[{address}]" if ":" in address else address
            try:
                body = await self._fetch(f"http://{target}:{port}"
                                         f"/.well-known/acme-challenge/{token}", host)
            except ValidationFailed as exc:
                last = exc
                continue
            if body.strip() != key_authorization:
                raise IncorrectResponse(f"the key authorization at {url} does not match")
            return
        raise last or ConnectionFailed(f"no address to fetch {url}")

    def _http(self) -> aiohttp.ClientSession:
        # One session for all validations; no keep-alive, so that every validation makes
        # its own connection to the applicant's server, as if from a fresh client.
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                connector=aiohttp.TCPConnector(force_close=True, limit=64))
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._ares is not None:
            await self._ares.close()
            self._ares = None

    async def _fetch(self, url: str, host: str) -> str:
        import aiohttp

        try:
            async with self._http().get(url, headers={"Host": host}, allow_redirects=True,
                                        max_redirects=10) as response:
                if response.status != 200:
                    raise IncorrectResponse(f"fetching the challenge gave HTTP {response.status}")
                data = await response.content.read(MAX_HTTP_BODY + 1)
        except ValidationFailed:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise ConnectionFailed(f"cannot fetch the challenge from {host}: "
                                   f"{type(exc).__name__}") from exc
        if len(data) > MAX_HTTP_BODY:
            raise IncorrectResponse("the challenge response is too large")
        return data.decode("utf-8", "replace")

    # ------------------------------------------------------------------ dns-01
    async def _dns01(self, value: str, key_authorization: str) -> None:
        name = f"_acme-challenge.{value}"
        expected = dns01_digest(key_authorization)
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        resolver = self._resolver or dns.asyncresolver.Resolver()
        try:
            answer = await resolver.resolve(name, "TXT", lifetime=self.settings.timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            raise IncorrectResponse(f"no TXT record at {name}") from exc
        except dns.exception.DNSException as exc:
            raise DnsFailed(f"DNS lookup of {name} failed") from exc
        found = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
        if expected not in found:
            raise IncorrectResponse(f"no TXT record at {name} matches the key authorization")

    # ------------------------------------------------------------------ tls-alpn-01
    async def _tls_alpn01(self, identifier_type: str, value: str,
                          key_authorization: str) -> None:
        import dns.reversename

        # RFC 8738 section 6: an IP identifier is named by its reverse-DNS name in SNI.
        server_name = (dns.reversename.from_address(value).to_text(omit_final_dot=True)
                       if identifier_type == "ip" else value)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the certificate is self-signed by design
        context.set_alpn_protocols([ACME_TLS_ALPN])
        last: ValidationFailed | None = None
        for address in await self._addresses(identifier_type, value):
            try:
                der = await self._handshake(address, server_name, context)
            except ValidationFailed as exc:
                last = exc
                continue
            self._check_alpn_certificate(der, identifier_type, value, key_authorization)
            return
        raise last or ConnectionFailed(f"no address for {value}")

    async def _handshake(self, address: str, server_name: str,
                         context: ssl.SSLContext) -> bytes:
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(
                address, self.settings.tlsalpn01_port, ssl=context,
                server_hostname=server_name), self.settings.timeout)
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            raise TlsFailed(f"TLS handshake with {server_name} failed: "
                            f"{type(exc).__name__}") from exc
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != ACME_TLS_ALPN:
                raise TlsFailed(f"{server_name} did not negotiate {ACME_TLS_ALPN}")
            der = ssl_object.getpeercert(binary_form=True)
            if not der:
                raise TlsFailed(f"{server_name} sent no certificate")
            return bytes(der)
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ssl.SSLError):
                pass

    @staticmethod
    def _check_alpn_certificate(der: bytes, identifier_type: str, value: str,
                                key_authorization: str) -> None:
        try:
            certificate = x509.load_der_x509_certificate(der)
            sans = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value
            acme = certificate.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        except (ValueError, x509.ExtensionNotFound) as exc:
            raise IncorrectResponse("the tls-alpn-01 certificate lacks the SAN or the "
                                    "acmeIdentifier extension") from exc
        if identifier_type == "ip":
            names = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
            wanted = str(ipaddress.ip_address(value))
        else:
            names = set(sans.get_values_for_type(x509.DNSName))
            wanted = value
        if names != {wanted} or len(list(sans)) != 1:
            raise IncorrectResponse("the tls-alpn-01 certificate must name exactly the identifier")
        if not acme.critical:
            raise IncorrectResponse("the acmeIdentifier extension must be critical")
        expected = hashlib.sha256(key_authorization.encode("ascii")).digest()
        raw = acme.value.value if isinstance(acme.value, x509.UnrecognizedExtension) else b""
        # The extension value is an OCTET STRING (04 20 ...) holding the SHA-256 digest.
        if raw != b"\x04\x20" + expected:
            raise IncorrectResponse("the acmeIdentifier does not match the key authorization")
