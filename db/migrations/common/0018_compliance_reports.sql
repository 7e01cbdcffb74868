-- Compliance reports (issue 14): every generated report, its bytes and their SHA-256.
--
-- The seed's compliance_reports, with what a stored report needs to be checked later:
-- the format, the exact bytes served (content) and their hash (also in the audit event
-- report.generated, so the chain vouches for them). Periods are instants, not DATEs: a
-- period given as dates starts and ends at midnight UTC. The seed's UNIQUE (org_id,
-- report_type, period) is left out: the same period generated again (later, with more
-- data, or in another format) is another report, and both stay on record. org_id NULL: a
-- report over every organization (a super admin's). report_type: the seed's list and
-- crypto_inventory (the issue's second report; not in the seed).
CREATE TABLE compliance_reports (
    report_id           TEXT PRIMARY KEY,
    org_id              TEXT REFERENCES organizations(org_id),
    report_type         TEXT NOT NULL CHECK (report_type IN (
        'dsgvo_art30', 'eu_ai_act', 'bsi_grundschutz', 'soc2', 'iso27001',
        'certificate_lifecycle', 'crypto_inventory')),
    report_period_start {time} NOT NULL,
    report_period_end   {time} NOT NULL,
    report_format       TEXT NOT NULL CHECK (report_format IN ('json', 'csv', 'html')),
    report_data         {json} NOT NULL,
    content             {bytes} NOT NULL,
    content_sha256      TEXT NOT NULL,
    report_status       TEXT NOT NULL DEFAULT 'generated',
    generated_at        {time} NOT NULL,
    generated_by        TEXT,
    file_path           TEXT,
    CHECK (report_period_end > report_period_start)
);
-- Lists page by (generated_at, report_id), scoped by organization or not.
CREATE INDEX idx_compliance_reports_org ON compliance_reports (org_id, generated_at, report_id);
CREATE INDEX idx_compliance_reports_generated ON compliance_reports (generated_at, report_id);

-- The crypto inventory's "last signature" of each key, read from what the store keeps of
-- what it signed: an index lookup each, not a scan of every certificate or token.
CREATE INDEX idx_certificates_issuer_created ON certificates (issuer_ca_id, created_at);
CREATE INDEX idx_timestamp_tokens_tsa_time ON timestamp_tokens (tsa_ca_id, gen_time);
CREATE INDEX idx_code_signatures_cert_signed ON vcc_code_signatures (cert_id, signed_at);
-- The lifecycle report counts certificates issued, revoked and expiring in a period.
CREATE INDEX idx_certificates_org_revoked ON certificates (org_id, revoked_at);
CREATE INDEX idx_certificates_revoked ON certificates (revoked_at);
