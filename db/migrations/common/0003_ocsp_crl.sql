-- OCSP responders, revocation order, CRLs and job locks. The tables are shared; how each
-- CRL entry gets its generation (a backfill and a trigger) is each dialect's 0003.

-- Delegated OCSP signing certificates, one or more (renewals) per issuing CA.
CREATE TABLE ocsp_responders (
    responder_id    TEXT PRIMARY KEY,
    ca_id           TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    cert_id         TEXT NOT NULL REFERENCES certificates(cert_id),
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    certificate_der {bytes} NOT NULL,
    not_before      {time} NOT NULL,
    not_after       {time} NOT NULL,
    created_at      {time} NOT NULL
);
CREATE INDEX idx_ocsp_responders_ca ON ocsp_responders(ca_id, not_after);

-- Revocation order: every CRL entry gets the next generation from one counter row, in
-- commit order (writes are serialised on it). Gateway processes poll "generation > last
-- seen" to learn of revocations made by other processes (the CLI, other replicas).
CREATE TABLE revocation_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  {bigint} NOT NULL
);
ALTER TABLE crl_entries ADD COLUMN generation {bigint} NOT NULL DEFAULT 0;

-- The newest CRL of each CA (partition 0: full CRL; 1..N: partitioned CRLs).
CREATE TABLE crls (
    ca_id             TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    partition         INTEGER NOT NULL,
    crl_number        {bigint} NOT NULL,
    this_update       {time} NOT NULL,
    next_update       {time} NOT NULL,
    source_generation {bigint} NOT NULL,
    entries           INTEGER NOT NULL,
    crl_der           {bytes} NOT NULL,
    PRIMARY KEY (ca_id, partition)
);

-- Leases for background jobs that one process at a time should run (CRL generation, the
-- OCSP refresher on a shared cache). expires_at: seconds since the epoch (database clock).
CREATE TABLE job_locks (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  {double} NOT NULL
);
