"""Run one fuzz target (fuzz/targets.py) under atheris, or replay a corpus without it.

    python -m fuzz.run TARGET --seconds 300          # make fuzz: coverage-guided, long
    python -m fuzz.run TARGET --runs 2000 --seed 1   # make test: bounded, deterministic
    python -m fuzz.run TARGET --replay               # the corpus and crashes, no atheris
    python -m fuzz.run TARGET --merge                # keep what a long run found

The corpus of a target is fuzz/corpus/TARGET (seeds from fuzz/make_seeds.py, plus what a
long run found worth keeping); libFuzzer writes the inputs it finds to a scratch directory
first (fuzz/corpus-new/TARGET, not committed), so a short run never changes the repository.
A crash is written to fuzz/crashes/ and the process exits non-zero.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def corpus_dir(target: str) -> Path:
    return HERE / "corpus" / target


def replay(name: str) -> int:
    from fuzz.targets import TARGETS

    target = TARGETS[name]
    failures = 0
    files = sorted(corpus_dir(name).glob("*")) + sorted((HERE / "regressions" / name).glob("*"))
    for path in files:
        try:
            target(path.read_bytes())
        except Exception:
            failures += 1
            print(f"{path}:", file=sys.stderr)
            traceback.print_exc()
    print(f"{name}: {len(files)} inputs replayed, {failures} crashes")
    return 1 if failures else 0


def _instrumented(name: str, light: bool) -> Any:
    import atheris  # type: ignore[import-untyped]  # no stubs

    # The libraries whose parsers the targets drive are instrumented too, except in the
    # short runs of make test, where instrumenting them costs seconds per target.
    packages = ["ca_core", "protocols", "gateway", "fuzz"]
    if not light:
        packages += ["asn1crypto", "josepy"]
    with atheris.instrument_imports(include=packages):
        from fuzz.targets import TARGETS
    return atheris, TARGETS[name]


def libfuzzer(name: str, arguments: list[str]) -> int:
    """libFuzzer with these arguments as given: what -merge=1 runs in its child processes,
    which it starts as ``<argv[0]> <arguments>`` through the shell."""
    atheris, target = _instrumented(name, light=False)
    command = f"{shlex.quote(sys.executable)} -m fuzz.run {shlex.quote(name)} --libfuzzer"
    atheris.Setup([command, *arguments], target)
    atheris.Fuzz()
    return 0


def merge(name: str) -> int:
    """Add to fuzz/corpus/TARGET the inputs of fuzz/corpus-new/TARGET that reach coverage
    the corpus does not (libFuzzer -merge=1), then empty corpus-new/TARGET."""
    found = HERE / "corpus-new" / name
    arguments = ["-merge=1", str(corpus_dir(name)), str(found)]
    result = subprocess.run([sys.executable, "-m", "fuzz.run", name, "--libfuzzer",
                             *arguments], cwd=HERE.parent, check=False)
    if result.returncode == 0:
        shutil.rmtree(found, ignore_errors=True)
    return result.returncode


def fuzz(name: str, seconds: int | None, runs: int | None, seed: int | None,
         max_len: int, scratch: Path | None, light: bool = False) -> int:
    atheris, target = _instrumented(name, light)
    scratch = scratch or HERE / "corpus-new" / name
    scratch.mkdir(parents=True, exist_ok=True)
    crashes = scratch.parent / "crashes" if scratch != HERE / "corpus-new" / name \
        else HERE / "crashes"
    crashes.mkdir(exist_ok=True)
    argv = [sys.argv[0], str(scratch), str(corpus_dir(name)),
            f"-artifact_prefix={crashes}/{name}-", f"-max_len={max_len}",
            "-rss_limit_mb=2048", "-timeout=20", "-print_final_stats=1"]
    if seconds is not None:
        argv.append(f"-max_total_time={seconds}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seed is not None:
        argv.append(f"-seed={seed}")
    atheris.Setup(argv, target)
    atheris.Fuzz()  # exits the process: 0 when the budget ran out without a crash
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target")
    parser.add_argument("--seconds", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--max-len", type=int, default=16384)
    parser.add_argument("--replay", action="store_true")
    parser.add_argument("--light", action="store_true",
                        help="instrument only this project's packages (quick start)")
    parser.add_argument("--scratch", type=Path,
                        help="where new inputs go (default fuzz/corpus-new/TARGET)")
    parser.add_argument("--merge", action="store_true",
                        help="merge what corpus-new/TARGET adds into corpus/TARGET")
    parser.add_argument("--libfuzzer", action="store_true",
                        help="pass the remaining arguments to libFuzzer as they are")
    args, rest = parser.parse_known_args()
    if args.libfuzzer:
        return libfuzzer(args.target, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.replay:
        return replay(args.target)
    if args.merge:
        return merge(args.target)
    return fuzz(args.target, args.seconds, args.runs, args.seed, args.max_len, args.scratch,
                args.light)


if __name__ == "__main__":
    sys.exit(main())
