"""Renderings of a compliance report's document (``ca_core.reports``): JSON, CSV and a
self-contained HTML page (inline CSS, charts as inline SVG drawn here: no script, font or
image is fetched, so the page reads the same offline and in an archive years later).

Each format is made from the same document, so each carries the same figures:

- JSON: the document itself.
- CSV: certificate_lifecycle as ``section,key,value`` rows (meta, figures, revoked_by_reason,
  expiring, by_profile, by_protocol, validity_days, expiry_histogram, issuance);
  crypto_inventory as one row per key with the report's id, time and organization in front.
- HTML: the same tables, the definitions, and for the lifecycle the expiry histogram and the
  issuance over time as bar charts.
"""

from __future__ import annotations

import csv
import html
import io
import json
from typing import Any

INVENTORY_COLUMNS = (
    "kind", "name", "organization_id", "ca", "subject", "algorithm", "key_size",
    "key_backend", "pkcs11_module", "pkcs11_label", "extractable", "sensitive", "protection",
    "not_before", "not_after", "status", "last_signature", "last_signature_source")
_META = ("report", "report_id", "organization", "organization_id", "generated_at",
         "generated_by")


def render(document: dict[str, Any], fmt: str) -> bytes:
    if fmt == "json":
        return json.dumps(document, indent=2, ensure_ascii=False).encode() + b"\n"
    if fmt == "csv":
        return _csv(document).encode()
    if fmt == "html":
        return _html(document).encode()
    raise ValueError(f"unknown format {fmt!r}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def histogram_label(bucket: dict[str, Any]) -> str:
    high = bucket["to_days"]
    return f"{bucket['from_days']}+ days" if high is None else \
        f"{bucket['from_days']}-{high} days"


def lifecycle_rows(document: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The lifecycle report as (section, key, value) rows: the CSV, and the HTML tables."""
    out: list[tuple[str, str, str]] = [("meta", k, _cell(document[k])) for k in _META]
    out += [("meta", "from", document["period"]["from"]),
            ("meta", "to", document["period"]["to"])]
    figures = document["figures"]
    for key in ("issued", "renewed", "revoked", "expired", "certificates_without_service"):
        out.append(("figures", key, _cell(figures[key])))
    for section in ("revoked_by_reason", "expiring", "by_profile", "by_protocol",
                    "validity_days"):
        out += [(section, k, _cell(v)) for k, v in figures[section].items()]
    charts = document["charts"]
    out += [("expiry_histogram", histogram_label(b), _cell(b["count"]))
            for b in charts["expiry_histogram"]]
    out += [("issuance", b["start"], _cell(b["count"])) for b in charts["issuance"]]
    return out


def _csv(document: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    if document["report"] == "crypto_inventory":
        writer.writerow(("report_id", "generated_at", "organization", *INVENTORY_COLUMNS))
        for key in document["keys"]:
            writer.writerow((document["report_id"], document["generated_at"],
                             _cell(document["organization"]),
                             *(_cell(key[c]) for c in INVENTORY_COLUMNS)))
    else:
        writer.writerow(("section", "key", "value"))
        writer.writerows(lifecycle_rows(document))
    return buffer.getvalue()


# --- HTML ------------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#1b1f24}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem}
.meta{color:#57606a;margin-bottom:1.5rem}
table{border-collapse:collapse;margin:.5rem 0 1rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;font-size:.9rem}
th{background:#f6f8fa}
table.wide th,table.wide td{font-size:.75rem;padding:.2rem .4rem}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;flex-wrap:wrap;gap:.8rem}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.6rem 1rem;min-width:8rem}
.card b{display:block;font-size:1.6rem}.card span{color:#57606a;font-size:.85rem}
dl{font-size:.85rem;color:#57606a}dt{font-weight:600}dd{margin:0 0 .4rem 1rem}
"""


def _e(value: Any) -> str:
    return html.escape(_cell(value))


def _table(header: tuple[str, ...], body: list[tuple[Any, ...]], css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    lines = []
    for row in body:
        cells = "".join(
            f'<td class="n">{_e(v)}</td>' if isinstance(v, int | float)
            and not isinstance(v, bool) else f"<td>{_e(v)}</td>" for v in row)
        lines.append(f"<tr>{cells}</tr>")
    attribute = f' class="{css}"' if css else ""
    return (f"<table{attribute}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(lines)}</tbody></table>")


def bar_chart(title: str, bars: list[tuple[str, int]], width: int = 760,
              height: int = 260) -> str:
    """A bar chart as inline SVG: one bar per (label, count), a y axis with the maximum,
    at most about 16 x labels (every k-th), each bar's count in its tooltip."""
    left, right, top, bottom = 48, 12, 44, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((c for _, c in bars), default=0) or 1
    step = plot_w / max(len(bars), 1)
    every = max(1, -(-len(bars) // 16))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{left}" y="18" font-size="14" font-weight="600">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}"'
        ' stroke="#57606a"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#57606a"/>',
        f'<text x="{left - 6}" y="{top + 4}" font-size="11" text-anchor="end">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>',
    ]
    for i, (label, count) in enumerate(bars):
        h = plot_h * count / peak
        x = left + i * step + step * 0.1
        parts.append(
            f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{step * 0.8:.1f}"'
            f' height="{h:.1f}" fill="#2f6fb3"><title>{html.escape(label)}: {count}'
            "</title></rect>")
        if len(bars) <= 16 and count:
            parts.append(f'<text x="{x + step * 0.4:.1f}" y="{top + plot_h - h - 3:.1f}"'
                         f' font-size="10" text-anchor="middle">{count}</text>')
        if i % every == 0:
            cx, cy = left + i * step + step / 2, top + plot_h + 12
            parts.append(f'<text x="{cx:.1f}" y="{cy:.1f}" font-size="10" text-anchor="end"'
                         f' transform="rotate(-35 {cx:.1f} {cy:.1f})">{html.escape(label)}'
                         "</text>")
    parts.append("</svg>")
    return "".join(parts)


def _page(document: dict[str, Any], title: str, body: str) -> str:
    period = document["period"]
    scope = document["organization"] or "all organizations"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><div class=\"meta\">{html.escape(scope)} &middot; "
        f"{_e(period['from'])} to {_e(period['to'])} &middot; generated "
        f"{_e(document['generated_at'])} by {_e(document['generated_by'])} &middot; "
        f"report {_e(document['report_id'])}</div>"
        f"{body}</body></html>\n")


def _html(document: dict[str, Any]) -> str:
    if document["report"] == "crypto_inventory":
        keys = document["keys"]
        body = (f"<h2>Keys ({len(keys)})</h2>"
                + _table(INVENTORY_COLUMNS, [tuple(k[c] for c in INVENTORY_COLUMNS)
                                             for k in keys], "wide")
                + f"<p class=\"meta\">Last signature: {_e(document['last_signature_basis'])}</p>")
        return _page(document, "Crypto inventory", body)
    figures, charts = document["figures"], document["charts"]
    cards = "".join(
        f'<div class="card"><b>{_e(figures[k])}</b><span>{_e(k.replace("_", " "))}</span></div>'
        for k in ("issued", "renewed", "revoked", "expired", "certificates_without_service"))
    sections = []
    for section, header in (("revoked_by_reason", ("reason", "certificates")),
                            ("expiring", ("expiring within days", "certificates")),
                            ("by_profile", ("profile", "certificates")),
                            ("by_protocol", ("protocol", "certificates")),
                            ("validity_days", ("validity", "days"))):
        items = list(figures[section].items())
        sections.append(f"<h2>{_e(section.replace('_', ' ').capitalize())}</h2>"
                        + (_table(header, items) if items else "<p>none</p>"))
    histogram = [(histogram_label(b), int(b["count"])) for b in charts["expiry_histogram"]]
    issuance = [(str(b["start"])[:10], int(b["count"])) for b in charts["issuance"]]
    width = charts["issuance_bucket_days"]
    body = (
        f'<div class="cards">{cards}</div>'
        + "<h2>Charts</h2>"
        + bar_chart("Expiry histogram: valid certificates by days left", histogram)
        + bar_chart(f"Issuance over time (bars of {width} day{'s' if width != 1 else ''})",
                    issuance)
        + "".join(sections)
        + "<h2>Expiry histogram</h2>" + _table(("days left", "certificates"), histogram)
        + "<h2>Issuance</h2>" + _table(("from", "certificates"),
                                       [(b["start"], b["count"]) for b in charts["issuance"]])
        + "<h2>Definitions</h2><dl>" + "".join(
            f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in document["definitions"].items())
        + "</dl>")
    return _page(document, "Certificate lifecycle", body)
