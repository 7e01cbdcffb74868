-- Partitioned CRLs (RFC 5280 5.2.5): the partition of a certificate is fixed when it is
-- issued (it is named in the certificate's CRL distribution point) and copied into its CRL
-- entry. 0: the full CRL only.
ALTER TABLE certificates ADD COLUMN crl_partition INTEGER NOT NULL DEFAULT 0;
ALTER TABLE crl_entries ADD COLUMN crl_partition INTEGER NOT NULL DEFAULT 0;
CREATE INDEX idx_crl_entries_ca_partition ON crl_entries(ca_id, crl_partition);
