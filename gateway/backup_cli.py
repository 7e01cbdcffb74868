"""``vcc-pki backup`` and ``vcc-pki restore``: one archive that rebuilds a PKI elsewhere
(issue 15). The table dump and load are ``db.backup``'s; this module makes the archive.

The archive is a gzip tar:

- ``manifest.json``, first: format and version, when, the source (dialect, schema version,
  the migrations applied), rows and columns per table, the SHA-256 and size of every other
  member, what the keys are and what was left out;
- ``data/<table>.jsonl``: every table (``db.backup``: portable between SQLite and
  PostgreSQL);
- ``files/keys/``: the software CA keys exactly as they are on disk (encrypted PKCS#8,
  never decrypted here); ``files/tls/``: the HTTPS certificate and key; ``files/ca/``: the
  exported CA certificates;
- ``config/<name>``: the TOML config file, if there is one, with the key passphrase and
  PKCS#11 PIN lines and URL passwords taken out.

Never in it: the key passphrase (the restored instance needs the same
``VCC_PKI_KEY_PASSPHRASE`` or passphrase file), the PKCS#11 keys (only their references:
the token must hold them), Redis (caches, nonces, rate limits: rebuilt at start) and job
leases.

Restore checks every member against the manifest before it writes anything, refuses a
schema newer than this code and a target that holds data (unless ``--force``), loads the
tables in one transaction, then copies the files, applies migrations newer than the
archive, verifies the audit chain, opens every CA key and compares row counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

from ca_core.principal import Principal
from db import backup as dump_io
from gateway.config import Config, ConfigError, _flatten
from gateway.runtime import _passphrase, make_store, open_services, require_pki

FORMAT = "vcc-pki-backup"
FORMAT_VERSION = 1
CLI = Principal.system("vcc-pki restore")
# Parts of the data directory that go into the archive as they are (the passphrase file and
# the SQLite database do not: the one is a secret, the other is dumped table by table).
FILE_DIRS = ("keys", "tls", "ca")
_SECRET_KEYS = ("key_passphrase", "pkcs11_pin")
_SECRET_LINE = re.compile(r"^(\s*)(key_passphrase|passphrase|pkcs11_pin|pin)(\s*=).*$",
                          re.MULTILINE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s\"']+):[^@\s\"']+@")

BACKUP_HELP = """\
Write one archive (tar.gz) that rebuilds this PKI: every table of the database (JSON Lines,
portable between SQLite and PostgreSQL) read in one transaction, the software keys as
they are (encrypted PKCS#8: never decrypted), the TLS and exported CA certificates, and the
config file with its secrets taken out, with a manifest of SHA-256 per member. NOT in the
archive: the key passphrase (keep VCC_PKI_KEY_PASSPHRASE or the passphrase file apart: the
restored instance needs the same one), PKCS#11 keys (the manifest lists their references;
the token must hold them), Redis state (caches, rebuilt at start). It can run while the
gateway serves."""

RESTORE_HELP = """\
Rebuild a PKI from a `vcc-pki backup` archive into the data directory and database THIS
configuration names (VCC_PKI_DATA_DIR, VCC_PKI_DATABASE_URL; a SQLite archive restores into
PostgreSQL and back). Give it the same key passphrase as the original (VCC_PKI_KEY_PASSPHRASE
or the passphrase file in the new data directory). It checks every member's SHA-256 first,
refuses an archive of a newer schema, and refuses a database or data directory that holds
data unless --force; loads all tables in one transaction, copies the keys and
certificates, migrates an older schema, verifies the audit chain and prints the counts.
Stop the gateways of the target before restoring; start them after."""


class Progress:
    """Rows per table: one line rewritten in place on a terminal, one line per finished
    table otherwise (logs, the systemd journal)."""

    def __init__(self, verb: str, stream: IO[str] | None = None) -> None:
        self.verb = verb
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, table: str, done: int, total: int) -> None:
        finished = done >= total
        if self.tty:
            end = "\n" if finished else ""
            self.stream.write(f"\r\x1b[K{self.verb} {table}: {done}/{total} rows{end}")
            self.stream.flush()
        elif finished:
            print(f"{self.verb} {table}: {done} rows", file=self.stream, flush=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _config_path(args: argparse.Namespace) -> Path | None:
    named = getattr(args, "config", None) or os.environ.get("VCC_PKI_CONFIG")
    return Path(named) if named else None


def redact_config(text: str) -> str | None:
    """The config file without its secrets, or None when they cannot be taken out safely
    (the file is then left out of the archive)."""
    redacted = _SECRET_LINE.sub(r"\1# \2\3 (removed by vcc-pki backup)", text)
    redacted = _URL_PASSWORD.sub(r"\1:REDACTED@", redacted)
    try:
        flat = _flatten(tomllib.loads(redacted))
    except tomllib.TOMLDecodeError:
        return None
    if any(flat.get(key) for key in _SECRET_KEYS):
        return None
    return redacted


def _data_files(config: Config) -> list[tuple[Path, str]]:
    """(file, archive name) of the keys, TLS and CA directories."""
    found: list[tuple[Path, str]] = []
    for name in FILE_DIRS:
        root = config.data_dir / name
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                found.append((path, f"files/{name}/{path.relative_to(root).as_posix()}"))
    return found


async def cmd_backup(config: Config, args: argparse.Namespace) -> int:
    require_pki(config)
    out = Path(args.out)
    progress = Progress("dumped")
    with tempfile.TemporaryDirectory(prefix="vcc-pki-backup-") as tmp:
        work = Path(tmp)
        (work / "data").mkdir()
        dumped = await dump_io.dump(config.effective_database_url, work / "data", progress)
        counts = {t.name: t.rows for t in dumped.tables}
        if not counts.get("certificate_authorities"):
            raise ConfigError("no PKI in this database: it holds no CA (nothing to back up)")
        members: list[tuple[Path, str]] = [(t.path, f"data/{t.name}.jsonl")
                                           for t in dumped.tables]
        members += _data_files(config)
        notes: list[str] = []
        config_path = _config_path(args)
        if config_path is not None and config_path.is_file():
            redacted = redact_config(config_path.read_text(encoding="utf-8"))
            if redacted is None:
                notes.append(f"config file {config_path} left out: its secrets could not "
                             "be taken out")
            else:
                copy = work / "config.toml"
                copy.write_text(redacted, encoding="utf-8")
                members.append((copy, f"config/{config_path.name}"))
        software_keys = sum(1 for _, name in members if name.startswith("files/keys/"))
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "created_at": dump_io.time_text(dt.datetime.now(dt.UTC)),
            "source": {
                "dialect": dumped.dialect,
                "schema_version": dumped.schema_version,
                "migrations": list(dumped.migrations),
                "data_dir": str(config.data_dir),
                "key_backend": config.key_backend,
            },
            "tables": [{"name": t.name, "rows": t.rows,
                        "columns": dump_io.column_document(t.columns)}
                       for t in dumped.tables],
            "keys": {
                "software": {"files": software_keys, "member_prefix": "files/keys/",
                             "encrypted": True},
                "passphrase": "not in the archive: the restored instance needs the same "
                              "VCC_PKI_KEY_PASSPHRASE or passphrase file",
                "pkcs11": list(dumped.pkcs11_keys),
                "pkcs11_note": "references only: the PKCS#11 token of the restored instance "
                               "must hold these keys" if dumped.pkcs11_keys else "",
            },
            "excluded": ["the key passphrase", "PKCS#11 private keys (references only)",
                         "Redis state (OCSP cache, ACME nonces, rate limits)",
                         "job_locks (leases of running processes)"],
            "notes": notes,
            "members": {name: {"sha256": _sha256(path), "size": path.stat().st_size}
                        for path, name in members},
        }
        partial = out.with_name(out.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz",
                                                          compresslevel=6) as tar:
                body = json.dumps(manifest, indent=2, sort_keys=True).encode()
                info = tarfile.TarInfo("manifest.json")
                info.size, info.mode = len(body), 0o600
                info.mtime = int(dt.datetime.now().timestamp())
                tar.addfile(info, io.BytesIO(body))
                for path, name in members:
                    tar.add(path, arcname=name, recursive=False)
            partial.replace(out)
        except BaseException:
            partial.unlink(missing_ok=True)  # never leave half an archive behind
            raise
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    total = sum(counts.values())
    print(f"backup written to {out}: {len(counts)} tables, {total} rows "
          f"({dumped.dialect}, schema {dumped.schema_version}), {software_keys} key file(s)")
    if dumped.pkcs11_keys:
        print(f"note: {len(dumped.pkcs11_keys)} PKCS#11 key(s) are referenced, not copied: "
              "back up the token itself")
    print("the key passphrase is not in the archive: keep it apart")
    return 0


# --- restore --------------------------------------------------------------------------------

def _read_archive(archive: Path, into: Path) -> dict[str, Any]:
    """Unpack ``archive`` into ``into`` and check it against its manifest; the manifest."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            names = tar.getnames()
            if "manifest.json" not in names:
                raise ConfigError(f"{archive}: not a vcc-pki backup (no manifest.json)")
            if len(set(names)) != len(names):
                raise ConfigError(f"{archive}: a member appears twice")
            # "data": no absolute paths, links out of the tree or device files.
            tar.extractall(into, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ConfigError(f"{archive}: not a readable backup archive ({exc})") from None
    try:
        manifest: dict[str, Any] = json.loads((into / "manifest.json").read_text("utf-8"))
    except ValueError as exc:
        raise ConfigError(f"{archive}: manifest.json is not JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{archive}: not a vcc-pki backup")
    if manifest.get("version") != FORMAT_VERSION:
        raise ConfigError(f"{archive}: archive format {manifest.get('version')} is not "
                          f"{FORMAT_VERSION}; use the vcc-pki release that wrote it")
    listed: dict[str, Any] = manifest.get("members", {})
    present = {p.relative_to(into).as_posix() for p in into.rglob("*") if p.is_file()}
    present.discard("manifest.json")
    if present != set(listed):
        extra, missing = sorted(present - set(listed)), sorted(set(listed) - present)
        raise ConfigError(f"{archive}: members do not match the manifest (not listed: "
                          f"{extra or 'none'}; missing: {missing or 'none'})")
    for name, entry in sorted(listed.items()):
        if _sha256(into / name) != entry.get("sha256"):
            raise ConfigError(f"{archive}: {name} does not match its SHA-256 in the manifest "
                              "(the archive was changed or damaged); nothing was restored")
    return manifest


def _occupied(config: Config) -> list[str]:
    return [name for name in FILE_DIRS
            if (config.data_dir / name).is_dir() and any((config.data_dir / name).iterdir())]


def _copy_files(unpacked: Path, config: Config) -> int:
    copied = 0
    root = unpacked / "files"
    if not root.is_dir():
        return 0
    config.data_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        target = config.data_dir / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.copyfile(path, target)
        # Keys and the TLS key stay readable by the owner only, whatever the tar said.
        os.chmod(target, 0o600 if path.relative_to(root).parts[0] in ("keys", "tls")
                 else 0o644)
        copied += 1
    keys = config.data_dir / "keys"
    if keys.is_dir():
        os.chmod(keys, 0o700)
    return copied


async def _migrate(config: Config, upto: int | None) -> None:
    """Create the target's schema (up to ``upto``) by opening its store."""
    store = make_store(config)
    dialect = getattr(store, "dialect", None)
    if dialect is not None:
        dialect.migrate_upto = upto
    await store.open()
    await store.close()


async def cmd_restore(config: Config, args: argparse.Namespace) -> int:
    archive = Path(args.archive)
    with tempfile.TemporaryDirectory(prefix="vcc-pki-restore-") as tmp:
        unpacked = Path(tmp)
        manifest = _read_archive(archive, unpacked)
        source = manifest["source"]
        version = int(source["schema_version"])
        latest = dump_io.latest_schema_version()
        if version > latest:
            raise ConfigError(f"{archive}: schema version {version} is newer than this "
                              f"vcc-pki's ({latest}); restore with the release that wrote it")
        occupied = _occupied(config)
        if occupied and not args.force:
            raise ConfigError(f"the data directory {config.data_dir} is not empty "
                              f"({', '.join(occupied)}); restore into a new one, or use "
                              "--force to overwrite")
        if manifest["keys"]["software"]["files"] and config.key_backend == "software":
            _passphrase(config, create=False)  # refuse now, before anything is written
        hsm = manifest["keys"].get("pkcs11") or []
        if hsm:
            print(f"warning: {len(hsm)} CA key(s) are on a PKCS#11 token, not in the "
                  f"archive: token {config.pkcs11_token_label!r} of {config.pkcs11_module} "
                  f"must hold them ({', '.join(sorted({k['key_ref'] for k in hsm}))})",
                  file=sys.stderr)
        if config.effective_database_url.startswith("sqlite:///"):
            config.data_dir.mkdir(parents=True, exist_ok=True)
        url = config.effective_database_url
        await _migrate(config, version if version < latest else None)
        tables = manifest["tables"]
        plan = dump_io.LoadPlan(
            files={t["name"]: unpacked / "data" / f"{t['name']}.jsonl" for t in tables},
            expected={t["name"]: int(t["rows"]) for t in tables}, force=args.force)
        try:
            loaded = await dump_io.load(url, plan, Progress("loaded"))
        except dump_io.BackupError as exc:
            raise ConfigError(str(exc)) from None
        copied = _copy_files(unpacked, config)
        if (unpacked / "config").is_dir():
            kept = config.data_dir / "restored-config"
            shutil.copytree(unpacked / "config", kept, dirs_exist_ok=True)
            print(f"the original's config file (secrets removed) is in {kept}",
                  file=sys.stderr)
    if version < latest:
        await _migrate(config, None)
        print(f"migrated the schema from version {version} to {latest}")
    return await _verify(config, manifest, loaded, copied)


async def _verify(config: Config, manifest: dict[str, Any], loaded: dict[str, int],
                  copied: int) -> int:
    expected = {t["name"]: int(t["rows"]) for t in manifest["tables"]}
    counts = await dump_io.count_rows(config.effective_database_url)
    wrong = {name: (rows, counts.get(name)) for name, rows in expected.items()
             if counts.get(name) != rows or loaded.get(name) != rows}
    async with open_services(config) as services:
        verification = await services.admin.verify_audit(CLI)
        await services.authority.load()  # every CA key opens with this passphrase / token
    print(f"{'TABLE':<28} ROWS")
    for name in sorted(expected):
        print(f"{name:<28} {counts.get(name, 0)}")
    print(f"restored {sum(loaded.values())} rows into {manifest['source']['dialect']}->"
          f"{'sqlite' if config.effective_database_url.startswith('sqlite') else 'postgresql'}"
          f" and {copied} file(s) into {config.data_dir}")
    status = 0
    if wrong:
        for name, (want, have) in sorted(wrong.items()):
            print(f"error: {name}: {have} rows, the archive has {want}", file=sys.stderr)
        status = 1
    if verification.intact:
        print(f"audit log intact: {verification.entries} entries, chain verified")
    else:
        for problem in verification.problems:
            print(f"seq {problem.seq}: {problem.problem}")
        print(f"audit log BROKEN: {len(verification.problems)} problem(s)")
        status = 1
    return status


Command = Callable[[Config, argparse.Namespace], Awaitable[int]]


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                 command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register ``backup`` and ``restore`` (``command`` is gateway.cli's helper)."""
    raw = argparse.RawDescriptionHelpFormatter
    backup = command(sub, "backup", "write one archive of the PKI: database, encrypted keys, "
                     "certificates, config (not the passphrase)", cmd_backup,
                     formatter_class=raw)
    backup.description = BACKUP_HELP
    backup.add_argument("--out", metavar="FILE", required=True,
                        help="the archive to write (tar.gz; written whole, then renamed)")
    restore = command(sub, "restore", "rebuild a PKI from a backup archive into this "
                      "configuration's data directory and database", cmd_restore,
                      formatter_class=raw)
    restore.description = RESTORE_HELP
    restore.add_argument("archive", metavar="FILE", help="a `vcc-pki backup` archive")
    restore.add_argument("--force", action="store_true",
                         help="replace what the target database and data directory hold")
