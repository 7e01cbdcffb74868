"""X.509 construction: the only place that builds certificates (RFC 5280 profile).

Issuance is two steps, as in Boulder: ``check`` everything about the to-be-signed
certificate first, then sign. Nothing here touches the store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

from ca_core.errors import PolicyViolation
from ca_core.keys import KeySpec
from ca_core.profiles import Profile

# \Z, not $: "$" also matches before a final newline, which let "a.test\n" through as a
# DNS name and "a@b.test\n" as an address (issue 16, SAN injection).
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
# No whitespace and no control characters (a NUL ends the name for C clients that compare
# it: "a@b.test\0@evil.test").
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+\Z")
_URI_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")  # RFC 3986 has no place for either


@dataclass(frozen=True, slots=True)
class SubjectAltNames:
    dns: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in
                (("dns", self.dns), ("ip", self.ip), ("email", self.email), ("uri", self.uri))
                if v}

    def __bool__(self) -> bool:
        return bool(self.dns or self.ip or self.email or self.uri)

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in self.dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in self.ip]
        names += [x509.RFC822Name(e) for e in self.email]
        names += [x509.UniformResourceIdentifier(u) for u in self.uri]
        return names


def valid_dns_name(name: str, allow_wildcard: bool = True) -> bool:
    if len(name) > 253 or name != name.lower():
        return False
    labels = name.split(".")
    if allow_wildcard and labels[0] == "*":
        labels = labels[1:]
        if len(labels) < 2:
            return False
    return len(labels) >= 1 and all(_DNS_LABEL.match(label) for label in labels)


def common_name_identifier(common_name: str) -> tuple[str, str] | None:
    """What a subject common name names, by the one rule that ACME finalization and the
    Authority share: ("ip", canonical text) for an IP address (RFC 8738 identifiers; so
    "192.0.2.1" is never taken for a DNS name), ("dns", lowercase) for a DNS name, None for
    anything else (an IPv6 zone has no meaning in a certificate)."""
    text = common_name.lower()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return ("dns", text) if valid_dns_name(text, allow_wildcard=True) else None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return "ip", str(address)


def sans_from_csr(csr: x509.CertificateSigningRequest) -> SubjectAltNames:
    """The SANs a CSR asks for; PolicyViolation for names of a kind we never issue."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return SubjectAltNames()
    dns: list[str] = []
    ips: list[str] = []
    emails: list[str] = []
    uris: list[str] = []
    for name in ext.value:
        if isinstance(name, x509.DNSName):
            dns.append(name.value.lower().rstrip("."))
        elif isinstance(name, x509.IPAddress):
            if not isinstance(name.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                raise PolicyViolation("IP address ranges are not allowed in a SAN")
            ips.append(str(name.value))
        elif isinstance(name, x509.RFC822Name):
            emails.append(name.value)
        elif isinstance(name, x509.UniformResourceIdentifier):
            uris.append(name.value)
        else:
            raise PolicyViolation(f"SAN type {type(name).__name__} is not allowed")
    return SubjectAltNames(
        tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)),
        tuple(dict.fromkeys(emails)), tuple(dict.fromkeys(uris)),
    )


def check_sans(sans: SubjectAltNames, profile: Profile) -> None:
    present = {kind for kind, values in sans.as_dict().items() if values}
    forbidden = present - set(profile.san_types)
    if forbidden:
        raise PolicyViolation(
            f"profile {profile.name} does not allow SAN types {', '.join(sorted(forbidden))}"
        )
    for name in sans.dns:
        if not valid_dns_name(name):
            raise PolicyViolation(f"invalid DNS name in SAN: {name!r}")
    for email in sans.email:
        if not _EMAIL.match(email):
            raise PolicyViolation(f"invalid email address in SAN: {email!r}")
    for uri in sans.uri:
        if ":" not in uri or uri.startswith(":"):
            raise PolicyViolation(f"SAN URI must be absolute: {uri!r}")
        if _URI_FORBIDDEN.search(uri):
            raise PolicyViolation(f"SAN URI holds whitespace or a control character: {uri!r}")
    if len(sans.dns) + len(sans.ip) + len(sans.email) + len(sans.uri) > 100:
        raise PolicyViolation("at most 100 subject alternative names")
    if profile.require_san and not sans:
        raise PolicyViolation(f"profile {profile.name} requires a subject alternative name")


