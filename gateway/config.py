"""Gateway configuration: one TOML file (``VCC_PKI_CONFIG``) plus ``VCC_PKI_*`` overrides.

Precedence: environment > TOML file > defaults. Every setting has an environment name, so
a container is configured by environment alone. See ``deploy/vcc-pki.example.toml``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from ca_core.acme import AcmeSettings
from ca_core.authority import CASettings
from ca_core.est import EstSettings
from ca_core.keys import KeySpec
from ca_core.scep import ScepSettings
from ca_core.tsa import DEFAULT_POLICY_OID, TsaSettings
from ca_core.weak_keys import WeakKeys
from protocols.est.codec import parse_networks
from va.validator import ValidationSettings


class ConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path = Path("vcc-pki-data")
    database_url: str = ""  # default: sqlite:///<data_dir>/vcc-pki.db
    redis_url: str = ""  # empty: in-process caches
    key_backend: str = "software"  # software | pkcs11
    key_passphrase: str = ""
    key_passphrase_file: str = ""  # default: <data_dir>/passphrase (created by init)
    pkcs11_module: str = "/usr/lib/softhsm/libsofthsm2.so"
    pkcs11_token_label: str = "vcc-pki"
    pkcs11_pin: str = ""
    pkcs11_max_sessions: int = 4
    bind: str = "127.0.0.1"
    http_port: int = 8080
    https_port: int = 8443
    public_http_url: str = ""  # default: http://<bind>:<http_port>
    public_https_url: str = ""  # default: https://<bind>:<https_port>
    root_key_type: str = "ec-p384"
    intermediate_key_type: str = "ec-p384"
    issuing_key_type: str = "ec-p256"
    organization_name: str = "VCC-PKI"
    country: str = "DE"
    default_org: str = "default"
    tls_hostnames: tuple[str, ...] = ("localhost",)
    max_body_bytes: int = 256 * 1024
    # HTTP/1.1 parsing limits of every listener: a longer request line (URL) or header
    # field, or more header fields, is answered 400 before any handler runs.
    http_max_line_bytes: int = 8190
    http_max_field_bytes: int = 8190
    http_max_headers: int = 128
    # Slow and greedy clients (issue 16). A connection whose request headers have not all
    # arrived, or that sits idle between requests, is closed after keepalive seconds
    # (aiohttp keeps one timer for both: slowloris headers end there); a request body not
    # complete within body_timeout seconds closes the connection; one client address may
    # hold at most max_connections_per_client connections to a listener (0: no limit).
    http_keepalive_seconds: int = 75
    # Behind a layer-4 (TCP, TLS passthrough) balancer a client's keep-alive connection
    # stays on one replica for as long as it lives. After this many requests on one
    # connection the response says ``Connection: close`` and the client reconnects, through
    # the balancer to the next replica (nginx's keepalive_requests). 0: no limit.
    http_keepalive_requests: int = 0
    http_body_timeout_seconds: int = 30
    http_max_connections_per_client: int = 256
    # Signatures of this process being made at once (certificates, OCSP, CRLs, tokens);
    # one more is refused at once as unavailable (503, OCSP tryLater), never queued.
    max_signatures_in_flight: int = 256
    # On SIGTERM, /ready answers 503 for this many seconds while requests are still served
    # (a load balancer takes the replica out), then the listeners stop accepting and finish
    # what is in flight. 0 (the default): stop at once, as a single process wants.
    drain_seconds: int = 0
    # Serving processes sharing the ports (SO_REUSEPORT). Unset, load_config makes it
    # default_workers(): one per core (issue 18).
    workers: int = 1
    event_loop: str = "auto"  # auto (uvloop when installed) | uvloop | asyncio
    log_level: str = "INFO"
    # Observability (issue 15; gateway/observability.py): log lines as text or JSON, and
    # where traces go (unset: no tracing, at no cost; "console"; an OTLP/HTTP collector URL)
    log_format: str = "text"  # text | json
    otlp_endpoint: str = ""
    # OCSP responder and CRLs (RFC 6960, RFC 5019, RFC 5280); [ocsp] and [crl] in TOML
    redis_key_prefix: str = "vcc-pki:"  # keys of this deployment in a shared Redis
    ocsp_validity_days: int = 4  # nextUpdate - thisUpdate of OCSP responses
    ocsp_nonce: bool = False  # True: sign live and echo request nonces (RFC 9654)
    ocsp_cache_max_entries: int = 200_000  # in-process cache bound (Redis: no bound)
    ocsp_live_concurrency: int = 16  # cache misses signed at the same time
    ocsp_responder_validity_days: int = 30  # delegated responder certificates
    ocsp_refresh_interval_seconds: int = 60  # refresher, responder renewal
    ocsp_warm: bool = True  # precompute missing responses at start
    ocsp_front_cache_ms: int = 250  # with Redis: hits kept this long in-process (0: off)
    revocation_poll_ms: int = 500  # how often to look for other processes' revocations
    crl_next_update_hours: int = 24  # CRL nextUpdate - thisUpdate; regenerated at half
    crl_debounce_ms: int = 1000  # wait for more revocations before regenerating a CRL
    crl_partitions: int = 0  # >0: also publish that many partitioned CRLs per CA
    bench_routes: bool = False  # /bench/fixed: the HTTP stack's ceiling (benchmarks only)
    # RFC 3161 time-stamping authority; [tsa] in TOML
    tsa_policy_oid: str = DEFAULT_POLICY_OID  # placeholder: use your organisation's own OID
    tsa_accepted_policies: tuple[str, ...] = ()  # other policies a request may ask for
    tsa_accuracy_ms: int = 1000  # 0: no accuracy in tokens
    tsa_hash_algorithms: tuple[str, ...] = ("sha256", "sha384", "sha512")
    tsa_include_tsa_name: bool = False  # the TSA's subject as TSTInfo.tsa
    tsa_legacy_ess_cert_id: bool = False  # also the SHA-1 signingCertificate attribute
    tsa_clock_check: str = ""  # "" | "adjtimex" | "file:/path" (exists = unsynchronised)
    tsa_key_type: str = "ec-p256"
    # ACME (RFC 8555); [acme] in TOML
    acme_eab_required: bool = False  # newAccount needs External Account Binding
    acme_terms_of_service: str = ""  # URL; when set, accounts must agree to it
    acme_website: str = ""
    acme_caa_identities: tuple[str, ...] = ()
    acme_http01_port: int = 80  # where http-01 challenges are fetched
    acme_tlsalpn01_port: int = 443  # where tls-alpn-01 handshakes go
    acme_dns_resolver: str = ""  # host:port for TXT lookups and name resolution
    acme_validation_attempts: int = 3
    acme_orders_per_account_per_hour: int = 300
    acme_orders_per_org_per_hour: int = 3000
    acme_accounts_per_org_per_hour: int = 300
    # How long the challenge POST waits for its validation before answering "processing"
    # (0: answer at once; the client polls). 0..30 seconds.
    acme_challenge_wait_seconds: float = 2.0
    # EST (RFC 7030, RFC 8951); [est] in TOML
    est_port: int = 8444  # the EST listener (requests, never requires, a client certificate)
    # openssl-blacklist-style list of known-weak RSA keys, refused as subject keys
    weak_keys_file: str = ""
    est_trust_store: str = ""  # PEM file: manufacturer/bootstrap CAs whose devices may enroll
    est_trusted_proxies: tuple[str, ...] = ()  # addresses/networks whose cert header counts
    est_max_body_bytes: int = 64 * 1024
    # The web admin page's sign-in sessions (issue 17; ca_core.sessions): they end after
    # idle seconds without a request and after lifetime seconds in any case.
    admin_session_idle_seconds: int = 1800
    admin_session_lifetime_seconds: int = 8 * 3600
    # SCEP (RFC 8894): the static challengePassword of the default organization and SCEP
    # profile at /scep ("": none; one-time challenges come from `vcc-pki scep challenge`)
    scep_challenge: str = ""
    # accept SCEP requests encrypted with single DES (legacy clients such as micromdm's
    # scepclient 2.1); replies are AES-256 then, never single DES
    scep_accept_single_des: bool = False
    # offer DES3 in GetCACaps, for legacy clients that know no AES (DES3 requests are read
    # and answered in DES3 either way)
    scep_advertise_des3: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)  # sections later features read

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'vcc-pki.db').as_posix()}"

    @property
    def effective_public_http_url(self) -> str:
        return (self.public_http_url or f"http://{_host(self.bind)}:{self.http_port}").rstrip("/")

    @property
    def effective_public_https_url(self) -> str:
        return (self.public_https_url
                or f"https://{_host(self.bind)}:{self.https_port}").rstrip("/")

    @property
    def passphrase_path(self) -> Path:
        return Path(self.key_passphrase_file) if self.key_passphrase_file else (
            self.data_dir / "passphrase")

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    def ca_settings(self) -> CASettings:
        try:
            return CASettings(
                public_http_url=self.effective_public_http_url,
                root_key=KeySpec.parse(self.root_key_type),
                intermediate_key=KeySpec.parse(self.intermediate_key_type),
                issuing_key=KeySpec.parse(self.issuing_key_type),
                organization_name=self.organization_name,
                country=self.country,
                default_org=self.default_org,
                crl_partitions=self.crl_partitions,
                weak_keys=self._weak_keys(),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

    def _weak_keys(self) -> WeakKeys:
        if not self.weak_keys_file:
            return WeakKeys()
        try:
            return WeakKeys.load(Path(self.weak_keys_file))
        except OSError as exc:
            raise ConfigError(f"VCC_PKI_WEAK_KEYS_FILE {self.weak_keys_file}: "
                              f"{exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"VCC_PKI_WEAK_KEYS_FILE: {exc}") from None

    def acme_settings(self) -> AcmeSettings:
        return AcmeSettings(
            eab_required=self.acme_eab_required,
            terms_of_service=self.acme_terms_of_service or None,
            website=self.acme_website or None,
            caa_identities=self.acme_caa_identities,
            validation_attempts=max(1, self.acme_validation_attempts),
            orders_per_account_per_hour=self.acme_orders_per_account_per_hour,
            orders_per_org_per_hour=self.acme_orders_per_org_per_hour,
            accounts_per_org_per_hour=self.acme_accounts_per_org_per_hour,
            challenge_wait_seconds=self.acme_challenge_wait_seconds,
        )

    def acme_validation_settings(self) -> ValidationSettings:
        return ValidationSettings(http01_port=self.acme_http01_port,
                                  tlsalpn01_port=self.acme_tlsalpn01_port,
                                  dns_resolver=self.acme_dns_resolver or None)

    def tsa_settings(self) -> TsaSettings:
        try:
            return TsaSettings(
                policy_oid=self.tsa_policy_oid,
                accepted_policies=self.tsa_accepted_policies,
                accuracy_ms=self.tsa_accuracy_ms,
                hash_algorithms=self.tsa_hash_algorithms,
                include_tsa_name=self.tsa_include_tsa_name,
                legacy_ess_cert_id=self.tsa_legacy_ess_cert_id,
                clock_check=self.tsa_clock_check,
                key=KeySpec.parse(self.tsa_key_type),
            )
        except ValueError as exc:
            raise ConfigError(f"TSA settings: {exc}") from exc


    def est_settings(self) -> EstSettings:
        """EST settings; the trust store file (VCC_PKI_EST_TRUST_STORE) is read here, so a
        missing or damaged one stops the start with a one-line reason."""
        trusted: tuple[x509.Certificate, ...] = ()
        if self.est_trust_store:
            try:
                pem = Path(self.est_trust_store).read_bytes()
            except OSError as exc:
                raise ConfigError(f"VCC_PKI_EST_TRUST_STORE {self.est_trust_store}: "
                                  f"{exc.strerror}") from None
            try:
                trusted = tuple(x509.load_pem_x509_certificates(pem))
            except ValueError:
                raise ConfigError(f"VCC_PKI_EST_TRUST_STORE {self.est_trust_store} holds no "
                                  "PEM certificates") from None
        return EstSettings(trust_store=trusted, trusted_proxies=self.est_trusted_proxies,
                           max_body_bytes=self.est_max_body_bytes)

    def scep_settings(self) -> ScepSettings:
        return ScepSettings(static_challenge=self.scep_challenge,
                            accept_single_des=self.scep_accept_single_des,
                            advertise_des3=self.scep_advertise_des3)


def _host(bind: str) -> str:
    if bind in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{bind}]" if ":" in bind else bind


_INT_FIELDS = {"http_port", "https_port", "pkcs11_max_sessions", "max_body_bytes", "workers",
               "ocsp_validity_days", "ocsp_cache_max_entries", "ocsp_live_concurrency",
               "ocsp_responder_validity_days", "ocsp_refresh_interval_seconds",
               "revocation_poll_ms", "crl_next_update_hours", "crl_debounce_ms",
               "crl_partitions", "ocsp_front_cache_ms", "http_max_line_bytes",
               "http_max_field_bytes", "http_max_headers", "http_keepalive_seconds",
               "http_body_timeout_seconds", "http_max_connections_per_client",
               "max_signatures_in_flight", "drain_seconds"}
_BOOL_FIELDS = {"ocsp_nonce", "ocsp_warm", "bench_routes"}
_INT_FIELDS.add("tsa_accuracy_ms")
_INT_FIELDS.add("http_keepalive_requests")
_BOOL_FIELDS |= {"tsa_include_tsa_name", "tsa_legacy_ess_cert_id"}
_TUPLE_FIELDS = {"tsa_accepted_policies", "tsa_hash_algorithms", "acme_caa_identities"}
_INT_FIELDS |= {"acme_http01_port", "acme_tlsalpn01_port", "acme_validation_attempts",
                "acme_orders_per_account_per_hour", "acme_orders_per_org_per_hour",
                "acme_accounts_per_org_per_hour"}
_BOOL_FIELDS.add("acme_eab_required")
_FLOAT_FIELDS = {"acme_challenge_wait_seconds"}
_INT_FIELDS |= {"est_port", "est_max_body_bytes"}
_INT_FIELDS |= {"admin_session_idle_seconds", "admin_session_lifetime_seconds"}
_BOOL_FIELDS |= {"scep_accept_single_des", "scep_advertise_des3"}
_TUPLE_FIELDS.add("est_trusted_proxies")


def cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity (as a container's cpuset limits it), and
    at most its cgroup's CPU quota rounded up (a Kubernetes CPU limit sets the quota, not
    the affinity: without this a pod limited to 2 CPUs on a 64-core node would start 64
    workers)."""
    try:
        count = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no sched_getaffinity on this platform
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota(cgroup_root)
    return max(1, min(count, math.ceil(quota))) if quota is not None else count


