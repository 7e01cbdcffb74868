-- RFC 3161 time-stamp tokens issued by the TSA (SQLite).
-- One row per token, for audit and lookup by serial; the token itself is not kept (the
-- client holds it, and it proves itself by its signature). Serials are 159 random bits,
-- unique across all TSA keys, so the serial alone is the key (clustered: WITHOUT ROWID).

CREATE TABLE timestamp_tokens (
    serial_hex      TEXT PRIMARY KEY,
    tsa_ca_id       TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    policy_oid      TEXT NOT NULL,
    hash_algorithm  TEXT NOT NULL,
    message_imprint BLOB NOT NULL,
    gen_time        TEXT NOT NULL,
    has_nonce       INTEGER NOT NULL,
    cert_req        INTEGER NOT NULL
) WITHOUT ROWID;
