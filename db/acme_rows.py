"""JSON forms of the ACME records' nested parts, shared by both stores."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from ca_core.records import AcmeChallenge


def challenges_to_json(challenges: Sequence[AcmeChallenge]) -> list[dict[str, Any]]:
    return [
        {"type": c.type, "token": c.token, "status": c.status,
         "validated": None if c.validated is None else c.validated.isoformat(),
         "error": c.error,
         "started": None if c.started is None else c.started.isoformat()}
        for c in challenges
    ]


def challenges_from_json(items: Sequence[dict[str, Any]]) -> tuple[AcmeChallenge, ...]:
    return tuple(
        AcmeChallenge(
            type=item["type"], token=item["token"], status=item["status"],
            validated=None if item.get("validated") is None
            else dt.datetime.fromisoformat(item["validated"]),
            error=item.get("error"),
            started=None if item.get("started") is None
            else dt.datetime.fromisoformat(item["started"]),
        )
        for item in items
    )


def identifiers_to_json(identifiers: Sequence[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"type": kind, "value": value} for kind, value in identifiers]


def identifiers_from_json(items: Sequence[dict[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((item["type"], item["value"]) for item in items)
