"""The layering of DESIGN.md, checked on the source: ca_core does no network I/O (the
ACME validator, which does, lives in ``va`` behind ``ca_core.acme.ChallengeValidator``)
and depends on no front-end and no storage backend; protocols reach neither storage nor
keys (DESIGN.md: "protocols import nothing from db ... nor asyncpg or python-pkcs11")."""

from __future__ import annotations

import ast
from pathlib import Path

import ca_core

# Top-level packages no module under ca_core may import: the HTTP stack and the DNS
# resolver (network I/O belongs to the validation authority) and the layers above ca_core.
# Storage is reached through the interfaces ca_core declares (ca_core.storage), never db.
FORBIDDEN_IN_CORE = frozenset({"aiohttp", "dns", "aiodns", "pycares", "gateway", "protocols",
                               "va", "db", "asyncpg", "redis"})
# Front-ends see ca_core's records and errors only: no storage, no key handling.
FORBIDDEN_IN_PROTOCOLS = frozenset({"db", "asyncpg", "redis", "pkcs11", "sqlite3"})


def _imported_packages(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_ca_core_imports_no_network_stack_and_no_front_end() -> None:
    root = Path(ca_core.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 10  # the walk found the package
    offenders = {str(path.relative_to(root)): sorted(_imported_packages(path)
                                                     & FORBIDDEN_IN_CORE)
                 for path in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_protocols_import_no_storage_and_no_key_handling() -> None:
    root = Path(ca_core.__file__).parent.parent / "protocols"
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 5
    offenders = {str(path.relative_to(root)): sorted(_imported_packages(path)
                                                     & FORBIDDEN_IN_PROTOCOLS)
                 for path in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_import_walk_sees_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import aiohttp.web\nfrom dns import resolver\n"
                      "def f():\n    import va.validator\nfrom . import sibling\n")
    assert _imported_packages(sample) == {"aiohttp", "dns", "va"}
