"""Mutation testing of the modules where a silent break costs most (issue 19): `make mutation`.

mutmut (configured in pyproject.toml, [tool.mutmut]) copies the packages into ./mutants and
makes the mutants; [tool.mutation] names, per module, the functions to mutate and the test
files its mutants may run against. The run has three steps:

1. ``mutmut run`` of one mutant: makes the mutants and records which test calls which
   function (mutmut's stats, over all of tests/ on SQLite); that mutant's result is reset.
2. The stats are narrowed: a function of module M keeps only the tests in M's test files.
   mutmut then runs each mutant against those of them that call the mutated function.
3. ``mutmut run`` with the selected functions, at most ``max_children`` workers, and the
   table: module | mutants | killed | survived | timeout/suspicious | score%.

``--report`` prints the table (and the survivors) of the last run without running anything;
``--survivors`` lists the surviving mutant names, for ``mutmut show NAME``.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "mutants"
MUTMUT = str(Path(sys.executable).parent / "mutmut")
# mutmut makes the mutants and the stats only inside `run`, which needs a mutant to run:
# step 1 runs this one (one test calls it) and its result is then forgotten.
FIRST_MUTANT = "protocols.acme.jws.x_verify_mac__mutmut_1"

# mutmut's exit codes of a mutant's test run (mutmut/stats.py status_by_exit_code).
KILLED = {1, 3}
SURVIVED = {0}
TIMEOUT = {36, 24, -24, 152, 255}
NO_TESTS = {5, 33}


@dataclass(frozen=True)
class Module:
    name: str
    tests: tuple[str, ...]
    patterns: tuple[str, ...]  # mutmut function keys, fnmatch patterns

    def owns(self, function_key: str) -> bool:
        return any(fnmatch.fnmatchcase(function_key, p) for p in self.patterns)


def function_key(spec: str) -> str:
    """``pkg.mod:Class.method`` or ``pkg.mod:func`` as mutmut names the function."""
    module, _, name = spec.partition(":")
    if name == "*":
        return f"{module}.x*"
    if "." in name:
        cls, method = name.split(".", 1)
        return f"{module}.x\u01c1{cls}\u01c1{method}"
    return f"{module}.x_{name}"


def load_modules() -> tuple[list[Module], int]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutation"]
    modules = [
        Module(name, tuple(spec["tests"]), tuple(function_key(f) for f in spec["functions"]))
        for name, spec in config["modules"].items()
    ]
    return modules, int(config.get("max_children", 2))


def mutmut(*args: str) -> None:
    started = time.monotonic()
    log = MUTANTS.parent / "mutants.log"
    with log.open("a") as out:
        code = subprocess.call([MUTMUT, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    print(f"  mutmut {args[0]}: {time.monotonic() - started:.0f}s (output in {log.name})",
          flush=True)
    # mutmut exits 0 even when mutants survive; anything else is a broken run.
    if code != 0:
        sys.exit(f"mutmut {' '.join(args)} failed with exit code {code}; see mutants.log")


def narrow_stats(modules: list[Module]) -> None:
    path = MUTANTS / "mutmut-stats.json"
    stats = json.loads(path.read_text())
    tests_by_function: dict[str, list[str]] = stats["tests_by_mangled_function_name"]
    for key, tests in tests_by_function.items():
        owner = next((m for m in modules if m.owns(key)), None)
        if owner is not None:
            tests_by_function[key] = [t for t in tests if t.split("::")[0] in owner.tests]
    path.write_text(json.dumps(stats, indent=4))


def forget_results(only_survivors: bool = False) -> None:
    """Step 1's mutant is run again in step 3 against its narrowed tests; so are survivors
    when ./mutants is reused (new tests may kill them)."""
    for meta in MUTANTS.rglob("*.meta"):
        data = json.loads(meta.read_text())
        data["exit_code_by_key"] = {
            name: None if (not only_survivors or name == FIRST_MUTANT
                           or code in SURVIVED | NO_TESTS) else code
            for name, code in data["exit_code_by_key"].items()}
        meta.write_text(json.dumps(data, indent=4))


def results() -> dict[str, int | None]:
    exit_codes: dict[str, int | None] = {}
    for meta in MUTANTS.rglob("*.meta"):
        exit_codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return exit_codes


def mutant_function(mutant: str) -> str:
    return mutant.rsplit("__mutmut_", 1)[0]


def report(modules: list[Module], show_survivors: bool) -> list[str]:
    exit_codes = results()
    rows: list[tuple[str, list[int]]] = []
    survivors: list[str] = []
    for module in modules:
        codes = [(name, code) for name, code in sorted(exit_codes.items())
                 if module.owns(mutant_function(name))]
        killed = sum(code in KILLED for _, code in codes)
        # A mutant that no selected test reaches survives too: nothing would notice it.
        survived = [name for name, code in codes if code in SURVIVED | NO_TESTS]
        unchecked = sum(code is None for _, code in codes)
        other = len(codes) - killed - len(survived) - unchecked
        survivors += survived
        rows.append((module.name, [len(codes), killed, len(survived), other, unchecked]))
    rows.append(("TOTAL", [sum(counts[i] for _, counts in rows) for i in range(5)]))
    header = (f"{'module':<10} | {'mutants':>7} | {'killed':>6} | {'survived':>8} | "
              f"{'timeout/suspicious':>18} | {'score%':>6}")
    print(header)
    print("-" * len(header))
    for name, (total, dead, alive, odd, not_run) in rows:
        # score = killed / mutants run; a timeout or crash counts against it.
        checked = total - not_run
        score = f"{100.0 * dead / checked:6.1f}" if checked else "     -"
        print(f"{name:<10} | {total:>7} | {dead:>6} | {alive:>8} | {odd:>18} | {score}"
              + (f"   ({not_run} not run)" if not_run else ""))
    # A misspelt function would silently leave its code unmutated.
    functions = {mutant_function(name) for name in exit_codes}
    for module in modules:
        for pattern in module.patterns:
            if not any(fnmatch.fnmatchcase(f, pattern) for f in functions):
                print(f"warning: {module.name}: no mutant matches {pattern}")
    if show_survivors:
        for name in survivors:
            print(name)
    return survivors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only print the last run's table")
    parser.add_argument("--survivors", action="store_true", help="list the surviving mutants")
    parser.add_argument("--keep", action="store_true",
                        help="reuse ./mutants: keep the killed, run the survivors and the "
                             "unchecked again (after adding tests)")
    args = parser.parse_args()
    modules, max_children = load_modules()
    if not args.report:
        started = time.monotonic()
        if not args.keep:
            shutil.rmtree(MUTANTS, ignore_errors=True)
        (MUTANTS.parent / "mutants.log").unlink(missing_ok=True)
        print("mutation: generating mutants and collecting stats", flush=True)
        # With --keep mutmut collects stats only for tests it has not seen yet.
        mutmut("run", "--max-children", str(max_children), FIRST_MUTANT)
        narrow_stats(modules)
        forget_results(only_survivors=args.keep)
        print("mutation: running the mutants", flush=True)
        patterns = [f"{p}__mutmut_*" for m in modules for p in m.patterns]
        mutmut("run", "--max-children", str(max_children), *patterns)
        print(f"mutation: done in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    report(modules, args.survivors)


if __name__ == "__main__":
    main()
