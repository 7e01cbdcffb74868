"""Who is asking: principals, roles and their permissions (from the seed RBAC matrix).

Roles are scoped to one organization except ``pki_super_admin``. ``*_own`` permissions
limit a service account to certificates it requested itself, ``service:*_self`` to the
service it acts for (``ca_core.services``); ``area:*`` grants every action of an area.
``cert:renew`` follows the seed matrix (cert_manager, service_account's own).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "pki_super_admin": frozenset({
        "ca:*", "cert:request", "cert:read", "cert:revoke", "cert:renew", "organization:*",
        "template:*", "audit:read", "token:create", "service:*", "compliance:*",
    }),
    "pki_admin": frozenset({
        "ca:read", "ca:create_intermediate", "cert:request", "cert:read", "cert:revoke",
        "cert:renew", "template:manage", "audit:read_own_org", "token:create", "service:*",
        "compliance:read",
    }),
    "cert_manager": frozenset({"cert:request", "cert:read", "cert:revoke", "cert:renew",
                               "template:read", "service:read"}),
    # service:read_own (not in the seed): a service reads its own registration back.
    "service_account": frozenset({"cert:request_own", "cert:read_own", "cert:revoke_own",
                                  "cert:renew_own", "service:register_self",
                                  "service:update_self", "service:read_own"}),
    "code_signer": frozenset({"cert:read", "signature:create", "signature:verify"}),
    # template:read: an auditor reviews what the organization's templates allow.
    "auditor": frozenset({"audit:read", "cert:read", "template:read", "service:read",
                          "compliance:read"}),
}

ROLES = tuple(ROLE_PERMISSIONS)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``org_id`` None means every organization."""

    actor_type: str  # api | user | service | system
    actor_id: str
    org_id: str | None
    role: str

    @classmethod
    def system(cls, actor_id: str = "vcc-pki") -> Principal:
        return cls("system", actor_id, None, "pki_super_admin")

    @classmethod
    def enrollee(cls, protocol: str, requester: str, org_id: str) -> Principal:
        """Who an EST or SCEP client is to the Authority: a service account of the
        organization it enrolls in (the role for automated enrollment: ``cert:request_own``),
        so the tenant and profile rules apply to it as to any API caller, and its
        certificates name it (``est:...``, ``scep:...``) as their requester."""
        return cls("service", f"{protocol}:{requester}", org_id, "service_account")

    @property
    def permissions(self) -> frozenset[str]:
        return ROLE_PERMISSIONS.get(self.role, frozenset())

    def can(self, action: str) -> bool:
        """``action`` like ``cert:revoke``; true for the permission, its ``_own`` form or
        its area's ``*``."""
        permissions = self.permissions
        return (action in permissions or f"{action}_own" in permissions
                or f"{action.partition(':')[0]}:*" in permissions)

    def only_own(self, action: str) -> bool:
        return action not in self.permissions and f"{action}_own" in self.permissions

    def requester_scope(self, action: str) -> str | None:
        """The requester a query must be limited to (``*_own`` permissions), or None."""
        return self.actor_id if self.only_own(action) else None

    def sees_org(self, org_id: str) -> bool:
        return self.org_id is None or self.org_id == org_id

    def administers(self, org_id: str) -> bool:
        """An administrator of ``org_id``: the one who configures its enrollment (EST labels
        and secrets, SCEP endpoints and challenges) and decides queued requests."""
        return self.role in ("pki_super_admin", "pki_admin") and self.sees_org(org_id)
