-- Operator certificate templates (issue 13): named narrowings of a built-in profile, per
-- organization (org_id) or global (org_id NULL). The table had slug as its primary key (one
-- name across all organizations); it is rebuilt so that a name is unique per organization:
-- create the new table, copy, drop, rename (SQLite cannot change a primary key in place,
-- and the same steps serve PostgreSQL). Built-ins keep org_id NULL and base NULL.
--
-- Uniqueness for a NULL org_id (global templates and built-ins) needs an expression:
-- UNIQUE (org_id, slug) treats every NULL as distinct. The same index answers the
-- resolution lookup (the organization's template, else the global one) with
-- COALESCE(org_id, '') IN (?, '') AND slug = ?.
CREATE TABLE certificate_templates_new (
    template_id  TEXT PRIMARY KEY,
    org_id       TEXT REFERENCES organizations(org_id),
    slug         TEXT NOT NULL,
    name         TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    base         TEXT,
    description  TEXT NOT NULL DEFAULT '',
    status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    definition   {json} NOT NULL,
    created_by   TEXT,
    created_at   {time} NOT NULL,
    updated_at   {time} NOT NULL
);

INSERT INTO certificate_templates_new (template_id, org_id, slug, name, purpose, base,
                                       description, status, definition, created_by,
                                       created_at, updated_at)
SELECT COALESCE(org_id, '') || '/' || slug, org_id, slug, name, purpose, NULL, '', 'active',
       definition, NULL, updated_at, updated_at
FROM certificate_templates;

DROP TABLE certificate_templates;
ALTER TABLE certificate_templates_new RENAME TO certificate_templates;

CREATE UNIQUE INDEX uq_certificate_templates_org_slug
    ON certificate_templates ((COALESCE(org_id, '')), slug);
