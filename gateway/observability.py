"""Traces and JSON logs of a gateway process (issue 15, observability across replicas).

- ``VCC_PKI_OTLP_ENDPOINT``: unset (the default), no tracing: nothing of OpenTelemetry is
  imported and ca_core.tracing stays on its no-op path. ``http(s)://host:port`` of an OTLP
  collector (OTLP/HTTP protobuf; ``/v1/traces`` is appended unless the URL has a path),
  or ``console`` (spans printed as JSON to stdout, for a look without a collector). Needs
  the ``otel`` extra (``pip install 'vcc-pki[otel]'``).
- ``VCC_PKI_LOG_FORMAT``: ``text`` (the default, as before) or ``json``: every log record
  one JSON object per line, with the request id and, when tracing is on, the trace and
  span ids; plus one ``vcc_pki.access`` line per request (method, route, status,
  duration), which text mode does not write.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from ca_core import tracing
from gateway.config import Config, ConfigError

ACCESS_LOG = logging.getLogger("vcc_pki.access")
# The request a log record belongs to: set by gateway/app.py's middleware in JSON mode only.
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("vcc_pki_request_id",
                                                                 default="")
TRACES_PATH = "/v1/traces"


class _State:
    """Whether the per-request access line is written (JSON mode)."""

    access_log = False


STATE = _State()

# LogRecord's own attributes; anything else on a record came from ``extra=`` and is
# written as a field of its own.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (json.dumps escapes newlines)."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = REQUEST_ID.get()
        if request_id:
            document["request_id"] = request_id
        ids = tracing.current_ids()
        if ids is not None:
            document["trace_id"], document["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in document:
                document[key] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, separators=(",", ":"))


def configure_logging(log_format: str) -> None:
    """Switch the root logger's handlers to JSON lines (``json``); ``text`` changes nothing."""
    STATE.access_log = log_format == "json"
    if log_format != "json":
        return
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(JsonFormatter())


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``VCC_PKI_OTLP_ENDPOINT`` (a collector's base URL)."""
    parts = urlsplit(endpoint)
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + TRACES_PATH


def start_tracing(endpoint: str, exporter: Any = None) -> Any:
    """Switch tracing on: spans go to ``exporter`` (tests: an InMemorySpanExporter, sent
    at each span's end) or to ``endpoint`` (``console``, or an OTLP/HTTP collector, sent
    in batches from a thread). Returns the TracerProvider, for ``stop_tracing``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    resource = Resource.create({
        "service.name": "vcc-pki",
        # Replicas and workers tell themselves apart by this.
        "service.instance.id": f"{socket.gethostname()}:{os.getpid()}",
    })
    provider = TracerProvider(resource=resource)
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif endpoint == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint))))
    tracing.use_tracer(provider.get_tracer("vcc_pki"))
    return provider


@contextmanager
def tracing_from(config: Config) -> Iterator[None]:
    """Tracing on for the block when ``config.otlp_endpoint`` is set; spans left are sent
    at its end."""
    if not config.otlp_endpoint:
        yield
        return
    try:
        provider = start_tracing(config.otlp_endpoint)
    except ImportError as exc:
        raise ConfigError(f"VCC_PKI_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                          f"({exc.name}): pip install 'vcc-pki[otel]'") from None
    try:
        yield
    finally:
        stop_tracing(provider)


def stop_tracing(provider: Any) -> None:
    """Send what is left and switch tracing off."""
    tracing.use_tracer(None)
    if provider is not None:
        provider.shutdown()


@contextmanager
def server_span(name: str, headers: Mapping[str, str],
                attributes: Mapping[str, str]) -> Iterator[Any]:
    """The SERVER span of one request (tracing on only), continuing the caller's trace
    when it sent a W3C ``traceparent`` header."""
    from opentelemetry import propagate, trace

    tracer: Any = tracing.current_tracer()
    with tracer.start_as_current_span(name, context=propagate.extract(headers),
                                      kind=trace.SpanKind.SERVER, attributes=attributes,
                                      # aiohttp's HTTPNotFound and the like are answers,
                                      # not failures: end_server_span judges the status.
                                      record_exception=False,
                                      set_status_on_exception=False) as current:
        yield current


def end_server_span(current: Any, status: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    current.set_attribute("http.response.status_code", status)
    if status >= 500:  # semantic conventions: a 4xx is the client's error, not the server's
        current.set_status(Status(StatusCode.ERROR))
