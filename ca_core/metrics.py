"""Prometheus metrics of the CA core, named as in the seed architecture (pki_*)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CERT_REQUESTS_TOTAL = Counter(
    "pki_cert_requests_total", "Total certificate requests", ["org_id", "purpose", "status"]
)
CERT_ISSUANCE_DURATION = Histogram(
    "pki_cert_issuance_duration_seconds",
    "Certificate issuance duration",
    ["org_id", "purpose"],
    # Finer than the seed's 0.1 s floor: a software-key issuance takes about a millisecond.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0),
)
ACTIVE_CERTIFICATES = Gauge(
    "pki_active_certificates", "Number of active certificates", ["org_id", "purpose"]
)
CA_SIGNING_OPERATIONS = Counter(
    "pki_ca_signing_operations_total",
    "Total CA signing operations",
    ["ca_id", "operation_type", "status"],
)
CA_KEY_USAGE = Counter("pki_ca_key_usage_total", "CA key usage counter", ["ca_id", "hsm_backed"])
CERT_REVOCATIONS_TOTAL = Counter(
    "pki_cert_revocations_total", "Certificates revoked", ["org_id", "reason"]
)
# Certificates of registered services ending within 7, 30 or 90 days (not yet ended), by
# organization (slug) and service (slug): ServiceRegistry.expiring, the query of
# `vcc-pki service renew --due`; refreshed with pki_active_certificates.
CERTIFICATES_EXPIRING = Gauge(
    "pki_certificates_expiring", "Service certificates ending within the given days",
    ["organization", "service", "days"]
)

# Status gauges for the alert rules in deploy/prometheus (issue 15). The seed's per
# certificate pki_cert_expiry_days would be one series per certificate; these are one per CA
# or per (organization, profile), as pki_active_certificates. gateway.server refreshes them
# from the store once a minute.
CA_NOT_AFTER = Gauge(
    "pki_ca_not_after_timestamp_seconds", "notAfter of each CA certificate (Unix time)",
    ["ca", "ca_type", "status"])
CRL_THIS_UPDATE = Gauge(
    "pki_crl_this_update_timestamp_seconds", "thisUpdate of the newest CRL (Unix time)",
    ["ca", "partition"])
CRL_NEXT_UPDATE = Gauge(
    "pki_crl_next_update_timestamp_seconds", "nextUpdate of the newest CRL (Unix time)",
    ["ca", "partition"])
ACTIVE_CERTIFICATES_EXPIRING = Gauge(
    "pki_active_certificates_expiring",
    "Active certificates whose notAfter is within 30 days", ["org_id", "purpose"])
# 1: the last full verification of the hash-chained audit log found it intact; 0: broken.
AUDIT_CHAIN_INTACT = Gauge("pki_audit_chain_intact", "Audit chain intact at the last check")
AUDIT_CHAIN_CHECKED = Gauge(
    "pki_audit_chain_last_check_timestamp_seconds", "When the audit chain was last verified")
# OCSP answers signed live rather than served from the response cache (issue 17, the web
# page's hit ratio): "miss" for a cacheable request (one CertID, no nonce) the cache could
# not answer, "uncacheable" for a request no cache can answer (a nonce, several CertIDs).
# Cache hits are not counted here, to keep the hot path at one counter (the responses'):
# hits = pki_ocsp_responses_total{status="successful"} - these (exact: a live answer is
# counted here once it is made, so one that fails counts in neither).
OCSP_LIVE_ANSWERS = Counter(
    "pki_ocsp_live_answers_total", "OCSP answers signed live, by why", ["reason"])
