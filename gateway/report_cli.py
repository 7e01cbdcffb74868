"""``vcc-pki report NAME``: a compliance report (``ca_core.reports``) as JSON, CSV or HTML,
made by the same service as ``GET /api/v1/reports/{name}``, stored with its SHA-256 and
audited (report.generated) alike. The report goes to stdout or ``--out FILE``; its id and
hash to stderr."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ca_core.principal import Principal
from ca_core.reports import FORMATS, REPORT_NAMES, ReportRequest, ReportService
from gateway.config import Config
from gateway.runtime import open_services, require_cas

# The CLI acts as the operator of the machine: a super admin (every organization).
CLI = Principal.system("vcc-pki cli")


async def cmd_report(config: Config, args: argparse.Namespace) -> int:
    async with open_services(config) as services:
        await require_cas(services.store)
        generated = await ReportService(services.authority).generate(CLI, ReportRequest(
            name=args.name, format=args.format, organization=args.org,
            start=args.since, end=args.until))
    record = generated.record
    if args.out:
        Path(args.out).write_bytes(record.content)
    else:
        sys.stdout.buffer.write(record.content)
        sys.stdout.flush()
    print(f"report {record.report_id} ({record.report_type}, {record.report_format}) "
          f"stored, sha256 {record.content_sha256}"
          + (f", written to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def add_commands(sub: Any, command: Any) -> None:
    """Register ``report`` on the ``vcc-pki`` parser (``gateway.cli``)."""
    report = command(sub, "report", "generate a compliance report (certificate_lifecycle: "
                     "issued, renewed, revoked, expired and expiring certificates of a period; "
                     "crypto_inventory: every CA and signer key), store it with its SHA-256 "
                     "and audit it", cmd_report)
    report.add_argument("name", choices=REPORT_NAMES, metavar="NAME",
                        help=f"one of {', '.join(REPORT_NAMES)}")
    report.add_argument("--format", choices=FORMATS, default="json",
                        help="json (default), csv or html")
    report.add_argument("--org", metavar="ORG", help="organization slug (default: all)")
    report.add_argument("--from", dest="since", metavar="DATE",
                        help="period start: YYYY-MM-DD (midnight UTC) or an RFC 3339 time "
                        "(default: 30 days before --to)")
    report.add_argument("--to", dest="until", metavar="DATE",
                        help="period end: YYYY-MM-DD (that day included) or an RFC 3339 time "
                        "(default: now)")
    report.add_argument("--out", metavar="FILE", help="write the report here (default: "
                        "stdout)")
