"""Traces and JSON logs (issue 15, gateway/observability.py, ca_core/tracing.py): one
issuance's span tree from the REST request to the signature and the store write, the
OTLP export to a collector on 127.0.0.1, the no-op path when tracing is off, JSON log lines
with request and trace ids, and the settings."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography import x509
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ca_core import tracing
from ca_core.principal import Principal
from gateway import observability
from gateway.app import build_http_app, build_https_app
from gateway.config import ConfigError, load_config
from gateway.runtime import Services
from tests.helpers import fail_certificate_writes, make_csr
from tests.test_ocsp import ocsp_request
from tests.test_tsa import QUERY, request_der

ClientFactory = Callable[..., Any]
ADMIN = Principal.system("test")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, into memory."""
    exporter = InMemorySpanExporter()
    provider = observability.start_tracing("", exporter=exporter)
    try:
        yield exporter
    finally:
        observability.stop_tracing(provider)


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """JSON mode's formatter on a handler of the root logger, writing into a buffer (the
    root's own handlers are pytest's: left alone), and the per-request line on."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(observability.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    monkeypatch.setattr(observability.STATE, "access_log", True)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


async def _token(services: Services) -> str:
    return (await services.authority.create_token("default", "cert_manager",
                                                  principal=ADMIN)).token


def _one(found: list[ReadableSpan], name: str) -> ReadableSpan:
    named = [s for s in found if s.name == name]
    assert len(named) == 1, [s.name for s in found]
    return named[0]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def _span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def _trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def _issue(client: TestClient, token: str, headers: dict[str, str] | None = None
                 ) -> Any:
    return await client.post(
        "/api/v1/certificates", headers={"Authorization": f"Bearer {token}", **(headers or {})},
        json={"csr": make_csr().decode(), "profile": "vcc_service", "validity_days": 30})


# --- traces -------------------------------------------------------------------------------

async def test_issuance_span_tree(services: Services, aiohttp_client: ClientFactory,
                                  spans: InMemorySpanExporter) -> None:
    client = await aiohttp_client(build_https_app(services))
    token = await _token(services)
    spans.clear()
    response = await _issue(client, token)
    assert response.status == 201, await response.text()
    found = list(spans.get_finished_spans())

    server = _one(found, "POST /api/v1/certificates")
    assert server.kind is SpanKind.SERVER and server.parent is None
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/api/v1/certificates"
    assert server.attributes["http.response.status_code"] == 201
    issue = _one(found, "ca.issue")
    assert _parent_id(issue) == _span_id(server)
    sign = _one(found, "sign")
    assert _parent_id(sign) == _span_id(issue)
    assert sign.attributes is not None and sign.attributes["sign.purpose"] == "certificate"
    assert sign.attributes["key.hsm"] is False
    # The certificate's write batch (with its audit event) runs in the store's flusher
    # task, started from the issuance: its child.
    writes = [s for s in found if s.name == "store.write" and _parent_id(s) == _span_id(issue)]
    assert writes, [(s.name, _parent_id(s)) for s in found]
    assert writes[0].attributes is not None and writes[0].attributes["db.batch_size"] >= 1
    # The signature is made before the certificate is recorded (stored before returned).
    assert sign.end_time is not None and writes[-1].start_time is not None
    assert sign.end_time <= writes[-1].start_time
    # Store reads of the request hang in the same tree; everything is one trace.
    assert any(s.name == "store.read" for s in found)
    assert {_trace_id(s) for s in found} == {_trace_id(server)}
    ids = {_span_id(s) for s in found}
    assert all(s.parent is None or s.parent.span_id in ids for s in found)


async def test_revocation_ocsp_and_tsa_spans(services: Services, aiohttp_client: ClientFactory,
                                             spans: InMemorySpanExporter) -> None:
    api = await aiohttp_client(build_https_app(services))
    http = await aiohttp_client(build_http_app(services))
    token = await _token(services)
    issued = await (await _issue(api, token)).json()
    spans.clear()
    revoked = await api.post(f"/api/v1/certificates/{issued['serial']}/revoke",
                             headers={"Authorization": f"Bearer {token}"},
                             json={"reason": "key_compromise"})
    assert revoked.status == 200
    revoke = _one(list(spans.get_finished_spans()), "ca.revoke")
    assert _parent_id(revoke) == _span_id(
        _one(list(spans.get_finished_spans()), "POST /api/v1/certificates/{serial}/revoke"))

    cert = x509.load_pem_x509_certificate(issued["certificate_pem"].encode())
    issuer = x509.load_pem_x509_certificate(issued["chain_pem"].encode())
    spans.clear()
    answered = await http.post("/ocsp", data=ocsp_request(cert, issuer),
                               headers={"Content-Type": "application/ocsp-request"})
    assert answered.status == 200
    found = list(spans.get_finished_spans())
    assert _parent_id(_one(found, "ca.ocsp_answer")) == _span_id(_one(found, "POST /ocsp"))

    spans.clear()
    stamped = await http.post("/tsa", data=request_der(), headers={"Content-Type": QUERY})
    assert stamped.status == 200
    found = list(spans.get_finished_spans())
    stamp = _one(found, "ca.timestamp")
    assert _parent_id(stamp) == _span_id(_one(found, "POST /tsa"))
    sign = _one(found, "sign")
    assert _parent_id(sign) == _span_id(stamp)
    assert sign.attributes is not None and sign.attributes["sign.purpose"] == "timestamp"


async def test_server_span_continues_the_callers_trace_and_marks_5xx(
        services: Services, aiohttp_client: ClientFactory, spans: InMemorySpanExporter,
        monkeypatch: pytest.MonkeyPatch) -> None:
    client = await aiohttp_client(build_https_app(services))
    token = await _token(services)
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    spans.clear()
    response = await _issue(client, token,
                            {"traceparent": f"00-{trace_id}-{parent_id}-01"})
    assert response.status == 201
    server = _one(list(spans.get_finished_spans()), "POST /api/v1/certificates")
    assert f"{_trace_id(server):032x}" == trace_id
    assert server.parent is not None and f"{server.parent.span_id:016x}" == parent_id

    fail_certificate_writes(monkeypatch, services.store)
    spans.clear()
    failed = await _issue(client, token)
    assert failed.status == 503
    found = list(spans.get_finished_spans())
    assert _one(found, "POST /api/v1/certificates").status.status_code is StatusCode.ERROR
    assert _one(found, "ca.issue").status.status_code is StatusCode.ERROR  # it raised

    spans.clear()
    missing = await client.get("/no/such/path")
    assert missing.status == 404
    unmatched = _one(list(spans.get_finished_spans()), "GET unmatched")
    assert unmatched.status.status_code is StatusCode.UNSET  # the client's error
    assert unmatched.attributes is not None
    assert unmatched.attributes["http.response.status_code"] == 404


async def test_spans_are_exported_over_otlp_http() -> None:
    """A collector on 127.0.0.1 (this test's aiohttp server) receives the spans as
    OTLP/HTTP protobuf at /v1/traces."""
    received: list[tuple[str, str, bytes]] = []

    async def collect(request: web.Request) -> web.Response:
        received.append((request.path, request.content_type, await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v1/traces", collect)
    async with TestServer(app, host="127.0.0.1") as collector:
        endpoint = str(collector.make_url("")).rstrip("/")
        provider = observability.start_tracing(endpoint)
        with tracing.span("probe.otlp") as current:
            tracing.set_attributes(current, {"probe": True})
        # The batch processor sends from its own thread (blocking HTTP): not on this loop.
        await asyncio.to_thread(observability.stop_tracing, provider)
    assert not tracing.enabled()
    assert received, "nothing reached the collector"
    path, content_type, body = received[0]
    assert path == "/v1/traces" and content_type == "application/x-protobuf"
    assert b"probe.otlp" in body and b"vcc-pki" in body  # the span and service.name


def test_traces_url() -> None:
    assert observability.traces_url("http://127.0.0.1:4318") == \
        "http://127.0.0.1:4318/v1/traces"
    assert observability.traces_url("http://127.0.0.1:4318/") == \
        "http://127.0.0.1:4318/v1/traces"
    assert observability.traces_url("https://c.example:4318/otlp/v1/traces") == \
        "https://c.example:4318/otlp/v1/traces"


async def test_tracing_off_is_a_no_op() -> None:
    assert not tracing.enabled()
    with tracing.span("a") as first, tracing.span("b") as second:
        assert first is None and second is None
    assert tracing.span("a") is tracing.span("b")  # one shared object: nothing made
    assert tracing.current_ids() is None

    @tracing.traced("never", lambda *_: pytest.fail("attributes computed with tracing off"))
    async def work(value: int) -> int:
        return value + 1

    assert await work(1) == 2


def test_tracing_off_needs_no_opentelemetry() -> None:
    """Without the otel extra (OpenTelemetry made unimportable here; redis-py itself
    imports it whenever it is installed) the gateway serves an issuance with JSON logs, and
    none of this project's code tried to import OpenTelemetry."""
    program = (
        "import sys, asyncio, logging, tempfile, pathlib, traceback\n"
        "tried = []\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            frames = [f.filename for f in traceback.extract_stack()\n"
        "                      if not f.filename.startswith('<')]\n"
        "            tried.append(frames[-1])  # the module whose import statement ran\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "from ca_core.principal import Principal\n"
        "from gateway.app import build_https_app\n"
        "from gateway.observability import configure_logging, tracing_from\n"
        "from gateway.config import load_config\n"
        "from tests.helpers import fresh_services, make_csr\n"
        "configure_logging('json')\n"
        "async def main():\n"
        "    with tracing_from(load_config({})):\n"
        "        async with fresh_services(pathlib.Path(tempfile.mkdtemp())) as s:\n"
        "            token = (await s.authority.create_token('default', 'cert_manager',\n"
        "                     principal=Principal.system('t'))).token\n"
        "            async with TestClient(TestServer(build_https_app(s))) as c:\n"
        "                r = await c.post('/api/v1/certificates', json={'csr': \n"
        "                    make_csr().decode(), 'profile': 'vcc_service'},\n"
        "                    headers={'Authorization': 'Bearer ' + token})\n"
        "                assert r.status == 201, r.status\n"
        "asyncio.run(main())\n"
        "print([f for f in tried if 'site-packages' not in f])\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- JSON logs ----------------------------------------------------------------------------

async def test_json_request_lines_carry_request_and_trace_ids(
        services: Services, aiohttp_client: ClientFactory, json_lines: io.StringIO,
        spans: InMemorySpanExporter) -> None:
    client = await aiohttp_client(build_https_app(services))
    token = await _token(services)
    spans.clear()
    response = await _issue(client, token)
    assert response.status == 201
    request_id = response.headers["X-Request-ID"]
    access = [r for r in _records(json_lines) if r["logger"] == "vcc_pki.access"]
    assert len(access) == 1, access
    line = access[0]
    assert line["request_id"] == request_id
    assert line["method"] == "POST" and line["path"] == "/api/v1/certificates"
    assert line["route"] == "/api/v1/certificates" and line["status"] == 201
    assert line["listener"] == "https" and line["duration_ms"] >= 0
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")
    server = _one(list(spans.get_finished_spans()), "POST /api/v1/certificates")
    assert line["trace_id"] == f"{_trace_id(server):032x}"
    assert line["span_id"] == f"{_span_id(server):016x}"

    # A request id the client sent is the one logged.
    await client.get("/no/such/path", headers={"X-Request-ID": "client-chosen-42"})
    last = [r for r in _records(json_lines) if r["logger"] == "vcc_pki.access"][-1]
    assert last["request_id"] == "client-chosen-42" and last["status"] == 404


async def test_json_other_records_of_a_request_carry_its_id(
        services: Services, aiohttp_client: ClientFactory, json_lines: io.StringIO,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Tracing off: request ids, no trace ids; the warning of a failed store write is a
    JSON line of the same request."""
    client = await aiohttp_client(build_https_app(services))
    token = await _token(services)
    fail_certificate_writes(monkeypatch, services.store)
    response = await _issue(client, token)
    assert response.status == 503
    request_id = response.headers["X-Request-ID"]
    mine = [r for r in _records(json_lines) if r.get("request_id") == request_id]
    assert {r["logger"] for r in mine} >= {"vcc_pki.gateway", "vcc_pki.access"}, mine
    warning = next(r for r in mine if r["logger"] == "vcc_pki.gateway")
    assert warning["level"] == "WARNING" and "unavailable" in warning["message"]
    assert all("trace_id" not in r for r in _records(json_lines))


async def test_text_mode_writes_no_request_lines(
        services: Services, aiohttp_client: ClientFactory,
        caplog: pytest.LogCaptureFixture) -> None:
    assert not observability.STATE.access_log
    client = await aiohttp_client(build_http_app(services))
    with caplog.at_level(logging.DEBUG):
        assert (await client.get("/health")).status == 200
    assert not [r for r in caplog.records if r.name == "vcc_pki.access"]


def test_json_formatter_one_line_per_record_with_exceptions() -> None:
    formatter = observability.JsonFormatter()
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = logging.LogRecord("vcc_pki.x", logging.ERROR, __file__, 1, "two\nlines %s",
                                   ("arg",), sys.exc_info())
    text = formatter.format(record)
    assert "\n" not in text
    parsed = json.loads(text)
    assert parsed["message"] == "two\nlines arg" and parsed["level"] == "ERROR"
    assert "ValueError: bad" in parsed["exception"] and "request_id" not in parsed


def test_configure_logging_json_in_a_process() -> None:
    """What `vcc-pki` does with VCC_PKI_LOG_FORMAT=json: every record a JSON line."""
    program = (
        "import logging\n"
        "from gateway.observability import configure_logging\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s')\n"
        "configure_logging('json')\n"
        "logging.getLogger('vcc_pki.probe').warning('one %s', 'line')\n"
        "logging.getLogger('other').info('two')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          timeout=60, check=True)
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(r["logger"], r["level"], r["message"]) for r in lines] == [
        ("vcc_pki.probe", "WARNING", "one line"), ("other", "INFO", "two")]


# --- settings -----------------------------------------------------------------------------

def test_settings() -> None:
    defaults = load_config({})
    assert defaults.log_format == "text" and defaults.otlp_endpoint == ""
    config = load_config({"VCC_PKI_LOG_FORMAT": "json",
                          "VCC_PKI_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert config.log_format == "json" and config.otlp_endpoint == "http://127.0.0.1:4318"
    assert load_config({"VCC_PKI_OTLP_ENDPOINT": "console"}).otlp_endpoint == "console"


def test_settings_in_toml(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('log_format = "json"\notlp_endpoint = "http://127.0.0.1:4318"\n')
    config = load_config({}, path=str(path))
    assert config.log_format == "json" and config.otlp_endpoint == "http://127.0.0.1:4318"
    path.write_text("otlp_endpoint = 4318\n")
    with pytest.raises(ConfigError, match="otlp_endpoint"):
        load_config({}, path=str(path))


def test_endpoint_without_the_otel_extra_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.resources", None)  # import fails
    config = load_config({"VCC_PKI_OTLP_ENDPOINT": "console"})
    with pytest.raises(ConfigError, match=r"VCC_PKI_OTLP_ENDPOINT.*vcc-pki\[otel\]"), \
            observability.tracing_from(config):
        pass
    assert not tracing.enabled()


@pytest.mark.parametrize(("name", "value"), [
    ("VCC_PKI_LOG_FORMAT", "xml"),
    ("VCC_PKI_LOG_FORMAT", "JSON "),
    ("VCC_PKI_OTLP_ENDPOINT", "127.0.0.1:4318"),
    ("VCC_PKI_OTLP_ENDPOINT", "grpc://127.0.0.1:4317"),
    ("VCC_PKI_OTLP_ENDPOINT", "http://"),
    ("VCC_PKI_OTLP_ENDPOINT", "http://127.0.0.1:99999"),
    ("VCC_PKI_OTLP_ENDPOINT", "http://127.0.0.1:0"),
    ("VCC_PKI_OTLP_ENDPOINT", "http://127.0.0.1:4318/?x=1"),
    ("VCC_PKI_OTLP_ENDPOINT", "http://[::1"),
])
def test_bad_settings_name_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


async def test_store_spans_only_inside_another_span(services: Services,
                                                    spans: InMemorySpanExporter) -> None:
    """A background job's store poll is no trace of its own; inside a span it is a child."""
    spans.clear()
    await services.store.list_cas()
    assert not spans.get_finished_spans()
    with tracing.span("job"):
        await services.store.list_cas()
    found = list(spans.get_finished_spans())
    assert _parent_id(_one(found, "store.read")) == _span_id(_one(found, "job"))


async def test_http_metrics_count_each_request_once_per_label_set(
        aiohttp_client: ClientFactory) -> None:
    """The middleware's request counter and duration histogram (their children kept per
    label set, gateway.app._metric_children) count every request under its own labels."""
    from prometheus_client import REGISTRY

    from gateway.app import _middleware

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(middlewares=[_middleware("metrics-test")])
    app.router.add_get("/m/{name}", ok)
    client = await aiohttp_client(app)

    def count(route: str, status: str) -> float:
        return REGISTRY.get_sample_value("pki_http_requests_total", {
            "listener": "metrics-test", "route": route, "method": "GET",
            "status": status}) or 0.0

    def observed(route: str) -> float:
        return REGISTRY.get_sample_value("pki_http_request_duration_seconds_count", {
            "listener": "metrics-test", "route": route}) or 0.0

    before = count("/m/{name}", "200"), count("unmatched", "404"), observed("/m/{name}")
    for name in ("a", "b", "c"):
        assert (await client.get(f"/m/{name}")).status == 200
    assert (await client.get("/nowhere")).status == 404
    assert count("/m/{name}", "200") == before[0] + 3
    assert count("unmatched", "404") == before[1] + 1
    assert observed("/m/{name}") == before[2] + 3
