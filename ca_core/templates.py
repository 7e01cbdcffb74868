"""Operator certificate templates (issue 13): a named narrowing of a built-in profile.

A template names a built-in profile as its ``base`` and may only take away from it, and
from its organization's policy (``ca_core.org_policy``): key usages, extended key usages,
key types, SAN types and (when the base restricts them) roles are subsets of the base's;
the validities are at most the base's and the policy's maximum; ``require_san`` is at
least the base's. Everything it does not say is the base's. Bases are the built-ins a
front-end may request: not the CA's own (``internal_only``: OCSP responders, SCEP RAs) and
not the TSA's (its holder sets the time relying parties trust; it stays super admin only
and is never re-labelled). A template's name never shadows a built-in.

``narrow`` returns the resolved Profile (under the template's name, ``base`` set), which is
what the store keeps as the definition and what issuance applies; an invalid template is
refused with TemplateInvalid (400), naming the field and the limit it broke.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from ca_core.errors import BadRequest
from ca_core.keys import KeySpec
from ca_core.org_policy import OrgPolicy
from ca_core.principal import ROLES
from ca_core.profiles import (
    BUILTIN_PROFILES,
    EKU_NAMES,
    KEY_USAGE_NAMES,
    SAN_TYPES,
    Profile,
)

BUILTIN_NAMES = frozenset(p.name for p in BUILTIN_PROFILES)
# Built-ins that no template may narrow (see the module docstring).
NOT_BASES = frozenset(p.name for p in BUILTIN_PROFILES if p.internal_only) | {
    "timestamp_authority"}
TEMPLATE_STATUSES = ("active", "disabled")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_LISTS = ("key_usage", "extended_key_usage", "allowed_keys", "san_types", "allowed_roles")
SPEC_FIELDS = frozenset({"base", "description", "max_validity_days", "default_validity_days",
                    "require_san", "status", *_LISTS})
MAX_DESCRIPTION = 500


class TemplateInvalid(BadRequest):
    """A template that does not narrow its base or its organization's policy."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """What an operator asks for (JSON, ``--from FILE``, CLI options); None: the base's."""

    base: str | None = None
    description: str | None = None
    key_usage: tuple[str, ...] | None = None
    extended_key_usage: tuple[str, ...] | None = None
    max_validity_days: int | None = None
    default_validity_days: int | None = None
    allowed_keys: tuple[str, ...] | None = None
    san_types: tuple[str, ...] | None = None
    require_san: bool | None = None
    allowed_roles: tuple[str, ...] | None = None
    status: str | None = None

    @classmethod
    def parse(cls, document: Any, *, ignore: frozenset[str] = frozenset()) -> TemplateSpec:
        """From a JSON object; TemplateInvalid naming the field that is wrong. Keys in
        ``ignore`` (a request's ``name``, ``organization``) are the caller's."""
        if not isinstance(document, dict):
            raise BadRequest("a template must be a JSON object")
        unknown = set(document) - SPEC_FIELDS - ignore
        if unknown:
            raise TemplateInvalid(sorted(unknown)[0][:40],
                                  f"unknown field; use {', '.join(sorted(SPEC_FIELDS))}")
        texts = {name: _text(document, name) for name in ("base", "description", "status")}
        days = {name: _integer(document, name)
                for name in ("max_validity_days", "default_validity_days")}
        lists = {name: _strings(document, name) for name in _LISTS}
        require_san = document.get("require_san")
        if require_san is not None and not isinstance(require_san, bool):
            raise TemplateInvalid("require_san", "must be true or false")
        return cls(base=texts["base"], description=texts["description"],
                   key_usage=lists["key_usage"],
                   extended_key_usage=lists["extended_key_usage"],
                   max_validity_days=days["max_validity_days"],
                   default_validity_days=days["default_validity_days"],
                   allowed_keys=lists["allowed_keys"], san_types=lists["san_types"],
                   require_san=require_san, allowed_roles=lists["allowed_roles"],
                   status=texts["status"])

    def over(self, current: Profile) -> TemplateSpec:
        """This spec with what it leaves out taken from an existing template (an update
        changes what it names and keeps the rest)."""
        def keep(value: Any, current_value: Any) -> Any:
            return current_value if value is None else value
        return TemplateSpec(
            base=keep(self.base, current.base),
            description=keep(self.description, current.description),
            key_usage=keep(self.key_usage, current.key_usage),
            extended_key_usage=keep(self.extended_key_usage, current.extended_key_usage),
            max_validity_days=keep(self.max_validity_days, current.max_validity_days),
            # a new maximum alone pulls the kept default down with it
            default_validity_days=keep(self.default_validity_days, min(
                current.default_validity_days,
                keep(self.max_validity_days, current.max_validity_days))),
            allowed_keys=keep(self.allowed_keys, current.allowed_keys),
            san_types=keep(self.san_types, current.san_types),
            require_san=keep(self.require_san, current.require_san),
            allowed_roles=keep(self.allowed_roles, current.allowed_roles),
            status=self.status)


def _text(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is not None and not isinstance(value, str):
        raise TemplateInvalid(name, "must be a string")
    return value


def _integer(document: dict[str, Any], name: str) -> int | None:
    value = document.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise TemplateInvalid(name, "must be an integer")
    return value


def _strings(document: dict[str, Any], name: str) -> tuple[str, ...] | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > 32 \
            or not all(isinstance(v, str) for v in value):
        raise TemplateInvalid(name, "must be a list of strings")
    return tuple(value)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TemplateInvalid("name", "1 to 63 lowercase letters, digits, '_', '.' or '-', "
                              "starting with a letter or digit")
    if name in BUILTIN_NAMES:
        raise TemplateInvalid("name", f"{name} is a built-in profile; a template may not "
                              "shadow it")
    return name


def base_profile(name: str | None) -> Profile:
    """The built-in a template may narrow."""
    if not name:
        raise TemplateInvalid("base", "required: the built-in profile the template narrows")
    found = next((p for p in BUILTIN_PROFILES if p.name == name), None)
    allowed = sorted(BUILTIN_NAMES - NOT_BASES)
    if found is None or name in NOT_BASES:
        raise TemplateInvalid("base", f"{name[:64]!r} cannot be a base; use one of "
                              f"{', '.join(allowed)}")
    return found


def _subset(field: str, asked: tuple[str, ...] | None, limit: tuple[str, ...],
            known: tuple[str, ...] | frozenset[str] | None = None,
            non_empty: bool = True) -> tuple[str, ...]:
    if asked is None:
        return limit
    if known is not None:
        unknown = [v for v in asked if v not in known]
        if unknown:
            raise TemplateInvalid(field, f"unknown {unknown[0][:40]!r}")
    wider = [v for v in asked if v not in limit]
    if wider:
        raise TemplateInvalid(field, f"{wider[0]!r} is not in the base's "
                              f"[{', '.join(limit)}]")
    if non_empty and not asked:
        raise TemplateInvalid(field, f"must keep at least one of [{', '.join(limit)}]")
    return tuple(dict.fromkeys(asked))  # keep the order given, drop repeats


def narrow(name: str, spec: TemplateSpec, policy: OrgPolicy) -> Profile:
    """The Profile of template ``name``: ``spec`` applied to its base within ``policy``.
    TemplateInvalid (400) names the first field that widens anything."""
    check_name(name)
    base = base_profile(spec.base)
    if policy.profiles and base.name not in policy.profiles:
        raise TemplateInvalid("base", f"the organization's policy allows only the profiles "
                              f"[{', '.join(policy.profiles)}]")
    description = spec.description if spec.description is not None else base.description
    if len(description) > MAX_DESCRIPTION:
        raise TemplateInvalid("description", f"at most {MAX_DESCRIPTION} characters")
    if spec.status is not None and spec.status not in TEMPLATE_STATUSES:
        raise TemplateInvalid("status", f"one of {', '.join(TEMPLATE_STATUSES)}")
    key_usage = _subset("key_usage", spec.key_usage, base.key_usage, KEY_USAGE_NAMES)
    # An empty EKU list would mean "no extension": any purpose, wider than the base's.
    eku = _subset("extended_key_usage", spec.extended_key_usage, base.extended_key_usage,
                  tuple(EKU_NAMES), non_empty=bool(base.extended_key_usage))
    for key in spec.allowed_keys or ():
        try:
            KeySpec.parse(key)
        except ValueError:
            raise TemplateInvalid("allowed_keys", f"unknown key type {key[:40]!r}") from None
    keys = _subset("allowed_keys", spec.allowed_keys, base.allowed_keys)
    san_types = _subset("san_types", spec.san_types, base.san_types, SAN_TYPES,
                        non_empty=False)
    if spec.require_san is False and base.require_san:
        raise TemplateInvalid("require_san", f"the base {base.name} requires a SAN")
    require_san = base.require_san if spec.require_san is None else spec.require_san
    if require_san and not san_types:
        raise TemplateInvalid("require_san", "a SAN is required but no san_types are left")
    if spec.allowed_roles is not None and base.allowed_roles:
        roles = _subset("allowed_roles", spec.allowed_roles, base.allowed_roles, ROLES)
    elif spec.allowed_roles is not None:
        # The base lets every requesting role: any set of roles narrows it; empty keeps it.
        roles = _subset("allowed_roles", spec.allowed_roles, ROLES, ROLES, non_empty=False)
    else:
        roles = base.allowed_roles
    limit, limit_of = base.max_validity_days, f"the base {base.name}'s maximum"
    if policy.max_validity_days is not None and policy.max_validity_days < limit:
        limit, limit_of = policy.max_validity_days, "the organization's policy maximum"
    max_days = spec.max_validity_days if spec.max_validity_days is not None else limit
    if not 1 <= max_days <= limit:
        raise TemplateInvalid("max_validity_days", f"must be from 1 to {limit} "
                              f"({limit_of})")
    default_days = spec.default_validity_days
    if default_days is None:
        default_days = min(base.default_validity_days, max_days)
    elif not 1 <= default_days <= max_days:
        raise TemplateInvalid("default_validity_days",
                              f"must be from 1 to {max_days} (max_validity_days)")
    profile = Profile(
        name=name, description=description, key_usage=key_usage, extended_key_usage=eku,
        max_validity_days=max_days, default_validity_days=default_days, allowed_keys=keys,
        san_types=san_types, require_san=require_san, eku_critical=base.eku_critical,
        ocsp_no_check=base.ocsp_no_check, internal_only=False, allowed_roles=roles,
        base=base.name)
    profile.validate()
    return profile


@dataclass(frozen=True, slots=True)
class Template:
    """A template as the AdminService shows it: a built-in, or an operator's."""

    profile: Profile
    org_id: str | None  # None: global (every organization), or a built-in
    builtin: bool
    status: str = "active"
    template_id: str = ""
    created_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None
