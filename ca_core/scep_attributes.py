"""SCEP's CMS attributes (RFC 8894 3.2.1): the one adapter between them and asn1crypto.

asn1crypto's ``cms`` module knows no SCEP attribute types, so this module names their OIDs
and builds and reads them through ``ca_core.cms.attribute`` from raw OIDs (no private
asn1crypto names, no global registration):

    transactionID    2.16.840.1.113733.1.9.7   PrintableString   (3.2.1.1)
    messageType      2.16.840.1.113733.1.9.2   PrintableString   (3.2.1.2)
    pkiStatus        2.16.840.1.113733.1.9.3   PrintableString   (3.2.1.3)
    failInfo         2.16.840.1.113733.1.9.4   PrintableString   (3.2.1.4)
    senderNonce      2.16.840.1.113733.1.9.5   OCTET STRING      (3.2.1.5)
    recipientNonce   2.16.840.1.113733.1.9.6   OCTET STRING      (3.2.1.5)
    failInfoText     1.3.6.1.5.5.7.24.1        UTF8String        (3.2.1.4)

and the one message content asn1crypto lacks, CertPoll's IssuerAndSubject (3.3.3).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any, ClassVar

from asn1crypto import core, parser
from asn1crypto import x509 as asn1_x509

from ca_core.cms import attribute

TRANSACTION_ID = "2.16.840.1.113733.1.9.7"
MESSAGE_TYPE = "2.16.840.1.113733.1.9.2"
PKI_STATUS = "2.16.840.1.113733.1.9.3"
FAIL_INFO = "2.16.840.1.113733.1.9.4"
SENDER_NONCE = "2.16.840.1.113733.1.9.5"
RECIPIENT_NONCE = "2.16.840.1.113733.1.9.6"
FAIL_INFO_TEXT = "1.3.6.1.5.5.7.24.1"


class MessageType(enum.StrEnum):
    """RFC 8894 3.2.1.2."""

    CERT_REP = "3"
    RENEWAL_REQ = "17"
    PKCS_REQ = "19"
    CERT_POLL = "20"
    GET_CERT = "21"
    GET_CRL = "22"


class PkiStatus(enum.StrEnum):
    """RFC 8894 3.2.1.3."""

    SUCCESS = "0"
    FAILURE = "2"
    PENDING = "3"


class FailInfo(enum.StrEnum):
    """RFC 8894 3.2.1.4."""

    BAD_ALG = "0"
    BAD_MESSAGE_CHECK = "1"
    BAD_REQUEST = "2"
    BAD_TIME = "3"
    BAD_CERT_ID = "4"


class IssuerAndSubject(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 8894 3.3.3: the CertPoll content, ``SEQUENCE { issuer Name, subject Name }``."""

    _fields: ClassVar[list[tuple[str, type[core.Asn1Value]]]] = [
        ("issuer", asn1_x509.Name), ("subject", asn1_x509.Name)]


def printable(oid: str, text: str) -> Any:
    """An attribute of one PrintableString value."""
    return attribute(oid, [core.PrintableString(text)])


def octets(oid: str, data: bytes) -> Any:
    """An attribute of one OCTET STRING value."""
    return attribute(oid, [core.OctetString(data)])


def utf8(oid: str, text: str) -> Any:
    return attribute(oid, [core.UTF8String(text)])


# Strings that clients put in PrintableString attributes (some send UTF8String or IA5).
_STRING_TAGS = (12, 19, 22)
_OCTET_STRING = 4


def _single(attrs: Mapping[str, tuple[Any, ...]], oid: str, tags: tuple[int, ...]
            ) -> bytes | None:
    """The contents of the one value of attribute ``oid`` if its tag is one of ``tags``;
    None when absent, repeated or of another type."""
    values = attrs.get(oid)
    if values is None or len(values) != 1:
        return None
    try:
        tag_class, _, tag, _, contents, _ = parser.parse(values[0].dump())
    except (ValueError, TypeError):
        return None
    if tag_class != 0 or tag not in tags:
        return None
    return bytes(contents)


def read_text(attrs: Mapping[str, tuple[Any, ...]], oid: str) -> str | None:
    raw = _single(attrs, oid, _STRING_TAGS)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_octets(attrs: Mapping[str, tuple[Any, ...]], oid: str) -> bytes | None:
    return _single(attrs, oid, (_OCTET_STRING,))
