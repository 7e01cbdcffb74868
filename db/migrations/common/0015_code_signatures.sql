-- Code signing (issue 14): each organization's code-signing key and the signatures it made.
--
-- code_signers: one row per code-signing key of an organization. Its certificate is an
-- ordinary certificates row (profile code_signing, issued by the organization's issuing CA),
-- so it is listed, revoked and published in CRLs and OCSP like any other. The key lives in
-- the key backend (key_ref). The newest row valid now signs; a renewal adds a row.
CREATE TABLE code_signers (
    signer_id    TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(org_id),
    cert_id      TEXT NOT NULL UNIQUE REFERENCES certificates(cert_id),
    key_ref      TEXT NOT NULL,
    key_backend  TEXT NOT NULL,
    not_before   {time} NOT NULL,
    not_after    {time} NOT NULL,
    created_at   {time} NOT NULL
);
CREATE INDEX idx_code_signers_org ON code_signers (org_id, not_after);

-- The seed's vcc_code_signatures, less what has no table yet (service_id: the service
-- registry comes later, so a plain column). artifact_path is the artifact's name as the
-- signer gave it. One signature per (artifact_hash, cert_id), as the seed says: signing the
-- same artifact with the same certificate again answers the stored signature.
CREATE TABLE vcc_code_signatures (
    signature_id           TEXT PRIMARY KEY,
    cert_id                TEXT NOT NULL REFERENCES certificates(cert_id),
    service_id             TEXT,
    org_id                 TEXT NOT NULL REFERENCES organizations(org_id),
    artifact_type          TEXT NOT NULL CHECK (artifact_type IN (
        'python_package', 'lora_adapter', 'pipeline_config',
        'ui_bundle', 'docker_image', 'helm_chart')),
    artifact_path          TEXT NOT NULL,
    artifact_hash          TEXT NOT NULL,
    hash_algorithm         TEXT NOT NULL DEFAULT 'sha256'
        CHECK (hash_algorithm IN ('sha256', 'sha512')),
    signature_data         {bytes} NOT NULL,
    signature_algorithm    TEXT NOT NULL,
    timestamp_token        {bytes},
    timestamp_authority_id TEXT REFERENCES certificate_authorities(ca_id),
    vcc_metadata           {json} NOT NULL DEFAULT '{}',
    signed_at              {time} NOT NULL,
    verified_count         INTEGER NOT NULL DEFAULT 0,
    last_verified_at       {time},
    created_at             {time} NOT NULL,
    UNIQUE (artifact_hash, cert_id)
);
CREATE INDEX idx_code_signatures_org_created ON vcc_code_signatures (org_id, created_at);
