-- Initial schema (PostgreSQL). The same tables as sqlite/0001_init.sql: organizations,
-- certificate authorities, certificates, CRL entries, templates, API tokens, hash-chained
-- audit log. Times are TIMESTAMPTZ (microsecond precision, the same as the audit hash).

CREATE TABLE organizations (
    org_id      TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    config      JSONB NOT NULL DEFAULT '{}',
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE certificate_authorities (
    ca_id           TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    ca_type         TEXT NOT NULL CHECK (ca_type IN ('root', 'intermediate', 'issuing', 'tsa')),
    org_id          TEXT REFERENCES organizations(org_id),
    parent_ca_id    TEXT REFERENCES certificate_authorities(ca_id),
    subject_dn      TEXT NOT NULL,
    serial_hex      TEXT NOT NULL,
    certificate_der BYTEA NOT NULL,
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    key_algorithm   TEXT NOT NULL,
    key_size        INTEGER NOT NULL,
    not_before      TIMESTAMPTZ NOT NULL,
    not_after       TIMESTAMPTZ NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active',
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE certificates (
    cert_id           TEXT PRIMARY KEY,
    issuer_ca_id      TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    org_id            TEXT NOT NULL REFERENCES organizations(org_id),
    serial_hex        TEXT NOT NULL,
    subject_dn        TEXT NOT NULL,
    common_name       TEXT NOT NULL,
    profile           TEXT NOT NULL,
    certificate_der   BYTEA NOT NULL,
    key_algorithm     TEXT NOT NULL,
    key_size          INTEGER NOT NULL,
    san               JSONB NOT NULL DEFAULT '{}',
    not_before        TIMESTAMPTZ NOT NULL,
    not_after         TIMESTAMPTZ NOT NULL,
    requester         TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    revoked_at        TIMESTAMPTZ,
    revocation_reason TEXT,
    invalidity_date   TIMESTAMPTZ,
    created_at        TIMESTAMPTZ NOT NULL,
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
    revoked_at      TIMESTAMPTZ NOT NULL,
    reason          TEXT NOT NULL,
    invalidity_date TIMESTAMPTZ,
    PRIMARY KEY (ca_id, serial_hex)
);

CREATE TABLE certificate_templates (
    slug        TEXT PRIMARY KEY,
    org_id      TEXT REFERENCES organizations(org_id),
    name        TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    definition  JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_tokens (
    token_id    TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);

-- seq is assigned by the writer from audit_head (under its row lock), not by a sequence:
-- a sequence leaves gaps on rollback, and a gap is what the verifier reports as tampering.
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    audit_id      TEXT NOT NULL,  -- random UUID; seq is the key and the chain its proof
    timestamp     TIMESTAMPTZ NOT NULL,
    org_id        TEXT,
    event_type    TEXT NOT NULL,
    category      TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    status        TEXT NOT NULL,
    -- TEXT, not JSONB: the hashed event must read back byte-for-byte (JSONB normalises).
    event_data    TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    audit_hash    TEXT NOT NULL
);
CREATE INDEX idx_audit_org ON audit_log(org_id);

-- The chain head, kept apart from the rows so that a deleted tail is detected. Unlike the
-- SQLite schema the row exists from the start (seq 0, the genesis hash), so every append
-- can lock it with SELECT ... FOR UPDATE; the store reports seq 0 as "no head".
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         BIGINT NOT NULL CHECK (seq >= 0),
    audit_hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, audit_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
