"""Gateway configuration: one TOML file (``VCC_PKI_CONFIG``) plus ``VCC_PKI_*`` overrides.

Precedence: environment > TOML file > defaults. Every setting has an environment name, so
a container is configured by environment alone. See ``deploy/vcc-pki.example.toml``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ca_core.authority import CASettings
from ca_core.keys import KeySpec


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
    workers: int = 1  # serving processes sharing the ports (SO_REUSEPORT)
    log_level: str = "INFO"
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
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc


def _host(bind: str) -> str:
    if bind in ("0.0.0.0", "::", ""):
        return "localhost"
    return f"[{bind}]" if ":" in bind else bind


_INT_FIELDS = {"http_port", "https_port", "pkcs11_max_sessions", "max_body_bytes", "workers"}


def _coerce(name: str, value: Any) -> Any:
    try:
        if name in _INT_FIELDS:
            return int(value)
        if name == "data_dir":
            return Path(value)
        if name == "tls_hostnames":
            if isinstance(value, str):
                return tuple(v.strip() for v in value.split(",") if v.strip())
            return tuple(str(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {value!r}") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value


def _flatten(document: Mapping[str, Any]) -> dict[str, Any]:
    """``[pkcs11] module = ...`` and ``pkcs11_module = ...`` mean the same."""
    flat: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, Mapping) and key in ("pkcs11", "ca", "server", "keys", "database"):
            for inner, inner_value in value.items():
                prefix = {"ca": "", "server": "", "database": "", "keys": "key_"}.get(
                    key, f"{key}_")
                flat[f"{prefix}{inner}"] = inner_value
        else:
            flat[key] = value
    return flat


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
        except tomllib.TOMLDecodeError as exc:
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
    if config.key_backend not in ("software", "pkcs11"):
        raise ConfigError("VCC_PKI_KEY_BACKEND must be 'software' or 'pkcs11'")
    config.ca_settings()
    return config
