"""Bench-only: ``vcc-pki`` with the tenant isolation checks of issuance bypassed, the B side
of ``conformance.bench.isolation``'s A/B run. Never used outside the benchmark.

What it bypasses (``ca_core.authority.Authority``):

- ``_org_for``: the check that the organization a request names is within the caller's
  scope (and the audited refusal): the organization is just looked up;
- ``_active_org``: the fresh read of the organization on every issuance (disabled at once,
  in every process; its policy read with it): the cached copy is used.

Not bypassed: the bearer token's lookup (joined with its organization's status: one keyed
read that authentication needs anyway) and the organization policy's name checks (a rule
of what may be issued, not of who may see what).

Run as ``python -m conformance.bench.no_isolation serve`` with the usual settings.
"""

from __future__ import annotations

import sys

from ca_core.authority import Authority
from ca_core.principal import Principal
from ca_core.records import Organization
from gateway.cli import main


async def _org_unchecked(self: Authority, slug: str | None, principal: Principal,
                         action: str = "cert:request") -> Organization:
    if slug is None:
        if principal.org_id is not None:
            return await self.organization_by_id(principal.org_id)
        slug = self.settings.default_org
    return await self.organization(slug)


async def _cached_org(self: Authority, org: Organization) -> Organization:
    return org


def patch() -> None:
    Authority._org_for = _org_unchecked  # type: ignore[method-assign]
    Authority._active_org = _cached_org  # type: ignore[method-assign]


if __name__ == "__main__":
    patch()
    sys.exit(main(sys.argv[1:]))
