-- Cross-certificates: a CA of ours certified by another issuer (a bridge CA, or the old root
-- during a root rollover), with the certificates above it up to that issuer's root. They give
-- relying parties that trust only the other root an alternate chain (ACME rel="alternate").
CREATE TABLE ca_cross_certificates (
    cross_id      TEXT PRIMARY KEY,
    ca_id         TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    fingerprint   TEXT NOT NULL UNIQUE,  -- SHA-256 of the cross-certificate
    chain_pem     TEXT NOT NULL,         -- the cross-certificate, then its issuers (PEM)
    top_issuer    TEXT NOT NULL,         -- RFC 4514 issuer of the last certificate
    not_after     {time} NOT NULL,
    created_at    {time} NOT NULL
);
CREATE INDEX idx_ca_cross_certificates_ca ON ca_cross_certificates(ca_id);
