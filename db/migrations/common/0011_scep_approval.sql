-- SCEP (RFC 8894) per endpoint (organization and profile): manual approval and a static
-- challenge password (stored as a salted scrypt hash; VCC_PKI_SCEP_CHALLENGE still sets
-- the default endpoint's). Transactions also remember what waits for an operator
-- (PENDING, then CertPoll) and what failed (the same request gets the same FAILURE).

CREATE TABLE scep_endpoints (
    org_id            TEXT NOT NULL REFERENCES organizations(org_id),
    profile           TEXT NOT NULL,
    require_approval  {bool} NOT NULL DEFAULT {false},
    secret_hash       TEXT,
    updated_at        {time} NOT NULL,
    PRIMARY KEY (org_id, profile)
);

-- status: success | pending | rejected | failure. A pending row keeps the PKCS#10 and the
-- endpoint's profile, so that an approval issues exactly what was asked for.
ALTER TABLE scep_transactions ADD COLUMN profile TEXT;
ALTER TABLE scep_transactions ADD COLUMN csr_der {bytes};
ALTER TABLE scep_transactions ADD COLUMN requester TEXT;
ALTER TABLE scep_transactions ADD COLUMN decided_at {time};
CREATE INDEX idx_scep_transactions_status ON scep_transactions(status, created_at);
