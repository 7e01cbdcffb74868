"""Certificate profiles (templates): what a certificate of each purpose may contain.

The purposes are those of the seed schema (vcc_service, mtls_service, code_signing, admin,
external_integration, timestamp_authority) plus ocsp_signing for delegated OCSP responders.
A profile fixes key usages, extended key usages, the maximum validity, the key types a
subject may use and which SAN types it may carry. Built-in profiles are written to the
store's certificate_templates table by ``vcc-pki init`` so an operator can read them there.
Operators' templates, named narrowings of these, are ``ca_core.templates``; a requested
name resolves through ``Authority.resolve_profile``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core.keys import KeyAlgorithm, KeySpec
from ca_core.principal import ROLES

EKU_NAMES: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}

KEY_USAGE_NAMES = (
    "digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment",
    "keyAgreement", "keyCertSign", "cRLSign",
)

SAN_TYPES = ("dns", "ip", "email", "uri")

_DEFAULT_KEYS = ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384")


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    key_usage: tuple[str, ...]
    extended_key_usage: tuple[str, ...]
    max_validity_days: int
    default_validity_days: int
    allowed_keys: tuple[str, ...] = _DEFAULT_KEYS
    san_types: tuple[str, ...] = ("dns", "ip")
    require_san: bool = False
    eku_critical: bool = False
    ocsp_no_check: bool = False
    # Issued by the CA itself (OCSP responders), never on request through a front-end.
    internal_only: bool = False
    # The roles that may request it (the seed's role matrix); empty: every role that may
    # request certificates. pki_super_admin may request every profile.
    allowed_roles: tuple[str, ...] = ()
    # An operator template (ca_core.templates): the built-in profile it narrows; "" for a
    # built-in. Metrics and an organization's policy.profiles see a template as its base.
    base: str = ""

    @property
    def purpose(self) -> str:
        """The built-in profile this one is (or narrows)."""
        return self.base or self.name

    def allows_role(self, role: str, may_request: bool) -> bool:
        """Whether a principal of ``role`` may request this profile (``may_request``: its
        role has the generic cert:request permission)."""
        if role == "pki_super_admin":
            return True
        if self.allowed_roles:
            return role in self.allowed_roles
        return may_request

    def allows_key(self, spec: KeySpec) -> bool:
        return str(spec) in self.allowed_keys

    def key_usage_extension(self, subject_key: KeySpec) -> x509.KeyUsage:
        usages = set(self.key_usage)
        if subject_key.algorithm is not KeyAlgorithm.RSA:
            # Key encipherment is meaningless for EC and Ed25519 keys (RFC 8813 / 8410).
            usages.discard("keyEncipherment")
        return x509.KeyUsage(
            digital_signature="digitalSignature" in usages,
            content_commitment="contentCommitment" in usages,
            key_encipherment="keyEncipherment" in usages,
            data_encipherment="dataEncipherment" in usages,
            key_agreement="keyAgreement" in usages,
            key_cert_sign="keyCertSign" in usages,
            crl_sign="cRLSign" in usages,
            encipher_only=False,
            decipher_only=False,
        )

    def extended_key_usage_extension(self) -> x509.ExtendedKeyUsage | None:
        if not self.extended_key_usage:
            return None
        return x509.ExtendedKeyUsage([EKU_NAMES[name] for name in self.extended_key_usage])

    def to_definition(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_definition(cls, data: dict[str, Any]) -> Profile:
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        if "allowed_roles" not in fields:
            # A definition stored before profiles carried roles: the built-in's roles, so
            # that an old store does not open the TSA profile to everyone.
            builtin = next((p for p in BUILTIN_PROFILES if p.name == fields.get("name")), None)
            fields["allowed_roles"] = builtin.allowed_roles if builtin else ()
        profile = cls(**fields)
        profile.validate()
        return profile

    def validate(self) -> None:
        unknown_ku = set(self.key_usage) - set(KEY_USAGE_NAMES)
        unknown_eku = set(self.extended_key_usage) - set(EKU_NAMES)
        unknown_san = set(self.san_types) - set(SAN_TYPES)
        if unknown_ku or unknown_eku or unknown_san:
            raise ValueError(
                f"profile {self.name}: unknown names "
                f"{sorted(unknown_ku | unknown_eku | unknown_san)}"
            )
        for key in self.allowed_keys:
            KeySpec.parse(key)
        unknown_roles = set(self.allowed_roles) - set(ROLES)
        if unknown_roles:
            raise ValueError(f"profile {self.name}: unknown roles {sorted(unknown_roles)}")
        if not 0 < self.default_validity_days <= self.max_validity_days:
            raise ValueError(f"profile {self.name}: default validity outside 1..max")


BUILTIN_PROFILES: tuple[Profile, ...] = (
    Profile(
        name="vcc_service",
        description="TLS server and client certificate of an internal service",
        key_usage=("digitalSignature", "keyEncipherment"),
        extended_key_usage=("serverAuth", "clientAuth"),
        max_validity_days=397, default_validity_days=90,
        allowed_keys=(*_DEFAULT_KEYS, "ed25519"),
        san_types=("dns", "ip", "uri"), require_san=True,
    ),
    Profile(
        name="mtls_service",
        description="Mutual-TLS certificate of a service (server and client)",
        key_usage=("digitalSignature", "keyEncipherment"),
        extended_key_usage=("serverAuth", "clientAuth"),
        max_validity_days=397, default_validity_days=90,
        allowed_keys=(*_DEFAULT_KEYS, "ed25519"),
        san_types=("dns", "ip", "uri"), require_san=True,
    ),
    Profile(
        name="code_signing",
        description="Code signing of packages, adapters, configurations and images",
        key_usage=("digitalSignature",),
        extended_key_usage=("codeSigning",),
        max_validity_days=1095, default_validity_days=365,
        allowed_keys=("rsa-3072", "rsa-4096", "ec-p256", "ec-p384"),
        san_types=("email", "uri"),
        allowed_roles=("code_signer", "pki_admin"),
    ),
    Profile(
        name="admin",
        description="Client certificate of an administrator",
        key_usage=("digitalSignature",),
        extended_key_usage=("clientAuth",),
        max_validity_days=365, default_validity_days=180,
        san_types=("email", "uri"),
        allowed_roles=("pki_admin",),
    ),
    Profile(
        name="external_integration",
        description="Client certificate of an external partner system",
        key_usage=("digitalSignature", "keyEncipherment"),
        extended_key_usage=("clientAuth",),
        max_validity_days=397, default_validity_days=365,
        san_types=("dns", "uri", "email"),
    ),
    Profile(
        name="timestamp_authority",
        description="RFC 3161 time-stamping unit (EKU timeStamping only, critical)",
        key_usage=("digitalSignature", "contentCommitment"),
        extended_key_usage=("timeStamping",),
        eku_critical=True,
        max_validity_days=1826, default_validity_days=1095,
        allowed_keys=("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"),
        san_types=(),
        # Whoever holds such a key sets the time in tokens that relying parties trust.
        allowed_roles=("pki_super_admin",),
    ),
    Profile(
        name="ocsp_signing",
        description="Delegated OCSP responder of one issuing CA (RFC 6960 4.2.2.2)",
        key_usage=("digitalSignature",),
        extended_key_usage=("OCSPSigning",),
        max_validity_days=90, default_validity_days=30,
        san_types=(), ocsp_no_check=True, internal_only=True,
    ),
    Profile(
        name="scep_ra",
        description="SCEP RA of one issuing CA (RFC 8894 2.2): signs replies, decrypts requests",
        # digitalSignature: strict clients (certmonger) check the reply signer's purpose;
        # keyEncipherment: clients encrypt their requests to this certificate.
        key_usage=("digitalSignature", "keyEncipherment"),
        extended_key_usage=(),
        max_validity_days=397, default_validity_days=365,
        allowed_keys=("rsa-2048", "rsa-3072", "rsa-4096"),
        san_types=(), internal_only=True,
    ),
)
