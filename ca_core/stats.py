"""Live counters behind the web admin page's rates (issue 17): ``GET /api/v1/stats``.

The figures are this process's prometheus_client counters, the ones ``/metrics`` exposes
(``pki_cert_requests_total``, ``pki_cert_revocations_total``, ``pki_ocsp_responses_total``,
``pki_ocsp_live_answers_total``, ``pki_tsa_responses_total``): totals since the process
started. OCSP cache hits are the successful responses less those signed live (a cache hit
adds no counter of its own: ``ca_core.metrics``). A rate is the difference of two samples
over the time between them, which the client computes (the page polls). With
``VCC_PKI_WORKERS`` > 1 each worker counts on its own and a request reaches one of them, so
the answer names its process (``process.id``, ``process.started_at``): two samples make a
rate only when they come from the same process (Prometheus, scraping every worker's
``/metrics``, is the place for gateway-wide sums).

RBAC as for compliance reports (``compliance:read``): a super admin sees every
organization's issuance, or one's with ``organization``; anyone else their organization's
only (another organization is 404, audited). The OCSP and TSA counters are not kept per
organization, so they are answered to a principal of every organization (a super admin)
only, and are null for an organization's principal.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric

from ca_core.errors import Forbidden, NotFound
from ca_core.storage import StoreInvalid

if TYPE_CHECKING:
    from ca_core.authority import Authority
    from ca_core.principal import Principal

PERMISSION = "compliance:read"
ISSUANCE_OUTCOMES = ("issued", "rejected", "error")
# One id per process start: a pid alone can come back after a restart.
_PROCESS = {"id": f"{os.getpid()}-{uuid.uuid4().hex[:8]}",
            "started_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")}


def _totals(families: Iterable[Metric], name: str, label: str,
            where: dict[str, str] | None = None) -> dict[str, float]:
    """Sum of ``name``'s ``_total`` samples by ``label`` (samples matching ``where``)."""
    sums: dict[str, float] = {}
    for family in families:
        if family.name != name:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            if where and any(sample.labels.get(k) != v for k, v in where.items()):
                continue
            key = sample.labels.get(label, "")
            sums[key] = sums.get(key, 0.0) + sample.value
    return sums


class GatewayStats:
    """See the module docstring."""

    def __init__(self, authority: Authority, registry: CollectorRegistry = REGISTRY) -> None:
        self.authority = authority
        self.registry = registry

    async def _scope(self, principal: Principal, organization: str | None) -> str | None:
        """The organization slug the issuance figures cover (None: all)."""
        if not principal.can(PERMISSION):
            await self.authority.denied(principal, PERMISSION, "stats", None)
            raise Forbidden(f"this credential may not do {PERMISSION}")
        if organization is None:
            if principal.org_id is None:
                return None
            return (await self.authority.organization_by_id(principal.org_id)).slug
        store = self.authority.store
        try:
            org = (await store.get_organization(organization)
                   or await store.get_organization_by_id(organization))
        except StoreInvalid:
            org = None
        if org is None or not principal.sees_org(org.org_id):
            await self.authority.denied(principal, PERMISSION, "organization",
                                        organization[:80])
            raise NotFound(f"no organization {organization[:80]!r}")
        return org.slug

    async def sample(self, principal: Principal, organization: str | None = None
                     ) -> dict[str, Any]:
        slug = await self._scope(principal, organization)
        families = list(self.registry.collect())
        where = None if slug is None else {"org_id": slug}
        requests = _totals(families, "pki_cert_requests", "status", where)
        revoked = _totals(families, "pki_cert_revocations", "org_id", where)
        body: dict[str, Any] = {
            "sampled_at": self.authority.clock().isoformat().replace("+00:00", "Z"),
            "process": dict(_PROCESS), "organization": slug,
            "issuance": {k: int(requests.get(k, 0)) for k in ISSUANCE_OUTCOMES},
            "revocations": int(sum(revoked.values())), "ocsp": None, "tsa": None}
        if principal.org_id is None and slug is None:
            statuses = _totals(families, "pki_ocsp_responses", "status")
            live = _totals(families, "pki_ocsp_live_answers", "reason")
            miss, uncacheable = int(live.get("miss", 0)), int(live.get("uncacheable", 0))
            hits = max(0, int(statuses.get("successful", 0)) - miss - uncacheable)
            tsa = _totals(families, "pki_tsa_responses", "status")
            body["ocsp"] = {
                "responses": {k: int(v) for k, v in sorted(statuses.items())},
                "cache": {"hit": hits, "miss": miss, "live": uncacheable}}
            body["tsa"] = {"granted": int(tsa.get("granted", 0)),
                           "rejection": int(tsa.get("rejection", 0))}
        return body
