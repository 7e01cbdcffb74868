-- Admin web page sessions in the database (issue 18): what db.sessions.SqlSessions keeps
-- when several serving processes run without Redis, so that a sign-in on one worker holds
-- on every other. Keyed by a hash of the session id; the bearer token sealed under a key
-- derived from the id (ca_core.sessions): the table alone does not let its reader act.
-- forget_at is the idle or absolute end, whichever is first: a row past it is no session,
-- and is deleted by the periodic cleanup (its index).
CREATE TABLE web_sessions (
    session_key TEXT PRIMARY KEY,
    sealed_token {bytes} NOT NULL,
    csrf TEXT NOT NULL,
    created_at {time} NOT NULL,
    last_used {time} NOT NULL,
    expires_at {time} NOT NULL,
    forget_at {time} NOT NULL
);
CREATE INDEX idx_web_sessions_forget_at ON web_sessions (forget_at);
