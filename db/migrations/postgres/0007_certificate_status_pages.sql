-- The OCSP warm-up and refresher page through an issuer's certificates in serial order
-- (list_certificate_statuses: issuer_ca_id = $1 AND serial_hex COLLATE "C" > $2 ORDER BY
-- serial_hex COLLATE "C"). The UNIQUE (serial_hex, issuer_ca_id) index cannot serve that
-- order, so every page filtered and sorted all of the issuer's rows.
CREATE INDEX idx_certificates_issuer_serial ON certificates (issuer_ca_id, serial_hex COLLATE "C");
