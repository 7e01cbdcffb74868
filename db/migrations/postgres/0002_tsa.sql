-- RFC 3161 time-stamp tokens issued by the TSA (PostgreSQL); see sqlite/0002_tsa.sql.

CREATE TABLE timestamp_tokens (
    serial_hex      TEXT PRIMARY KEY,
    tsa_ca_id       TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    policy_oid      TEXT NOT NULL,
    hash_algorithm  TEXT NOT NULL,
    message_imprint BYTEA NOT NULL,
    gen_time        TIMESTAMPTZ NOT NULL,
    has_nonce       BOOLEAN NOT NULL,
    cert_req        BOOLEAN NOT NULL
);