def _cgroup_cpu_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup's quota (v2 cpu.max of this process's cgroup or, in a
    container's cgroup namespace, of the root; v1 cpu.cfs_quota_us), or None."""
    places = [root]
    try:  # cgroup v2: "0::/system.slice/vcc-pki.service"
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::/") and line != "0::/":
                places.insert(0, root / line[4:])
    except OSError:
        pass
    for place in places:
        try:
            quota, period = (place / "cpu.max").read_text().split()[:2]  # "max 100000"
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    try:
        v1 = root / "cpu"
        quota_us = int((v1 / "cpu.cfs_quota_us").read_text())  # -1: none
        period_us = int((v1 / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def default_workers(redis_url: str = "") -> int:
    """VCC_PKI_WORKERS when it is not set (issue 18): one serving process per core, on every
    store. What the processes must agree on lives in Redis when it is set; without it, ACME
    nonces are routed to the worker that issued them (db.nonce_routing) and admin web
    sessions are kept in the database (db.sessions.SqlSessions); ACME rate limits are then
    each process's own (a limit is per worker: README). ``redis_url`` no longer matters
    (kept for callers). At most 256 (the setting's bound, and db.nonce_routing's)."""
    return min(cores(), 256)


def _coerce(name: str, value: Any) -> Any:
    try:
        if name == "workers" and str(value).strip().lower() == "auto":
            return cores()  # as many serving processes as cores
        if name in _INT_FIELDS:
            return int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):  # TOML true is no number of seconds
                raise ValueError(value)
            return float(value)
        if name in _BOOL_FIELDS:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(text)
            return text in ("1", "true", "yes", "on")
        if name == "data_dir":
            return Path(value)
        if name == "tls_hostnames" or name in _TUPLE_FIELDS:
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: int(inf)
        raise ConfigError(f"invalid value for {name}: {value!r}") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def _flatten(document: Mapping[str, Any]) -> dict[str, Any]:
    """``[pkcs11] module = ...`` and ``pkcs11_module = ...`` mean the same."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping) and key in ("pkcs11", "ca", "server", "keys", "database",
                                                  "ocsp", "crl", "tsa", "acme", "est"):
            for inner, inner_value in value.items():
                prefix = {"ca": "", "server": "", "database": "", "keys": "key_"}.get(
                    key, f"{key}_")
                flat[f"{prefix}{inner}"] = inner_value
        else:
            flat[key] = value
    return flat


def _check_resolver(text: str) -> None:
    """host:port of the ACME DNS resolver, as va.validator reads it: an IP address (dnspython
    takes no names) and a port of ASCII digits (str.isdigit() admits "²", which int()
    refuses: a ValueError at start-up, found by fuzz/targets.py config)."""
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host.strip("[]") or "127.0.0.1")
    except ValueError:
        raise ConfigError("VCC_PKI_ACME_DNS_RESOLVER must be ip:port (an IP address, "
                          "IPv6 in brackets)") from None
    if not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError("VCC_PKI_ACME_DNS_RESOLVER must be host:port (port 1..65535)")


def _check_otlp_endpoint(text: str) -> None:
    """``console`` or the http(s) URL of an OTLP/HTTP collector (gateway/observability.py)."""
    if text == "console":
        return
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
            or parts.query or parts.fragment or (port is not None and port == 0):
        raise ConfigError("VCC_PKI_OTLP_ENDPOINT must be console or the http(s) URL of an "
                          "OTLP collector, e.g. http://127.0.0.1:4318")


def load_config(environ: Mapping[str, str] | None = None, path: str | None = None) -> Config:
    env = os.environ if environ is None else environ
    known = {f.name for f in fields(Config)} - {"extra"}
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    config_path = path or env.get("VCC_PKI_CONFIG")
    if config_path:
        try:
            document = tomllib.loads(Path(config_path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {config_path} not found") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            # TOML is UTF-8 (toml.io 1.0): another encoding is a config error, not a
            # traceback at start-up (found by fuzz/targets.py config).
            raise ConfigError(f"config file {config_path}: {exc}") from None
        for key, value in _flatten(document).items():
            if key in known:
                values[key] = _coerce(key, value)
            else:
                extra[key] = value
    for name in known:
        env_value = env.get(f"VCC_PKI_{name.upper()}")
        if env_value is not None and env_value != "":
            values[name] = _coerce(name, env_value)
    config = replace(Config(), **values, extra=extra)
    if "workers" not in values:
        config = replace(config, workers=default_workers(config.redis_url))
    if not 1 <= config.workers <= 256:
        raise ConfigError("VCC_PKI_WORKERS must be 1..256, or auto (one per core)")
    if not 1 <= config.admin_session_idle_seconds <= config.admin_session_lifetime_seconds:
        raise ConfigError("VCC_PKI_ADMIN_SESSION_IDLE_SECONDS must be 1.. and at most "
                          "VCC_PKI_ADMIN_SESSION_LIFETIME_SECONDS")
    if config.key_backend not in ("software", "pkcs11"):
        raise ConfigError("VCC_PKI_KEY_BACKEND must be 'software' or 'pkcs11'")
    config.ca_settings()
    config.tsa_settings()
    if not 1 <= config.ocsp_validity_days <= 10:
        raise ConfigError("VCC_PKI_OCSP_VALIDITY_DAYS must be 1..10 (RFC 5019, CA/B BR)")
    if not 2 * config.ocsp_validity_days < config.ocsp_responder_validity_days <= 90:
        raise ConfigError("VCC_PKI_OCSP_RESPONDER_VALIDITY_DAYS must exceed twice the OCSP "
                          "validity and be at most 90 days")
    if config.event_loop not in ("auto", "uvloop", "asyncio"):
        raise ConfigError("VCC_PKI_EVENT_LOOP must be auto, uvloop or asyncio")
    if config.acme_dns_resolver:
        _check_resolver(config.acme_dns_resolver)
    if config.log_format not in ("text", "json"):
        raise ConfigError("VCC_PKI_LOG_FORMAT must be text or json")
    if config.otlp_endpoint:
        _check_otlp_endpoint(config.otlp_endpoint)
    if not 0 <= config.crl_partitions <= 1024 or config.crl_next_update_hours < 1:
        # Each partition is one more distribution point built into every issuing context.
        raise ConfigError("VCC_PKI_CRL_PARTITIONS must be 0..1024 and "
                          "VCC_PKI_CRL_NEXT_UPDATE_HOURS >= 1")
    for name in ("http_max_line_bytes", "http_max_field_bytes"):
        if not 1024 <= getattr(config, name) <= 65536:
            raise ConfigError(f"VCC_PKI_{name.upper()} must be 1024..65536")
    if not 16 <= config.http_max_headers <= 1024:
        raise ConfigError("VCC_PKI_HTTP_MAX_HEADERS must be 16..1024")
    for name, low, high in (("http_keepalive_seconds", 1, 7200),
                            ("http_body_timeout_seconds", 1, 3600),
                            ("http_max_connections_per_client", 0, 1_000_000),
                            ("max_signatures_in_flight", 1, 1_000_000),
                            ("drain_seconds", 0, 300),
                            ("http_keepalive_requests", 0, 1_000_000)):
        if not low <= getattr(config, name) <= high:
            raise ConfigError(f"VCC_PKI_{name.upper()} must be {low}..{high}")
    if not 0 <= config.acme_challenge_wait_seconds <= 30:  # also refuses nan
        raise ConfigError("VCC_PKI_ACME_CHALLENGE_WAIT_SECONDS must be 0..30")
    if not 1024 <= config.est_max_body_bytes <= config.max_body_bytes:
        raise ConfigError("VCC_PKI_EST_MAX_BODY_BYTES must be 1024..VCC_PKI_MAX_BODY_BYTES")
    try:
        parse_networks(config.est_trusted_proxies)
    except ValueError as exc:
        raise ConfigError(f"VCC_PKI_EST_TRUSTED_PROXIES: {exc}") from None
    return config
