"""Mutations of a valid request: bit flips, truncations, insertions, repeated chunks,
random bytes, oversized and empty bodies. Each takes the run's RNG, so a run can be
repeated from its seed."""

from __future__ import annotations

import random
from collections.abc import Callable

Mutator = Callable[[random.Random, bytes], bytes]


def flip(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return b"\x00"
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))] if data else b""


def insert(rng: random.Random, data: bytes) -> bytes:
    at = rng.randrange(len(data) + 1)
    return data[:at] + rng.randbytes(rng.randint(1, 32)) + data[at:]


def repeat(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    start = rng.randrange(len(data))
    chunk = data[start:start + rng.randint(1, 64)]
    return data[:start] + chunk * rng.randint(2, 50) + data[start:]


def random_bytes(rng: random.Random, data: bytes) -> bytes:
    return rng.randbytes(max(1, len(data)))


def oversized_field(rng: random.Random, data: bytes) -> bytes:
    """One byte of the request repeated into a field of up to 8 KiB: lengths that no longer
    fit their DER length octets, JSON strings and base64 far beyond any real value."""
    if not data:
        return b"A" * 8192
    at = rng.randrange(len(data))
    return data[:at] + data[at:at + 1] * rng.randint(256, 8192) + data[at + 1:]


def oversized(rng: random.Random, data: bytes) -> bytes:
    """Beyond every route's body limit (256 KiB at most): 413."""
    return (data or b"x") * (300_000 // max(1, len(data)) + 2)


def empty(rng: random.Random, data: bytes) -> bytes:
    return b""


# Weighted by repetition: bit flips and truncations find the most in DER and JOSE.
BODY_MUTATORS: tuple[Mutator, ...] = (flip, flip, flip, truncate, truncate, insert, repeat,
                                      random_bytes, oversized_field, oversized, empty)
# For a URL: nothing that makes it longer than the request line allows (tested apart).
PATH_MUTATORS: tuple[Mutator, ...] = (flip, flip, flip, truncate, truncate, insert, repeat,
                                      random_bytes)

WRONG_CONTENT_TYPES = ("text/plain", "application/json", "", "application/octet-stream; x=\x01",
                       "multipart/form-data; boundary=x", "application/x-www-form-urlencoded")


def mutated_path_segment(rng: random.Random, segment: str, limit: int = 4000) -> str:
    """``segment`` mutated and percent-encoded where it is not printable, so that the HTTP
    client sends it as it is."""
    mutated = rng.choice(PATH_MUTATORS)(rng, segment.encode())[:limit]
    return "".join(chr(b) if 0x21 <= b < 0x7F and b not in (0x23, 0x3F) else f"%{b:02X}"
                   for b in mutated)
