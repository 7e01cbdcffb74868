-- SCEP (RFC 8894): the RA certificate of each issuing CA (its key in the CA's key backend),
-- one-time challenge passwords (stored hashed) and transactions; written once for both dialects.

CREATE TABLE scep_ra_certificates (
    ra_id            TEXT PRIMARY KEY,
    ca_id            TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    cert_id          TEXT NOT NULL REFERENCES certificates(cert_id),
    key_ref          TEXT NOT NULL,
    key_backend      TEXT NOT NULL,
    certificate_der  {bytes} NOT NULL,
    not_before       {time} NOT NULL,
    not_after        {time} NOT NULL,
    created_at       {time} NOT NULL
);
CREATE INDEX idx_scep_ra_ca ON scep_ra_certificates(ca_id, not_after);

-- The client sends only the password: a challenge is found by its hash.
CREATE TABLE scep_challenges (
    challenge_id  TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL REFERENCES organizations(org_id),
    profile       TEXT NOT NULL,
    secret_hash   TEXT NOT NULL UNIQUE,
    expires_at    {time} NOT NULL,
    used_at       {time},
    created_at    {time} NOT NULL
);

-- One row per transactionID (RFC 8894 3.2.1.1), bound to the key that signed it: the same
-- request again gets the same answer, the same transactionID from another key is refused.
-- cert_id has no foreign key: the row is written in the certificate's own transaction.
CREATE TABLE scep_transactions (
    transaction_id       TEXT PRIMARY KEY,
    key_fingerprint      TEXT NOT NULL,
    request_fingerprint  TEXT NOT NULL,
    org_id               TEXT NOT NULL REFERENCES organizations(org_id),
    status               TEXT NOT NULL,
    cert_id              TEXT,
    fail_info            TEXT,
    created_at           {time} NOT NULL,
    updated_at           {time} NOT NULL
);
