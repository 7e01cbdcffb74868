-- The OCSP warm-up and refresher page through an issuer's certificates in serial order
-- (list_certificate_statuses: issuer_ca_id = ? AND serial_hex COLLATE "C" > ? ORDER BY
-- serial_hex COLLATE "C"). The UNIQUE (serial_hex, issuer_ca_id) index cannot serve that
-- order, so every page filtered and sorted all of the issuer's rows (PostgreSQL); on SQLite
-- it lets the page start at the issuer.
CREATE INDEX idx_certificates_issuer_serial ON certificates (issuer_ca_id, serial_hex{collate_c});
