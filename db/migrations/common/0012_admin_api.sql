-- The admin REST API (issue 13): keyset pages over certificates, tokens and the audit log.
--
-- Certificates are listed newest first by (created_at, cert_id) (the cursor is that pair):
-- one index for the super admin's unscoped list, one led by org_id for every scoped list
-- (a tenant's page starts at its own newest row, whatever the other tenants hold). A status
-- filter has its own (a tenant with few revoked certificates would otherwise walk all of
-- its rows), and expiring_before one led by (org_id, not_after). Profile filters are checked
-- on the rows the index walks (profiles are few and common). The subject/SAN substring
-- search (q) is a scan of the tenant's rows: see conformance/bench/api.py for its cost.
CREATE INDEX idx_certificates_created ON certificates (created_at, cert_id);
CREATE INDEX idx_certificates_org_created ON certificates (org_id, created_at, cert_id);
CREATE INDEX idx_certificates_org_status_created
    ON certificates (org_id, status, created_at, cert_id);
CREATE INDEX idx_certificates_org_not_after ON certificates (org_id, not_after);

-- Tokens of one organization, oldest first, by (created_at, token_id).
CREATE INDEX idx_api_tokens_org_created ON api_tokens (org_id, created_at, token_id);

-- Audit queries page by seq within an organization, an actor or a resource.
CREATE INDEX idx_audit_org_seq ON audit_log (org_id, seq);
CREATE INDEX idx_audit_actor_seq ON audit_log (actor_id, seq);
CREATE INDEX idx_audit_resource_seq ON audit_log (resource_id, seq);
CREATE INDEX idx_audit_timestamp ON audit_log (timestamp);
