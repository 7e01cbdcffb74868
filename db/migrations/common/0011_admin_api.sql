-- The admin REST API (issue 13): keyset pages over certificates, tokens and the audit log.
--
-- Certificates are listed newest first by (created_at, cert_id) (the cursor is that pair):
-- one index for the super admin's unscoped list, one led by org_id for every scoped list
-- (a tenant's page starts at its own newest row, whatever the other tenants hold). Filters
-- on status and profile are checked on the rows the index walks; expiring_before uses
-- idx_certificates_not_after (0001) when it is the most selective.
CREATE INDEX idx_certificates_created ON certificates (created_at, cert_id);
CREATE INDEX idx_certificates_org_created ON certificates (org_id, created_at, cert_id);

-- Tokens of one organization, oldest first, by (created_at, token_id).
CREATE INDEX idx_api_tokens_org_created ON api_tokens (org_id, created_at, token_id);

-- Audit queries page by seq within an organization, an actor or a resource.
CREATE INDEX idx_audit_org_seq ON audit_log (org_id, seq);
CREATE INDEX idx_audit_actor_seq ON audit_log (actor_id, seq);
CREATE INDEX idx_audit_resource_seq ON audit_log (resource_id, seq);
CREATE INDEX idx_audit_timestamp ON audit_log (timestamp);
