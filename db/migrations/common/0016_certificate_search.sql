-- The admin list's subject/SAN search (q). SQLite has no index for a substring LIKE: the
-- search scans the organization's rows there. PostgreSQL's own 0016 adds trigram indexes.
SELECT 1;
