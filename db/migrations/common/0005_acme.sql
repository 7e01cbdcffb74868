-- ACME (RFC 8555): accounts, External Account Binding keys, orders, authorizations.
-- Challenges live inside their authorization (a JSON list): they change together.

CREATE TABLE acme_eab_keys (
    kid         TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(org_id),
    hmac_key    {bytes} NOT NULL,
    account_id  TEXT,
    created_at  {time} NOT NULL
);

CREATE TABLE acme_accounts (
    account_id      TEXT PRIMARY KEY,
    org_id          TEXT NOT NULL REFERENCES organizations(org_id),
    key_thumbprint  TEXT NOT NULL UNIQUE,
    jwk             {json} NOT NULL,
    status          TEXT NOT NULL,
    contact         {json} NOT NULL DEFAULT '[]',
    tos_agreed      {bool} NOT NULL DEFAULT {false},
    eab_kid         TEXT UNIQUE REFERENCES acme_eab_keys(kid),
    created_at      {time} NOT NULL
);

CREATE TABLE acme_authorizations (
    authz_id          TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES acme_accounts(account_id),
    identifier_type   TEXT NOT NULL,
    identifier_value  TEXT NOT NULL,
    wildcard          {bool} NOT NULL,
    status            TEXT NOT NULL,
    expires           {time} NOT NULL,
    challenges        {json} NOT NULL,
    created_at        {time} NOT NULL
);
CREATE INDEX idx_acme_authz_reuse
    ON acme_authorizations(account_id, identifier_type, identifier_value, wildcard, status);

CREATE TABLE acme_orders (
    order_id     TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES acme_accounts(account_id),
    org_id       TEXT NOT NULL REFERENCES organizations(org_id),
    status       TEXT NOT NULL,
    expires      {time} NOT NULL,
    identifiers  {json} NOT NULL,
    authz_ids    {json} NOT NULL,
    profile      TEXT NOT NULL,
    not_before   {time},
    not_after    {time},
    replaces     TEXT,
    error        {json},
    cert_id      TEXT REFERENCES certificates(cert_id),
    created_at   {time} NOT NULL
);
CREATE INDEX idx_acme_orders_cert ON acme_orders(cert_id);
