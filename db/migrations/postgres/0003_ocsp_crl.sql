-- OCSP responders, revocation order, CRLs and job locks (PostgreSQL).

-- Delegated OCSP signing certificates, one or more (renewals) per issuing CA.
CREATE TABLE ocsp_responders (
    responder_id    TEXT PRIMARY KEY,
    ca_id           TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    cert_id         TEXT NOT NULL REFERENCES certificates(cert_id),
    key_ref         TEXT NOT NULL,
    key_backend     TEXT NOT NULL,
    certificate_der BYTEA NOT NULL,
    not_before      TIMESTAMPTZ NOT NULL,
    not_after       TIMESTAMPTZ NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_ocsp_responders_ca ON ocsp_responders(ca_id, not_after);

-- Revocation order: every CRL entry gets the next generation from one counter row. The row
-- lock is held until COMMIT, so generations are handed out in commit order and a reader that
-- sees generation g has seen every revocation up to g (a sequence would not guarantee that).
-- Gateway processes poll "generation > last seen" to learn of other processes' revocations.
CREATE TABLE revocation_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
ALTER TABLE crl_entries ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
WITH numbered AS (
    SELECT ca_id, serial_hex,
           row_number() OVER (ORDER BY revoked_at, ca_id, serial_hex) AS n
    FROM crl_entries
)
UPDATE crl_entries c SET generation = numbered.n
    FROM numbered WHERE c.ca_id = numbered.ca_id AND c.serial_hex = numbered.serial_hex;
INSERT INTO revocation_state (id, generation)
    SELECT 1, COALESCE(MAX(generation), 0) FROM crl_entries;
CREATE INDEX idx_crl_entries_generation ON crl_entries(generation);
CREATE INDEX idx_crl_entries_ca_generation ON crl_entries(ca_id, generation);

CREATE FUNCTION vcc_pki_crl_entry_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revocation_state SET generation = generation + 1 WHERE id = 1
        RETURNING generation INTO NEW.generation;
    RETURN NEW;
END
$$;
CREATE TRIGGER crl_entries_generation BEFORE INSERT ON crl_entries
    FOR EACH ROW EXECUTE FUNCTION vcc_pki_crl_entry_generation();

-- The newest CRL of each CA (partition 0: full CRL; 1..N: partitioned CRLs).
CREATE TABLE crls (
    ca_id             TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    partition         INTEGER NOT NULL,
    crl_number        BIGINT NOT NULL,
    this_update       TIMESTAMPTZ NOT NULL,
    next_update       TIMESTAMPTZ NOT NULL,
    source_generation BIGINT NOT NULL,
    entries           INTEGER NOT NULL,
    crl_der           BYTEA NOT NULL,
    PRIMARY KEY (ca_id, partition)
);

-- Leases for background jobs that one process at a time should run (CRL generation, the
-- OCSP refresher on a shared cache). expires_at: seconds since the epoch (server clock).
CREATE TABLE job_locks (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  DOUBLE PRECISION NOT NULL
);
