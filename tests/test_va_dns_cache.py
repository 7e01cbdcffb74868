"""va.validator's name resolution through the configured resolver: A and AAAA through
c-ares (aiodns), NXDOMAIN and empty answers as no address, a dead resolver as DnsFailed,
and only the addresses of the name's own CNAME chain."""

from __future__ import annotations

import socket
from pathlib import Path

import aiodns.error
import pycares
import pytest

from ca_core.errors import DnsFailed
from conformance import testdns
from conformance.gateway import free_port
from va.validator import ValidationSettings, Validator


async def test_addresses_through_the_configured_resolver(tmp_path: Path) -> None:
    port = free_port(socket.SOCK_DGRAM)
    validator = Validator(ValidationSettings(dns_resolver=f"127.0.0.1:{port}", timeout=1.0))
    try:
        with testdns.running(port, tmp_path):
            # the test DNS answers every A with 127.0.0.1 and AAAA with no records
            assert await validator._addresses("dns", "cached.test") == ["127.0.0.1"]
            assert await validator._addresses("ip", "::1") == ["::1"]
        with pytest.raises(DnsFailed):  # nobody answers (c-ares keeps no empty answer)
            await validator._addresses("dns", "other.test")
    finally:
        await validator.aclose()


async def test_the_addresses_of_the_name_and_its_cname_chain_only() -> None:
    """What the answer section carries beside the name's own chain is not an address of it."""

    def record(name: str, data: object) -> pycares.DNSRecord:
        return pycares.DNSRecord(name=name, type=0, record_class=1, ttl=60, data=data)

    class Answering:
        async def query_dns(self, name: str, rdtype: str) -> pycares.DNSResult:
            if rdtype == "AAAA":
                raise aiodns.error.DNSError(pycares.errno.ARES_ENODATA, "no data")
            return pycares.DNSResult(answer=[
                record("Www.Chain.test.", pycares.CNAMERecordData(cname="edge.chain.test")),
                record("other.test", pycares.ARecordData(addr="192.0.2.66")),
                record("edge.chain.test", pycares.ARecordData(addr="192.0.2.7")),
            ], authority=[], additional=[])

        async def close(self) -> None:
            pass

    validator = Validator(ValidationSettings(dns_resolver="127.0.0.1:53"))
    validator._ares = Answering()  # type: ignore[assignment]
    assert await validator._addresses("dns", "www.chain.test") == ["192.0.2.7"]
    await validator.aclose()
