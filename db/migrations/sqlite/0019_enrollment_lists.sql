-- Issue 17: the admin lists of EST secrets, SCEP challenges and both approval queues page
-- by (created_at, id), scoped by organization or not (ca_core.enrollment_admin). Indexes
-- only, so in each dialect's folder (the same text in both): the data shape, and so the
-- backup schema version (db.backup), stays that of the common migrations.
CREATE INDEX idx_est_secrets_org ON est_secrets (org_id, created_at, secret_id);
CREATE INDEX idx_est_secrets_created ON est_secrets (created_at, secret_id);
CREATE INDEX idx_scep_challenges_org ON scep_challenges (org_id, created_at, challenge_id);
CREATE INDEX idx_scep_challenges_created ON scep_challenges (created_at, challenge_id);
CREATE INDEX idx_est_pending_org ON est_pending (org_id, status, created_at, request_id);
CREATE INDEX idx_scep_transactions_org ON scep_transactions
    (org_id, status, created_at, transaction_id);
