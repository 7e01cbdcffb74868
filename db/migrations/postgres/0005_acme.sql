-- ACME (RFC 8555): accounts, External Account Binding keys, orders, authorizations (PostgreSQL).
-- Challenges live inside their authorization (a JSON list): they change together.

CREATE TABLE acme_eab_keys (
    kid         TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    hmac_key    BYTEA NOT NULL,
    account_id  TEXT,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE acme_accounts (
    account_id      TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations(org_id),
    key_thumbprint  TEXT NOT NULL UNIQUE,
    jwk             JSONB NOT NULL,
    status          TEXT NOT NULL,
    contact         JSONB NOT NULL DEFAULT '[]',
    tos_agreed      BOOLEAN NOT NULL DEFAULT FALSE,
    eab_kid         TEXT UNIQUE REFERENCES acme_eab_keys(kid),
    created_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE acme_authorizations (
    authz_id          TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES acme_accounts(account_id),
    identifier_type   TEXT NOT NULL,
    identifier_value  TEXT NOT NULL,
    wildcard          BOOLEAN NOT NULL,
    status            TEXT NOT NULL,
    expires           TIMESTAMPTZ NOT NULL,
    challenges        JSONB NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_acme_authz_reuse
    ON acme_authorizations(account_id, identifier_type, identifier_value, wildcard, status);

CREATE TABLE acme_orders (
    order_id     TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES acme_accounts(account_id),
    org_id       TEXT NOT NULL REFERENCES organizations(org_id),
    status       TEXT NOT NULL,
    expires      TIMESTAMPTZ NOT NULL,
    identifiers  JSONB NOT NULL,
    authz_ids    JSONB NOT NULL,
    profile      TEXT NOT NULL,
    not_before   TIMESTAMPTZ,
    not_after    TIMESTAMPTZ,
    replaces     TEXT,
    error        JSONB,
    cert_id      TEXT REFERENCES certificates(cert_id),
    created_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_acme_orders_cert ON acme_orders(cert_id);
