-- OCSP responders, revocation order, CRLs and job locks (SQLite).
-- Statements are separated by ";" at the end of a line: the trigger body stays on one line.

-- Delegated OCSP signing certificates, one or more (renewals) per issuing CA.
CREATE TABLE ocsp_responders (
    responder_id    TEXT PRIMARY KEY,
    ca_id           TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    cert_id         TEXT NOT NULL REFERENCES certificates(cert_id),
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    certificate_der BLOB NOT NULL,
    not_before      TEXT NOT NULL,
    not_after       TEXT NOT NULL,
    created_at      TEXT NOT NULL
);
CREATE INDEX idx_ocsp_responders_ca ON ocsp_responders(ca_id, not_after);

-- Revocation order: every CRL entry gets the next generation, in commit order (writes are
-- serialised). Gateway processes poll "generation > last seen" to learn of revocations made
-- by other processes (the CLI, other replicas) within a fraction of a second.
CREATE TABLE revocation_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  INTEGER NOT NULL
);
ALTER TABLE crl_entries ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
UPDATE crl_entries SET generation = rowid;
INSERT INTO revocation_state (id, generation)
    SELECT 1, COALESCE(MAX(generation), 0) FROM crl_entries;
CREATE INDEX idx_crl_entries_generation ON crl_entries(generation);
CREATE INDEX idx_crl_entries_ca_generation ON crl_entries(ca_id, generation);
CREATE TRIGGER crl_entries_generation AFTER INSERT ON crl_entries BEGIN UPDATE revocation_state SET generation = generation + 1 WHERE id = 1; UPDATE crl_entries SET generation = (SELECT generation FROM revocation_state WHERE id = 1) WHERE rowid = NEW.rowid; END;

-- The newest CRL of each CA (partition 0: full CRL; 1..N: partitioned CRLs).
CREATE TABLE crls (
    ca_id             TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    partition         INTEGER NOT NULL,
    crl_number        INTEGER NOT NULL,
    this_update       TEXT NOT NULL,
    next_update       TEXT NOT NULL,
    source_generation INTEGER NOT NULL,
    entries           INTEGER NOT NULL,
    crl_der           BLOB NOT NULL,
    PRIMARY KEY (ca_id, partition)
);

-- Leases for background jobs that one process at a time should run (CRL generation, the
-- OCSP refresher on a shared cache). expires_at: seconds since the epoch.
CREATE TABLE job_locks (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  REAL NOT NULL
);
