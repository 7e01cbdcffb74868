-- RFC 3161 time-stamp tokens issued by the TSA.
-- One row per token, for audit and lookup by serial; the token itself is not kept (the
-- client holds it, and it proves itself by its signature). Serials are 159 random bits,
-- unique across all TSA keys, so the serial alone is the key (clustered on SQLite).

CREATE TABLE timestamp_tokens (
    serial_hex      TEXT PRIMARY KEY,
    tsa_ca_id       TEXT NOT NULL REFERENCES certificate_authorities(ca_id),
    policy_oid      TEXT NOT NULL,
    hash_algorithm  TEXT NOT NULL,
    message_imprint {bytes} NOT NULL,
    gen_time        {time} NOT NULL,
    has_nonce       {bool} NOT NULL,
    cert_req        {bool} NOT NULL
){without_rowid};
