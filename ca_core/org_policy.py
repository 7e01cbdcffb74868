"""An organization's issuance policy and isolation level (issue 13), kept in its config
document (``config["policy"]``, ``config["isolation"]``) and enforced by the Authority on
every issuance, whatever the protocol.

Policy fields (all optional; absent or empty means "no limit beyond the profile's"):
``allowed_names`` (DNS suffixes: ``example.org`` allows it and every name below it),
``allowed_ip_ranges`` (CIDR), ``profiles`` (profile names), ``max_validity_days`` and
``idn`` (internationalized names: ``single-script``, the default, ``refuse`` or ``allow``;
see ca_core.idn).

Isolation level, as in the seed schema, says whose principals may READ the organization's
certificates (and their chains) besides its own; acting on them (issue, renew, revoke) and
everything else (tokens, EAB keys, accounts, CAs, audit) never crosses at any level:

- ``strict`` (the default): nothing crosses.
- ``collaborative``: the organizations named in ``config["partners"]`` (slugs) may read
  them. One-way: the partners' own certificates stay theirs unless they name it in turn.
- ``federated``: every other federated organization may read them, and its principals read
  every federated organization's; an organization that is not federated neither shares
  nor sees through the federation.

Only principals with ``cert:read`` itself read across (``cert:read_own`` stays with the
requester's own certificates), and only between active organizations: a disabled one
neither shares nor reads. Partners are stored on any level but count only under
``collaborative`` (so a list can be prepared, and switching to ``strict`` un-shares at once
without losing it). ``readable_org_ids`` is the one rule; ``Authority.readable_orgs``
applies it to organizations read fresh from the store.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ca_core.errors import BadRequest, PolicyViolation, ValidityTooLong
from ca_core.idn import IDN_MODES, check_names
from ca_core.records import Organization

ISOLATION_LEVELS = ("strict", "collaborative", "federated")
ORG_STATUSES = ("active", "disabled")
MAX_PARTNERS = 100


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    allowed_names: tuple[str, ...] = ()
    allowed_ip_ranges: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    max_validity_days: int | None = None
    idn: str = "single-script"  # internationalized names: ca_core.idn

    @classmethod
    def parse(cls, document: Any) -> OrgPolicy:
        """A policy from JSON; BadRequest naming the field that is wrong."""
        if document is None:
            return cls()
        if not isinstance(document, dict):
            raise BadRequest("policy must be an object")
        unknown = set(document) - {"allowed_names", "allowed_ip_ranges", "profiles",
                                   "max_validity_days", "idn"}
        if unknown:
            raise BadRequest(f"unknown policy field(s): {', '.join(sorted(unknown))}")
        names = _strings(document, "allowed_names")
        for name in names:
            if not name or len(name) > 253 or " " in name or name.startswith("*"):
                raise BadRequest(f"policy.allowed_names: not a DNS suffix: {name[:80]!r}")
        ranges = _strings(document, "allowed_ip_ranges")
        for text in ranges:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise BadRequest(f"policy.allowed_ip_ranges: not a CIDR range: {text[:80]!r}"
                                 ) from None
        days = document.get("max_validity_days")
        if days is not None and (not isinstance(days, int) or isinstance(days, bool)
                                 or not 0 < days <= 36500):
            raise BadRequest("policy.max_validity_days must be an integer from 1 to 36500")
        idn_mode = document.get("idn")
        if idn_mode is None:
            idn_mode = "single-script"
        if idn_mode not in IDN_MODES:
            raise BadRequest(f"policy.idn must be one of {', '.join(IDN_MODES)}")
        return cls(tuple(n.lower().strip(".") for n in names), tuple(ranges),
                   _strings(document, "profiles"), days, idn_mode)

    @classmethod
    def of(cls, config: dict[str, Any]) -> OrgPolicy:
        """The stored policy (validated when it was stored)."""
        try:
            return cls.parse(config.get("policy"))
        except BadRequest:
            return cls()

    def to_json(self) -> dict[str, Any]:
        return {"allowed_names": list(self.allowed_names),
                "allowed_ip_ranges": list(self.allowed_ip_ranges),
                "profiles": list(self.profiles), "max_validity_days": self.max_validity_days,
                "idn": self.idn}

    def check(self, profile: str, dns: tuple[str, ...], ips: tuple[str, ...],
              not_before: dt.datetime, not_after: dt.datetime, base: str = "") -> None:
        """PolicyViolation / ValidityTooLong when an issuance leaves the policy. A template
        (``base``: the built-in it narrows) is allowed where its base or its own name is."""
        if self.profiles and profile not in self.profiles and base not in self.profiles:
            raise PolicyViolation(f"the organization's policy does not allow profile {profile}")
        check_names(dns, self.idn)
        if self.allowed_names:
            for name in dns:
                bare = name.lower().removeprefix("*.")
                if not any(bare == s or bare.endswith("." + s) for s in self.allowed_names):
                    raise PolicyViolation(f"the organization's policy does not allow {name}")
        if self.allowed_ip_ranges:
            networks = [ipaddress.ip_network(r, strict=False) for r in self.allowed_ip_ranges]
            for text in ips:
                address = ipaddress.ip_address(text.split("/")[0])
                if not any(address in n for n in networks):
                    raise PolicyViolation(f"the organization's policy does not allow {text}")
        if self.max_validity_days is not None and (
                not_after - not_before > dt.timedelta(days=self.max_validity_days, minutes=5)):
            raise ValidityTooLong(
                f"the organization's policy allows at most {self.max_validity_days} days")


def isolation_of(config: dict[str, Any]) -> str:
    level = config.get("isolation")
    return level if level in ISOLATION_LEVELS else "strict"


def partners_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The partner slugs stored in ``config`` (validated when stored; anything else: none)."""
    value = config.get("partners")
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str))


def parse_partners(value: Any) -> tuple[str, ...]:
    """A partner list from JSON: slugs, each once, in the order given; BadRequest for any
    other shape. Whether each names an active organization is the caller's check."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("partners must be a list of organization slugs")
    if len(value) > MAX_PARTNERS:
        raise BadRequest(f"partners: at most {MAX_PARTNERS} organizations")
    for slug in value:
        if not slug or len(slug) > 100 or not slug.isprintable():
            raise BadRequest(f"partners: not an organization slug: {slug[:80]!r}")
    return tuple(dict.fromkeys(value))


def readable_org_ids(reader_org_id: str, organizations: Iterable[Organization]
                     ) -> frozenset[str]:
    """The organizations whose certificates principals of ``reader_org_id`` (with
    ``cert:read``) may read: their own, and every active one that shares with the reader
    by its isolation level (see the module docstring). ``organizations``: all of them."""
    orgs = list(organizations)
    reader = next((o for o in orgs if o.org_id == reader_org_id), None)
    readable = {reader_org_id}
    if reader is None or reader.status != "active":
        return frozenset(readable)
    reader_federated = isolation_of(reader.config) == "federated"
    for org in orgs:
        if org.org_id == reader_org_id or org.status != "active":
            continue
        level = isolation_of(org.config)
        if (level == "collaborative" and reader.slug in partners_of(org.config)) or \
                (level == "federated" and reader_federated):
            readable.add(org.org_id)
    return frozenset(readable)


def _strings(document: dict[str, Any], name: str) -> tuple[str, ...]:
    value = document.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) \
            or len(value) > 1000:
        raise BadRequest(f"policy.{name} must be a list of strings")
    return tuple(value)
