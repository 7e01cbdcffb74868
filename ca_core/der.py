"""DER writing (X.690 8.1 and 10) for structures assembled from parts already encoded.

asn1crypto declares, builds and parses every structure of this project. On a hot path (a
TSA token per request) a structure is put together from values asn1crypto encoded once, and
re-building it with asn1crypto's constructors costs more than the signature: they check,
convert and re-tag every field (measured ~240 µs for the SignedData of a token, against
~25 µs for its P-256 signature and ~25 µs for these helpers). The DER of a SEQUENCE is its
tag, its length and its present fields' encodings in the order the ASN.1 module declares
them (X.690 8.9); a SET OF orders its elements' encodings (X.690 11.6). The module that
knows a declaration (cms.py for RFC 5652, tsa.py for RFC 3161) writes it with these
helpers, and tests compare its output byte for byte with asn1crypto's constructors.

Only single-octet identifiers (tag numbers below 31) are written: every structure of CMS,
TSP and X.509 uses those.
"""

from __future__ import annotations

from collections.abc import Iterable

from asn1crypto import parser

SEQUENCE = 0x30
SET = 0x31
OCTET_STRING = 0x04
_CONTEXT = 0x80
_CONSTRUCTED = 0x20


def length(size: int) -> bytes:
    """The definite length octets (X.690 8.1.3): short form below 128, else long form."""
    if size < 0x80:
        return bytes((size,))
    octets = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def tlv(tag: int, contents: bytes) -> bytes:
    """Identifier octet ``tag``, the length of ``contents``, then ``contents``."""
    return bytes((tag,)) + length(len(contents)) + contents


def sequence(*fields: bytes | None) -> bytes:
    """A SEQUENCE of these field encodings, in order; ``None`` is an absent OPTIONAL (or
    DEFAULT) field."""
    return tlv(SEQUENCE, b"".join(f for f in fields if f is not None))


def set_of(elements: Iterable[bytes]) -> bytes:
    """A SET OF these element encodings, in DER order (ascending octets, X.690 11.6)."""
    return tlv(SET, b"".join(sorted(elements)))


def octet_string(value: bytes) -> bytes:
    return tlv(OCTET_STRING, value)


def explicit(number: int, encoding: bytes) -> bytes:
    """``[number] EXPLICIT``: the encoding wrapped in a constructed context tag."""
    return tlv(_CONTEXT | _CONSTRUCTED | _tag_number(number), encoding)


def implicit(number: int, encoding: bytes) -> bytes:
    """``[number] IMPLICIT``: the encoding with its identifier octet replaced by the context
    tag (keeping its primitive/constructed bit, X.690 8.14.3)."""
    constructed = encoding[0] & _CONSTRUCTED
    return bytes((_CONTEXT | constructed | _tag_number(number),)) + encoding[1:]


def _tag_number(number: int) -> int:
    if not 0 <= number < 31:
        raise ValueError(f"tag number {number} needs the high-tag-number form")
    return number


def elements(contents: bytes) -> list[bytes]:
    """The encoded elements (DER or BER) of a constructed value's contents, in order;
    ValueError when they do not parse."""
    found = []
    while contents:
        _, _, _, header, inner, trailer = parser.parse(contents)
        size = len(header) + len(inner) + len(trailer)
        found.append(contents[:size])
        contents = contents[size:]
    return found
