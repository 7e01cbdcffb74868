-- The admin list's subject/SAN search (q: a case-insensitive substring, LOWER(...) LIKE
-- '%text%') through a trigram index (pg_trgm, in PostgreSQL's contrib and trusted since 13:
-- a database owner may create it). 0012 left it a scan of the tenant's rows: 166/276 ms
-- p50/p99 over 1,000,000 certificates (conformance/bench/api.py). Without the extension (a
-- role that may not create it, a server without contrib) the search keeps working as a
-- scan; an administrator can run CREATE EXTENSION pg_trgm and this index's statement later.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
    RAISE NOTICE 'pg_trgm is not available: the certificate search (q) scans';
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
        -- the expression SqlStore.list_certificates searches: subject and SAN in one
        CREATE INDEX idx_certificates_search_trgm ON certificates
            USING gin ((LOWER(subject_dn || ' ' || CAST(san AS TEXT))) gin_trgm_ops);
    END IF;
END
$$;
