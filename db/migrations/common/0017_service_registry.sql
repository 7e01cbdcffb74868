-- The service registry (issue 14): the seed's vcc_services and service_registry.
--
-- vcc_services: one row per service of an organization; its slug is unique per
-- organization. active_cert_id links the one certificate the service uses now (at most
-- one: a single column); issuing a new one for the service moves the link, and the old
-- certificate stays valid until it is revoked or expires. created_by is the principal
-- (actor_id) that registered it.
CREATE TABLE vcc_services (
    service_id       TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES organizations(org_id),
    service_name     TEXT NOT NULL,
    service_slug     TEXT NOT NULL,
    service_type     TEXT NOT NULL CHECK (service_type IN (
        'api', 'orchestrator', 'processor', 'ui', 'gateway')),
    endpoints        {json} NOT NULL DEFAULT '[]',
    health_check_url TEXT,
    active_cert_id   TEXT REFERENCES certificates(cert_id),
    version          TEXT,
    environment      TEXT NOT NULL DEFAULT 'production',
    metadata         {json} NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL DEFAULT 'active',
    created_by       TEXT NOT NULL,
    created_at       {time} NOT NULL,
    updated_at       {time} NOT NULL,
    UNIQUE (org_id, service_slug)
);
-- The list of one organization (and all, for a super admin) by (created_at, service_id).
CREATE INDEX idx_vcc_services_org_created ON vcc_services (org_id, created_at, service_id);
CREATE INDEX idx_vcc_services_created ON vcc_services (created_at, service_id);
CREATE INDEX idx_vcc_services_active_cert ON vcc_services (active_cert_id);

-- The seed's service_registry: what a service last reported by heartbeat.
CREATE TABLE service_registry (
    service_id  TEXT PRIMARY KEY REFERENCES vcc_services(service_id),
    last_seen   {time} NOT NULL,
    status      TEXT NOT NULL,
    version     TEXT
);

-- Who acts for a service (the seed's *_self permissions of a service_account): the
-- principal that registered it, and the service account bound to each certificate issued
-- for it. A principal acts for one service at most.
CREATE TABLE vcc_service_principals (
    actor_id    TEXT PRIMARY KEY,
    service_id  TEXT NOT NULL REFERENCES vcc_services(service_id),
    created_at  {time} NOT NULL
);

-- Every certificate issued for a service (the active one and those it superseded), so a
-- certificate without a registered service can be found (compliance reports).
CREATE TABLE vcc_service_certificates (
    cert_id     TEXT PRIMARY KEY REFERENCES certificates(cert_id),
    service_id  TEXT NOT NULL REFERENCES vcc_services(service_id),
    created_at  {time} NOT NULL
);
CREATE INDEX idx_vcc_service_certificates_service ON vcc_service_certificates (service_id);
