"""va.validator's name resolution through the configured resolver: A and AAAA through
c-ares (aiodns), NXDOMAIN and empty answers as no address, a dead resolver as DnsFailed."""

from __future__ import annotations

import socket
from pathlib import Path

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
