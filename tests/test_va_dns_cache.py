"""va.validator's address cache: A/AAAA answers kept for their TTL, TXT and negative
answers never (an applicant's freshly published dns-01 record is read as it is now)."""

from __future__ import annotations

import socket
from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdatatype

from conformance import testdns
from conformance.gateway import free_port
from va.validator import ValidationSettings, Validator, dns01_digest


def _key(name: str, rdtype: dns.rdatatype.RdataType
         ) -> tuple[dns.name.Name, dns.rdatatype.RdataType, dns.rdataclass.RdataClass]:
    return dns.name.from_text(name), rdtype, dns.rdataclass.IN


async def test_addresses_are_cached_txt_and_negative_answers_are_not(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    (tmp_path / "_acme-challenge.cached.test").write_text(dns01_digest("t.k") + "\n")
    validator = Validator(ValidationSettings(dns_resolver=f"127.0.0.1:{port}"))
    with testdns.running(port, tmp_path):
        assert await validator._addresses("dns", "cached.test") == ["127.0.0.1"]
        await validator._dns01("cached.test", "t.k")
    resolver = validator._resolver
    assert resolver is not None and resolver.cache is not None
    cached = resolver.cache.get(_key("cached.test", dns.rdatatype.A))
    assert cached is not None and [r.to_text() for r in cached] == ["127.0.0.1"]
    # the test DNS answers AAAA with no records, and TXT from the file: neither is kept
    assert resolver.cache.get(_key("cached.test", dns.rdatatype.AAAA)) is None
    assert resolver.cache.get(_key("_acme-challenge.cached.test", dns.rdatatype.TXT)) is None
    await validator.aclose()
