-- The audit chain head follows every appended entry by a trigger (the same as SQLite's
-- 0008), so the one SQL store appends an entry with one INSERT on both dialects (it was a
-- WITH ... INSERT ... UPDATE statement here). The writer still locks the head first
-- (SELECT ... FOR UPDATE) and computes seq and hash from it; the trigger only records them.
CREATE FUNCTION vcc_pki_audit_head_follows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audit_head SET seq = NEW.seq, audit_hash = NEW.audit_hash WHERE id = 1;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_log_moves_head AFTER INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION vcc_pki_audit_head_follows();
