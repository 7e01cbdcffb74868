-- After common/0003: generations of the existing CRL entries (their insertion order), the
-- counter, and the trigger that gives each new entry the next generation. Statements are
-- separated by ";" at the end of a line: the trigger body stays on one line.
UPDATE crl_entries SET generation = rowid;
INSERT INTO revocation_state (id, generation)
    SELECT 1, COALESCE(MAX(generation), 0) FROM crl_entries;
CREATE INDEX idx_crl_entries_generation ON crl_entries(generation);
CREATE INDEX idx_crl_entries_ca_generation ON crl_entries(ca_id, generation);
CREATE TRIGGER crl_entries_generation AFTER INSERT ON crl_entries BEGIN UPDATE revocation_state SET generation = generation + 1 WHERE id = 1; UPDATE crl_entries SET generation = (SELECT generation FROM revocation_state WHERE id = 1) WHERE rowid = NEW.rowid; END;
