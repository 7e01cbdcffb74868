"""What the run watches besides the answers: the gateway's memory (resident set of the
serving processes, from /proc: psutil is not a dependency), the store (certificate count
and statuses, audit chain, read through the REST API with a super-admin token, as an
operator would) and the log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except OSError:
            continue
    return found


def rss_bytes(pid: int) -> int:
    """Resident set of ``pid`` and its descendants (``VCC_PKI_WORKERS`` > 1 forks workers)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue  # gone meanwhile
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        total += int(match.group(1)) * 1024 if match else 0
        pending += _children(current)
    return total


@dataclass
class Memory:
    pid: int
    start: int = 0  # before the first mutated request
    baseline: int = 0  # after warm-up
    peak: int = 0
    last: int = 0

    def sample(self) -> int:
        self.last = rss_bytes(self.pid)
        self.peak = max(self.peak, self.last)
        return self.last

    def growth(self) -> float:
        return (self.last - self.baseline) / self.baseline if self.baseline else 0.0


@dataclass(frozen=True, slots=True)
class StoreState:
    certificates: dict[str, str]  # serial -> status
    subjects: dict[str, str]  # serial -> profile and subject
    audit_entries: int
    audit_intact: bool


async def store_state(session: aiohttp.ClientSession, base: str, token: str) -> StoreState:
    headers = {"Authorization": f"Bearer {token}"}
    certificates: dict[str, str] = {}
    subjects: dict[str, str] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with session.get(f"{base}/api/v1/certificates", params=params,
                               headers=headers) as response:
            assert response.status == 200, await response.text()
            page: dict[str, Any] = await response.json()
        certificates.update({item["serial"]: item["status"] for item in page["items"]})
        subjects.update({item["serial"]: f"{item['profile']} {item['subject']}"
                         for item in page["items"]})
        cursor = page.get("next")
        if not cursor:
            break
    async with session.get(f"{base}/api/v1/audit/verify", headers=headers) as response:
        assert response.status == 200, await response.text()
        verdict: dict[str, Any] = await response.json()
    return StoreState(certificates, subjects, int(verdict["entries"]), bool(verdict["intact"]))


def log_faults(text: str) -> tuple[int, int]:
    """Tracebacks and ERROR lines in the gateway's log."""
    return (text.count("Traceback"),
            sum(1 for line in text.splitlines() if " ERROR " in line or "CRITICAL" in line))
