-- The audit chain head follows every appended entry by a trigger (the same as PostgreSQL's
-- 0008), so the one SQL store appends an entry with one INSERT on both dialects. The head
-- row now exists from the start (seq 0, the genesis hash), as on PostgreSQL; the store
-- reports seq 0 as "no head". A deleted tail still shows: DELETE does not move the head.
INSERT OR IGNORE INTO audit_head (id, seq, audit_hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
CREATE TRIGGER audit_log_moves_head AFTER INSERT ON audit_log BEGIN UPDATE audit_head SET seq = NEW.seq, audit_hash = NEW.audit_hash WHERE id = 1; END;