@dataclass(frozen=True, slots=True)
class IssuerContext:
    """What a certificate needs to know about the CA that signs it.

    The issuer's own extensions (AKI, AIA, CDP) are the same for every certificate it
    signs: they are built once here, not per issuance. With partitioned CRLs the CDP names
    the certificate's partition, so there is one set of locations per partition.
    """

    name: x509.Name
    public_key: CertificateIssuerPublicKeyTypes
    key_spec: KeySpec
    not_after: dt.datetime
    authority_key_identifier: x509.Extension[x509.ExtensionType]
    locations_by_partition: tuple[tuple[x509.Extension[x509.ExtensionType], ...], ...]
    # For CA certificates it signs: caIssuers and the full CRL, no OCSP URL. The responder
    # answers for end-entity certificates of issuing CAs only, so an OCSP URL in a CA
    # certificate would send chain-checking clients to an "unauthorized" answer.
    ca_locations: tuple[x509.Extension[x509.ExtensionType], ...] = ()

    @property
    def locations(self) -> tuple[x509.Extension[x509.ExtensionType], ...]:
        """AIA and the CDP of the full CRL."""
        return self.locations_by_partition[0]

    def locations_for(self, crl_partition: int) -> tuple[x509.Extension[x509.ExtensionType], ...]:
        return self.locations_by_partition[crl_partition]

    @classmethod
    def create(
        cls,
        name: x509.Name,
        public_key: CertificateIssuerPublicKeyTypes,
        key_spec: KeySpec,
        not_after: dt.datetime,
        crl_urls: Sequence[str],
        ocsp_url: str | None,
        ca_issuers_url: str | None,
    ) -> IssuerContext:
        """``crl_urls``: the full CRL's first, then partition 1, 2, ... (may be empty)."""
        access: list[x509.AccessDescription] = []
        if ocsp_url:
            access.append(x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)))
        if ca_issuers_url:
            access.append(x509.AccessDescription(
                AuthorityInformationAccessOID.CA_ISSUERS,
                x509.UniformResourceIdentifier(ca_issuers_url)))
        aia = (_extension(x509.AuthorityInformationAccess(access), False),) if access else ()
        by_partition = tuple(
            (*aia, _extension(x509.CRLDistributionPoints([distribution_point(url)]), False))
            for url in crl_urls
        ) or (aia,)
        issuers_only = [a for a in access if a.access_method != AuthorityInformationAccessOID.OCSP]
        ca_locations = tuple(
            [_extension(x509.AuthorityInformationAccess(issuers_only), False)]
            if issuers_only else []) + tuple(
            [_extension(x509.CRLDistributionPoints([distribution_point(crl_urls[0])]), False)]
            if crl_urls else [])
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
        return cls(name, public_key, key_spec, not_after, _extension(aki, False), by_partition,
                   ca_locations)


def distribution_point(url: str) -> x509.DistributionPoint:
    """A distribution point by full name (RFC 5280 4.2.1.13); the same value goes into a
    partitioned CRL's IssuingDistributionPoint, which is how a relying party matches them."""
    return x509.DistributionPoint(full_name=[x509.UniformResourceIdentifier(url)],
                                  relative_name=None, reasons=None, crl_issuer=None)


def _extension(value: x509.ExtensionType, critical: bool) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


# The same value in every leaf: made once (extensions are immutable values).
_END_ENTITY = _extension(x509.BasicConstraints(ca=False, path_length=None), True)


@dataclass(frozen=True, slots=True)
class LeafTemplate:
    subject: x509.Name
    public_key: CertificatePublicKeyTypes
    subject_key: KeySpec
    sans: SubjectAltNames
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    profile: Profile
    extra_extensions: tuple[x509.ExtensionType, ...] = field(default=())
    crl_partition: int = 0  # whose CDP the certificate carries (0: the full CRL's)


def leaf_builder(template: LeafTemplate, issuer: IssuerContext) -> x509.CertificateBuilder:
    """The to-be-signed leaf certificate; raises PolicyViolation before any key is used."""
    if template.not_after <= template.not_before:
        raise PolicyViolation("notAfter must be after notBefore")
    if template.not_after > issuer.not_after:
        raise PolicyViolation("certificate would outlive its issuer")
    profile = template.profile
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        _END_ENTITY,
        _extension(profile.key_usage_extension(template.subject_key), True),
        _extension(x509.SubjectKeyIdentifier.from_public_key(template.public_key), False),
        issuer.authority_key_identifier,
    ]
    eku = profile.extended_key_usage_extension()
    if eku is not None:
        extensions.append(_extension(eku, profile.eku_critical))
    if template.sans:
        # RFC 5280 4.2.1.6: critical when the subject is empty.
        extensions.append(_extension(
            x509.SubjectAlternativeName(template.sans.general_names()),
            len(template.subject) == 0))
    if profile.ocsp_no_check:
        # A delegated responder's own status is not checked: no AIA OCSP or CDP for it.
        extensions.append(_extension(x509.OCSPNoCheck(), False))
    else:
        extensions.extend(issuer.locations_for(template.crl_partition))
    extensions.extend(_extension(e, False) for e in template.extra_extensions)
    # One constructor call instead of a chain of add_extension copies.
    return x509.CertificateBuilder(
        issuer_name=issuer.name,
        subject_name=template.subject,
        public_key=template.public_key,
        serial_number=template.serial,
        not_valid_before=template.not_before,
        not_valid_after=template.not_after,
        extensions=extensions,
    )


def ca_builder(
    subject: x509.Name,
    public_key: CertificateIssuerPublicKeyTypes,
    serial: int,
    not_before: dt.datetime,
    not_after: dt.datetime,
    path_length: int | None,
    issuer: IssuerContext | None,
) -> x509.CertificateBuilder:
    """A CA certificate; ``issuer`` None makes it self-signed (a root)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject if issuer is None else issuer.name)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        for extension in (issuer.authority_key_identifier, *issuer.ca_locations):
            builder = builder.add_extension(extension.value, critical=extension.critical)
    return builder


def sign(
    builder: x509.CertificateBuilder, key: CertificateIssuerPrivateKeyTypes, spec: KeySpec
) -> x509.Certificate:
    return builder.sign(key, spec.hash_algorithm)  # type: ignore[arg-type]


def name(common_name: str, organization: str | None = None, country: str | None = None
         ) -> x509.Name:
    attributes = []
    if country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]))
    return x509.Name(attributes)
