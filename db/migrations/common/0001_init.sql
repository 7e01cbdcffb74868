-- Initial schema, written once for both dialects (db/migrations/__init__.py renders the
-- type tokens): organizations, certificate authorities, certificates, CRL entries,
-- templates, API tokens, hash-chained audit log. Times keep microseconds, as the audit
-- hash does: UTC text that sorts like the instant on SQLite, TIMESTAMPTZ on PostgreSQL.

CREATE TABLE organizations (
    org_id      TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',
    config      {json} NOT NULL DEFAULT '{}',
    created_at  {time} NOT NULL
);

CREATE TABLE certificate_authorities (
    ca_id           TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    ca_type         TEXT NOT NULL CHECK (ca_type IN ('root', 'intermediate', 'issuing', 'tsa')),
    org_id          TEXT REFERENCES organizations(org_id),
    parent_ca_id    TEXT REFERENCES certificate_authorities(ca_id),
    subject_dn      TEXT NOT NULL,
    serial_hex      TEXT NOT NULL,
    certificate_der {bytes} NOT NULL,
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    key_algorithm   TEXT NOT NULL,
    key_size        INTEGER NOT NULL,
    not_before      {time} NOT NULL,
    not_after       {time} NOT NULL,
    status          TEXT NOT NULL DEFAULT 'active',
    created_at      {time} NOT NULL
);

CREATE TABLE certificates (
    cert_id           TEXT PRIMARY KEY,
    issuer_ca_id      TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    org_id            TEXT NOT NULL REFERENCES organizations(org_id),
    serial_hex        TEXT NOT NULL,
    subject_dn        TEXT NOT NULL,
    common_name       TEXT NOT NULL,
    profile           TEXT NOT NULL,
    certificate_der   {bytes} NOT NULL,
    key_algorithm     TEXT NOT NULL,
    key_size          INTEGER NOT NULL,
    san               {json} NOT NULL DEFAULT '{}',
    not_before        {time} NOT NULL,
    not_after         {time} NOT NULL,
    requester         TEXT NOT NULL,
    status            TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    revoked_at        {time},
    revocation_reason TEXT,
    invalidity_date   {time},
    created_at        {time} NOT NULL,
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
    revoked_at      {time} NOT NULL,
    reason          TEXT NOT NULL,
    invalidity_date {time},
    PRIMARY KEY (ca_id, serial_hex)
);

CREATE TABLE certificate_templates (
    slug        TEXT PRIMARY KEY,
    org_id      TEXT REFERENCES organizations(org_id),
    name        TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    definition  {json} NOT NULL,
    updated_at  {time} NOT NULL
);

CREATE TABLE api_tokens (
    token_id    TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    role        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    name        TEXT NOT NULL,
    created_at  {time} NOT NULL,
    expires_at  {time},
    revoked     {bool} NOT NULL DEFAULT {false}
);

-- seq is assigned by the writer from audit_head (under its row lock), not by a sequence:
-- a sequence leaves gaps on rollback, and a gap is what the verifier reports as tampering.
CREATE TABLE audit_log (
    seq           {bigint} PRIMARY KEY,
    audit_id      TEXT NOT NULL,  -- random UUID; seq is the key and the chain its proof
    timestamp     {time} NOT NULL,
    org_id        TEXT,
    event_type    TEXT NOT NULL,
    category      TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor_type    TEXT NOT NULL,
    actor_id      TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    status        TEXT NOT NULL,
    -- TEXT, not {json}: the hashed event must read back byte-for-byte ({json} normalises).
    event_data    TEXT NOT NULL,
    previous_hash TEXT NOT NULL,
    audit_hash    TEXT NOT NULL
);
CREATE INDEX idx_audit_org ON audit_log(org_id);

-- The chain head, kept apart from the rows so that a deleted tail is detected. The row
-- exists from the start (seq 0, the genesis hash), so every append on PostgreSQL can lock
-- it with SELECT ... FOR UPDATE; the store reports seq 0 as "no head". (SQLite stores made
-- before this file was shared got the row from migration 0008.)
CREATE TABLE audit_head (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    seq         {bigint} NOT NULL CHECK (seq >= 0),
    audit_hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, audit_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
