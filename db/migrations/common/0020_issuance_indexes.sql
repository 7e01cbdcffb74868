-- Issue 18: fewer index updates per issued certificate and per audit entry. Each index on
-- certificates and audit_log is written on every issuance; these served no query that
-- another index does not serve as well (checked against every statement in db/, both
-- dialects):
--
-- * idx_certificates_org (org_id) and idx_audit_org (org_id): each is a prefix of
--   idx_certificates_org_created (org_id, created_at, cert_id) and idx_audit_org_seq
--   (org_id, seq), which answer "org_id = ?" (and the foreign key checks) as well.
-- * idx_certificates_revoked and idx_certificates_org_revoked (0018, the lifecycle report's
--   "revoked_at >= ? AND revoked_at < ?"): partial now, over revoked rows only. The
--   report's range implies revoked_at IS NOT NULL, so both planners still use them
--   (SQLite: a comparison on the column implies IS NOT NULL; PostgreSQL: a strict
--   operator does), and an issuance (revoked_at NULL) no longer writes them.
DROP INDEX IF EXISTS idx_certificates_org;
DROP INDEX IF EXISTS idx_audit_org;
DROP INDEX IF EXISTS idx_certificates_revoked;
DROP INDEX IF EXISTS idx_certificates_org_revoked;
CREATE INDEX idx_certificates_revoked ON certificates (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX idx_certificates_org_revoked ON certificates (org_id, revoked_at)
    WHERE revoked_at IS NOT NULL;
