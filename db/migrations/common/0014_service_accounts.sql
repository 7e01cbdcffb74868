-- Service accounts (issue 13): a named, organization-scoped credential pinned to a client
-- certificate by its SHA-256 fingerprint (of the DER), so it works for certificates of any
-- CA. One row is one binding; a service with several certificates has several bindings.
-- The certificate's subject, issuer, serial and notAfter are kept for operators to read;
-- authentication checks the presented certificate itself.
CREATE TABLE service_accounts (
    account_id   TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(org_id),
    role         TEXT NOT NULL,
    name         TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,
    subject_dn   TEXT NOT NULL,
    issuer_dn    TEXT NOT NULL,
    serial_hex   TEXT NOT NULL,
    not_after    {time} NOT NULL,
    created_at   {time} NOT NULL,
    revoked      {bool} NOT NULL DEFAULT {false}
);

-- A certificate maps to at most one live binding (one principal): the lookup of every
-- mTLS request, and the rule that makes a second binding of it a conflict.
CREATE UNIQUE INDEX idx_service_accounts_live_fingerprint
    ON service_accounts (fingerprint) WHERE revoked = {false};
-- Bindings of one organization, oldest first, by (created_at, account_id).
CREATE INDEX idx_service_accounts_org_created
    ON service_accounts (org_id, created_at, account_id);
-- The unscoped (super admin) list.
CREATE INDEX idx_service_accounts_created ON service_accounts (created_at, account_id);
