-- EST (RFC 7030): labels (organization, profile, policy), one-time enrollment secrets
-- (stored hashed) and requests waiting for an operator's approval (SQLite).

CREATE TABLE est_labels (
    label       TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    profile     TEXT NOT NULL,
    policy      TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE est_secrets (
    secret_id    TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(org_id),
    label        TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    subject      TEXT,
    expires_at   TEXT NOT NULL,
    used_at      TEXT,
    created_at   TEXT NOT NULL
);

-- cert_id has no foreign key: the row is moved to 'issued' in the same transaction that
-- inserts the certificate, before the insert (a conditional UPDATE decides who issues).
CREATE TABLE est_pending (
    request_id       TEXT PRIMARY KEY,
    label            TEXT NOT NULL,
    org_id           TEXT NOT NULL REFERENCES organizations(org_id),
    csr_der          BLOB NOT NULL,
    csr_fingerprint  TEXT NOT NULL,
    requester        TEXT NOT NULL,
    status           TEXT NOT NULL,
    cert_id          TEXT,
    created_at       TEXT NOT NULL,
    decided_at       TEXT
);
-- The same request (CSR and requester) is one row: its retries find it, whatever its status.
CREATE UNIQUE INDEX idx_est_pending_request ON est_pending(csr_fingerprint, requester);
CREATE INDEX idx_est_pending_status ON est_pending(status, created_at);
