-- After common/0003: generations of the existing CRL entries, the counter, and the trigger
-- that gives each new entry the next generation. The counter row's lock is held until
-- COMMIT, so generations are handed out in commit order and a reader that sees generation g
-- has seen every revocation up to g (a sequence would not guarantee that).
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
