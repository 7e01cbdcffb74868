"""Client certificates as credentials: what a certificate must be to be bound to a service
account, and how it is identified (the SHA-256 fingerprint of its DER: pinning, so that a
certificate of any CA can be bound, ours or another's).

The binding itself is a ``records.ServiceAccount`` row; ``Authority.authenticate_certificate``
turns a presented chain into the binding's Principal and ``AdminService`` manages bindings.
Issue 14 (a service registering itself with its mTLS certificate) reuses both: the
certificate checks here, the authentication there.
"""

from __future__ import annotations

import datetime as dt
import hashlib

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca_core.errors import BadRequest

# A certificate file is small; a bigger upload is not one (and is not parsed).
MAX_CERTIFICATE_BYTES = 64 * 1024


def fingerprint(der: bytes) -> str:
    """SHA-256 of the certificate's DER, lowercase hex (as ``openssl x509 -fingerprint
    -sha256`` prints it, without the colons)."""
    return hashlib.sha256(der).hexdigest()


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate, PEM (the first in the file) or DER; BadRequest otherwise."""
    if not data or len(data) > MAX_CERTIFICATE_BYTES:
        raise BadRequest(f"the certificate must be 1 to {MAX_CERTIFICATE_BYTES} bytes of PEM "
                         "or DER")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise BadRequest("not a PEM or DER X.509 certificate") from None


def check_bindable(certificate: x509.Certificate, now: dt.datetime) -> None:
    """A certificate a service account may be bound to: within its validity now, an
    end-entity certificate (not a CA's), and, when it has an extendedKeyUsage, one that
    allows TLS client authentication (RFC 5280 4.2.1.12). BadRequest says which rule."""
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise BadRequest("the certificate is expired or not yet valid")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        if constraints.value.ca:
            raise BadRequest("the certificate is a CA certificate, not a client's")
    except x509.ExtensionNotFound:
        pass
    except ValueError:  # a malformed extension
        raise BadRequest("the certificate's extensions do not parse") from None
    try:
        purposes = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    except ValueError:
        raise BadRequest("the certificate's extensions do not parse") from None
    if not {ExtendedKeyUsageOID.CLIENT_AUTH,
            ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE} & set(purposes):
        raise BadRequest("the certificate's extendedKeyUsage does not allow TLS client "
                         "authentication (clientAuth)")


def describe(certificate: x509.Certificate) -> tuple[str, str, str]:
    """Subject and issuer (RFC 4514) and the serial (hex, as stored for certificates)."""
    return (certificate.subject.rfc4514_string(), certificate.issuer.rfc4514_string(),
            format(certificate.serial_number, "x"))
