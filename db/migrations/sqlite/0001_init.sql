-- Initial schema (SQLite). Adapted from the seed schema: organizations, certificate
-- authorities, certificates, CRL entries, templates, API tokens, hash-chained audit log.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (sorts like the instant it names).

CREATE TABLE organizations (
    org_id      TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    config      TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL
);

CREATE TABLE certificate_authorities (
    ca_id           TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    ca_type         TEXT NOT NULL CHECK (ca_type IN ('root', 'intermediate', 'issuing', 'tsa')),
    org_id          TEXT REFERENCES organizations(org_id),
    parent_ca_id    TEXT REFERENCES certificate_authorities(ca_id),
    subject_dn      TEXT NOT NULL,
    serial_hex      TEXT NOT NULL,
    certificate_der BLOB NOT NULL,
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    key_algorithm   TEXT NOT NULL,
    key_size        INTEGER NOT NULL,
    not_before      TEXT NOT NULL,
    not_after       TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active',
    created_at      TEXT NOT NULL
);

CREATE TABLE certificates (
    cert_id           TEXT PRIMARY KEY,
    issuer_ca_id      TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    org_id            TEXT NOT NULL REFERENCES organizations(org_id),
    serial_hex        TEXT NOT NULL,
    subject_dn        TEXT NOT NULL,
    common_name       TEXT NOT NULL,
    profile           TEXT NOT NULL,
    certificate_der   BLOB NOT NULL,
    key_algorithm     TEXT NOT NULL,
    key_size          INTEGER NOT NULL,
    san               TEXT NOT NULL DEFAULT '{}',
    not_before        TEXT NOT NULL,
    not_after         TEXT NOT NULL,
    requester         TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    revoked_at        TEXT,
    revocation_reason TEXT,
    invalidity_date   TEXT,
    created_at        TEXT NOT NULL,
    -- Serial first: the same index answers lookups by serial alone (OCSP, revocation).
    UNIQUE (serial_hex, issuer_ca_id),
    CHECK (not_after > not_before)
);
CREATE INDEX idx_certificates_org ON certificates(org_id);
CREATE INDEX idx_certificates_not_after ON certificates(not_after);

CREATE TABLE crl_entries (
    ca_id           TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    serial_hex      TEXT NOT NULL,
    cert_id         TEXT NOT NULL REFERENCES certificates(cert_id),
    revoked_at      TEXT NOT NULL,
    reason          TEXT NOT NULL,
    invalidity_date TEXT,
    PRIMARY KEY (ca_id, serial_hex)
);

CREATE TABLE certificate_templates (
    slug        TEXT PRIMARY KEY,
    org_id      TEXT REFERENCES organizations(org_id),
    name        TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    definition  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE api_tokens (
    token_id    TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT,
    revoked     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE audit_log (
    seq           INTEGER PRIMARY KEY,
    audit_id      TEXT NOT NULL,  -- random UUID; seq is the key and the chain its proof
    timestamp     TEXT NOT NULL,
    org_id        TEXT,
    event_type    TEXT NOT NULL,
    category      TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    status        TEXT NOT NULL,
    event_data    TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    audit_hash    TEXT NOT NULL
);
CREATE INDEX idx_audit_org ON audit_log(org_id);

-- The chain head, kept apart from the rows so that a deleted tail is detected.
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         INTEGER NOT NULL,
    audit_hash  TEXT NOT NULL
);
