-- Kept in step with the PostgreSQL migration of the same number. SQLite compares TEXT
-- bytewise already and the UNIQUE (serial_hex, issuer_ca_id) index serves the page query of
-- list_certificate_statuses; this index lets it start at the issuer instead.
CREATE INDEX idx_certificates_issuer_serial ON certificates (issuer_ca_id, serial_hex);
