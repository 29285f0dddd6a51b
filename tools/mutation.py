"""Mutation testing of the security- and correctness-critical modules, one command per re-run.

    python tools/mutation.py --fresh           # every module set from scratch, then the report
    python tools/mutation.py listener tokens   # some of them (carrying on from the last run)
    python tools/mutation.py --survivors       # re-run last time's unexplained survivors
    python tools/mutation.py --report          # the report of the last runs, nothing re-run
    python tools/mutation.py --list            # the sets, their modules and their tests

Each module set is mutated by mutmut (the dev extra) against the tests that check it, in a
scratch copy of the worktree (`--workdir`, default $TMPDIR/quantum-mutation/<set>) that holds
the sources and no compiled extension: mutmut rewrites each function into a trampoline that
picks the original or one mutant at call time, which only plain Python can do (an extension
beside a source would also be imported instead of it). So the runs are on the pure-Python
build, which the suite proves identical to the compiled one.

The report (printed, and written as JSON beside each run) gives per module: killed (by a
failing test: a test that runs ten times its unmutated CPU time fails as looping, see
tests/conftest.py), timeout (mutmut's own CPU limit for a whole mutant), survived, equivalent
(a survivor matched by an entry of `tools/mutation-equivalents.toml`, which says why no test
can tell it from the original), untested (a stopped run) and left out (registered equivalents
a run did not test: they survive by definition), and the score, (killed + timeout) /
(killed + timeout + survived - equivalent). Every survivor that is not explained is printed
with its diff: kill it with a test or explain it there. docs/TESTING.md holds the latest
figures.

Tests run with the deterministic "ci" hypothesis profile, so a survivor is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "tools" / "mutation-equivalents.toml"
#: packages and top-level modules copied into mutmut's tree (everything the tests import)
SOURCES = ["quantum", "session", "quantum_server", "server.py"]
ALSO_COPY = ["benchmarks", "examples", "docs", "README.md", "setup.py", "tests"]
#: mutmut's timeout_multiplier (see mutmut_config)
TIMEOUT_MULTIPLIER = 2.0


@dataclass(frozen=True)
class ModuleSet:
    """What one run mutates, and the tests that must notice."""

    files: tuple[str, ...]
    tests: tuple[str, ...]
    #: mutmut name globs narrowing the mutants (a class of a larger file); empty: all of `files`
    names: tuple[str, ...] = ()
    #: pytest -k expression narrowing the tests (e.g. to leave the etcd store out)
    keyword: str = ""
    #: test node ids left out: slow ones whose every check a faster selected test makes too
    deselect: tuple[str, ...] = ()
    why: str = ""


SETS: dict[str, ModuleSet] = {
    "listener": ModuleSet(
        ("quantum/listener.py",),
        ("tests/test_listener.py", "tests/test_listener_proof.py", "tests/test_listener_edges.py",
         "tests/test_limits.py"),
        # 2,000 handshakes (11 s interpreted); charging a handshake twice also fails
        # test_retry_mode_charges_each_handshake_exactly_once
        deselect=("tests/test_listener.py::"
                  "test_a_nat_of_many_clients_completes_every_handshake_its_rate_allows",),
        why="the front door: rate limits, caps, cookies, amplification"),
    "handshake": ModuleSet(
        ("quantum/handshake.py",),
        ("tests/test_handshake.py", "tests/test_listener.py", "tests/test_client_reject.py",
         "tests/test_handshake_proof.py", "tests/test_tokens_timing.py"),
        # as in the listener set: 2,000 handshakes whose every check a faster test makes
        deselect=("tests/test_listener.py::"
                  "test_a_nat_of_many_clients_completes_every_handshake_its_rate_allows",),
        why="hellos, cookies, retry secrets, key schedule"),
    "crypto": ModuleSet(
        ("quantum/crypto.py",),
        ("tests/test_crypto.py", "tests/test_handshake.py"),
        why="AEAD packet protection and nonces"),
    "reliability": ModuleSet(
        ("quantum/reliability.py",),
        ("tests/test_reliability.py", "tests/test_reliability_edges.py", "tests/test_serial.py",
         "tests/test_serial_boundaries.py"),
        why="SACK, loss detection, RTO, replay window"),
    "packet": ModuleSet(
        ("quantum/packet.py",),
        ("tests/test_packet.py", "tests/test_packet_boundaries.py"),
        why="the wire format"),
    "migration": ModuleSet(
        ("quantum/migration.py",),
        ("tests/test_migration.py", "tests/test_path_validation.py"),
        why="path validation and the 3x budget"),
    "connection": ModuleSet(
        ("quantum/connection.py",),
        ("tests/test_connection.py", "tests/test_migration.py", "tests/test_client_reject.py",
         "tests/test_protocol_violation.py", "tests/test_carryover.py",
         "tests/test_fec_adaptive.py", "tests/test_idle_footprint.py", "tests/test_key_update.py",
         "tests/test_pmtu_connection.py", "tests/test_spec_conformance.py",
         "tests/test_handshake.py", "tests/test_connection_lifecycle.py",
         "tests/test_connection_receive.py", "tests/test_connection_send.py"),
        # left out, as the slowest under mutmut's trampolines (68 s of the set's 91 s): 7,000
        # packets each way through three key updates (the other key-update tests stay), the
        # two loss-meter runs of FEC (quantum/fec.py's, which tests/test_fec* check) and the
        # credentials property (the handshake set's)
        deselect=("tests/test_key_update.py::"
                  "test_three_times_the_per_key_limit_flows_without_interruption",
                  "tests/test_fec_adaptive.py::test_parity_rises_with_the_loss_measured",
                  "tests/test_handshake.py::test_credentials_round_trip"),
        why="the connection state machine and packet pipeline"),
    "tokens": ModuleSet(
        ("session/tokens.py",),
        ("tests/test_session_tokens.py", "tests/test_tokens_timing.py"),
        why="resume tokens, constant-time comparison"),
    "manager": ModuleSet(
        ("session/manager.py",),
        ("tests/test_session_manager.py", "tests/test_session_unclaimed.py",
         "tests/test_session_watch.py"),
        keyword="not etcd",
        why="the session service: tokens, resume, limits, heartbeats"),
    "memory": ModuleSet(
        ("session/memory.py",),
        ("tests/test_session_memory.py", "tests/test_session_store_contract.py",
         "tests/test_session_unclaimed.py"),
        keyword="not etcd",
        why="the in-memory store and its indexes"),
    "bridge": ModuleSet(
        ("server.py",),
        ("tests/test_bridge.py", "tests/test_bridge_edges.py", "tests/test_server_app_api.py"),
        names=("server.xǁSessionBridgeǁ*",),
        why="the event -> session table"),
}

# mutmut's exit codes, as its `results` names them
_KILLED = {1, 3}
_TIMEOUT = {24, -24, 36, 152, 255}
_SURVIVED = {0}
_NO_TESTS = {5, 33}
_TYPE = {37}


@dataclass
class ModuleScore:
    killed: int = 0
    timeout: int = 0
    survived: int = 0
    equivalent: int = 0
    no_tests: int = 0
    #: not yet run (a run stopped part-way): outside the score, and printed beside it
    untested: int = 0
    #: registered equivalents not run (they survive by definition): outside the score
    skipped: int = 0
    #: caught mutants an equivalent entry matches: the entry is too broad or stale
    overbroad: list[str] = field(default_factory=list)
    other: int = 0
    survivors: list[dict[str, str]] = field(default_factory=list)

    @property
    def score(self) -> float:
        """Caught / non-equivalent; a mutant no selected test even runs counts as missed."""
        caught = self.killed + self.timeout
        relevant = caught + self.survived + self.no_tests - self.equivalent
        return 100.0 * caught / relevant if relevant else 100.0


def scratch_copy(target: Path, fresh: bool) -> None:
    """The worktree's files as git sees them (tracked, and new files not ignored), minus
    compiled extensions and the C clients, into `target` (emptied first if `fresh`; otherwise
    mutmut carries on from its last results there, re-testing what changed)."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    if fresh and target.exists():
        shutil.rmtree(target)
    for name in listed:
        if not name or name.startswith(("clients/", ".ci")) or name.endswith(".so"):
            continue
        source = ROOT / name
        if not source.is_file():
            continue  # deleted in the worktree, not yet in the index
        destination = target / name
        if name == "pyproject.toml" or _read(destination) != source.read_bytes():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
            if name.startswith(tuple(SOURCES)):
                # mutmut copies (or mutates) a source into mutants/ only when it is missing
                (target / "mutants" / name).unlink(missing_ok=True)


def mutmut_config(module_set: ModuleSet) -> str:
    """The [tool.mutmut] table for one set (appended to the scratch copy's pyproject.toml)."""
    # one process: mutmut drives pytest itself (the suite's two xdist workers would not see
    # its trampolines' mutant switch)
    pytest_args = ["-p", "no:cacheprovider", "-n", "0", "--hypothesis-profile=ci", "-q"]
    if module_set.keyword:
        pytest_args += ["-k", module_set.keyword]
    for node in module_set.deselect:
        pytest_args += ["--deselect", node]
    table = {
        "source_paths": SOURCES,
        "only_mutate": list(module_set.files),
        "also_copy": ALSO_COPY,
        "pytest_add_cli_args": pytest_args,
        "pytest_add_cli_args_test_selection": [t for t in module_set.tests
                                               if (ROOT / t).exists()],
        # the real-server and etcd fixtures start loops and threads: fork each worker from a
        # process that has only imported, never run a test
        "process_isolation": "forkserver",
        "use_git_change_detection": False,
        # a mutant's CPU limit is (its tests' measured time + 1 s) x 2 x this. mutmut's 15
        # gives a looping mutant of a function every test calls (46 s of tests in the
        # connection and handshake sets) 23 minutes; 2 gives it 3 minutes and is still four
        # times what those tests take unmutated, so a mutant that only slows them is not
        # mistaken for one that loops
        "timeout_multiplier": TIMEOUT_MULTIPLIER,
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def run_set(name: str, workdir: Path, max_children: int, fresh: bool, survivors: bool) -> None:
    module_set = SETS[name]
    target = workdir / name
    print(f"== {name}: {', '.join(module_set.files)} against {', '.join(module_set.tests)}",
          flush=True)
    names = list(module_set.names)
    if survivors:
        if not (target / "mutants").exists():
            print("   (never run: nothing to re-run)")
            return
        # a registered equivalent survives by definition: only the unexplained are re-run
        names = [s["mutant"] for score in collect(name, target).values()
                 for s in score.survivors if not s["why"]]
        if not names:
            print("   (no unexplained survivors)")
            return
    scratch_copy(target, fresh)
    with (target / "pyproject.toml").open("a") as pyproject:
        pyproject.write(mutmut_config(module_set))
    # tests/conftest.py orders each mutant's tests fastest first by mutmut's own timings
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1",
               QUANTUM_MUTATION_ORDER=str(target / "mutants" / "mutmut-stats.json"))
    env.pop("CI", None)  # the profile is chosen explicitly above
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)]
    if not survivors:
        # first only mutmut's own set-up: the mutants (a changed function's verdicts reset),
        # the map of which tests reach which function; it stops there, no mutant matching
        # the name. Then every mutant without a verdict is run, but the registered
        # equivalents: they survive by definition, each at the cost of all its tests
        subprocess.run([*command, NO_MUTANT], cwd=target, env=env, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        names, skipped = pending(name, target)
        print(f"   {len(names)} mutants to run, {skipped} registered equivalents left out",
              flush=True)
    if names or survivors:
        subprocess.run([*command, *names], cwd=target, env=env, check=False)
    score = collect(name, target)
    (target / "mutation-report.json").write_text(json.dumps(
        {path: vars(s) for path, s in score.items()}, indent=2))


#: a mutant name no mutant has: `mutmut run NO_MUTANT` prepares a run and stops
NO_MUTANT = "no-such-mutant-prepare-only"


def pending(name: str, target: Path) -> tuple[list[str], int]:
    """The mutants of a set with no verdict yet, less the registered equivalents among
    them (and how many those were)."""
    module_set = SETS[name]
    equivalents = load_equivalents()
    names: list[str] = []
    skipped = 0
    with _in_tree(target):
        for path in module_set.files:
            meta = target / "mutants" / f"{path}.meta"
            if not meta.exists():
                continue
            codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
            for mutant, code in sorted(codes.items()):
                if code is not None:
                    continue
                if module_set.names and not any(fnmatch(mutant, n) for n in module_set.names):
                    continue
                if _explained(mutant, path, equivalents) is not None:
                    skipped += 1
                else:
                    names.append(mutant)
    return names, skipped


def load_equivalents() -> list[dict[str, str]]:
    if not EQUIVALENTS.exists():
        return []
    entries: list[dict[str, str]] = tomllib.loads(EQUIVALENTS.read_text())["equivalent"]
    return entries


def is_equivalent(function: str, diff: str, equivalents: list[dict[str, str]]) -> str | None:
    """The reason a survivor is equivalent, if an entry names its function and its mutated
    line (`line`: the `+` line of the diff, stripped), or, for a mutant that only deletes
    (an argument dropped from its own line), the line it deletes (`removed`, stripped); and,
    where the same line occurs more than once in the function, the unchanged line just
    before it (`after`, stripped) tells the occurrences apart."""
    lines = diff.splitlines()
    added = [line[1:].strip() for line in lines
             if line.startswith("+") and not line.startswith("+++")]
    removed = [line[1:].strip() for line in lines
               if line.startswith("-") and not line.startswith("---")]
    changed = next((i for i, line in enumerate(lines)
                    if line.startswith(("-", "+")) and not line.startswith(("---", "+++"))),
                   None)
    before = lines[changed - 1][1:].strip() if changed else None
    for entry in equivalents:
        if not fnmatch(function, entry["function"]):
            continue
        if "after" in entry and entry["after"] != before:
            continue
        if "line" in entry and entry["line"] in added:
            return entry["why"]
        if "removed" in entry and not added and entry["removed"] in removed:
            return entry["why"]
    return None


def _explained(mutant: str, path: str, equivalents: list[dict[str, str]]) -> str | None:
    """The reason an equivalent entry gives for `mutant`, if one matches it (its diff is
    built only when an entry names its function: building one costs ~40 ms). Inside the
    scratch tree (`_in_tree`)."""
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    function = mutant.rpartition("__mutmut_")[0]
    if not any(fnmatch(function, e["function"]) for e in equivalents):
        return None
    return is_equivalent(function, get_diff_for_mutant(mutant, path=path), equivalents)


def collect(name: str, target: Path) -> dict[str, ModuleScore]:
    """Per mutated file: the verdicts of the last run in `target`, survivors with diffs."""
    module_set = SETS[name]
    equivalents = load_equivalents()
    scores: dict[str, ModuleScore] = {}
    with _in_tree(target):
        from mutmut.mutation.diff_apply import get_diff_for_mutant

        for path in module_set.files:
            meta = target / "mutants" / f"{path}.meta"
            score = scores[path] = ModuleScore()
            if not meta.exists():
                continue
            codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
            for mutant, code in sorted(codes.items()):
                if module_set.names and not any(fnmatch(mutant, n) for n in module_set.names):
                    continue
                if code in _KILLED or code in _TYPE or code in _TIMEOUT:
                    if code in _TIMEOUT:
                        score.timeout += 1
                    else:
                        score.killed += 1
                    if _explained(mutant, path, equivalents) is not None:
                        # an entry that matches a caught mutant is too broad (or stale): a
                        # run would leave such a mutant out untested
                        score.overbroad.append(mutant)
                elif code is None:
                    if _explained(mutant, path, equivalents) is not None:
                        score.skipped += 1  # a registered equivalent, left out of the run
                    else:
                        score.untested += 1
                elif code in _NO_TESTS or code in _SURVIVED:
                    if code in _NO_TESTS:
                        score.no_tests += 1
                    else:
                        score.survived += 1
                    diff = get_diff_for_mutant(mutant, path=path)
                    function = mutant.rpartition("__mutmut_")[0]
                    why = is_equivalent(function, diff, equivalents)
                    if why is not None:
                        score.equivalent += 1
                    score.survivors.append({"mutant": mutant, "diff": diff, "why": why or ""})
                else:
                    score.other += 1
    return scores


@contextmanager
def _in_tree(target: Path) -> Iterator[None]:
    """Inside a scratch tree, where mutmut's own helpers read its configuration."""
    cwd = Path.cwd()
    os.chdir(target)
    sys.path.insert(0, str(target / "mutants"))
    try:
        from mutmut.configuration import reset_config

        reset_config()
        yield
    finally:
        os.chdir(cwd)
        sys.path.remove(str(target / "mutants"))


def report(names: list[str], workdir: Path, verbose: bool) -> int:
    """Print the figures of the last run of each set; non-zero if any set is below 90 % or
    has mutants its last run did not reach."""
    print(f"{'module':32} {'killed':>6} {'timeout':>7} {'survived':>8} {'equiv':>5} "
          f"{'no test':>7} {'score':>6} {'untested':>8} {'left out':>8}")
    below = 0
    for name in names:
        target = workdir / name
        if not (target / "mutants").exists():
            print(f"{name:32} (not run)")
            continue
        for path, s in collect(name, target).items():
            label = path + (" (SessionBridge)" if SETS[name].names else "")
            print(f"{label:32} {s.killed:6} {s.timeout:7} {s.survived:8} {s.equivalent:5} "
                  f"{s.no_tests:7} {s.score:5.1f}% {s.untested:8} {s.skipped:8}")
            below += s.score < 90.0 or s.untested > 0 or bool(s.overbroad)
            for mutant in s.overbroad:
                print(f"  an equivalent entry matches {mutant}, which a test catches: narrow "
                      "the entry (`after`) or remove it")
            for survivor in s.survivors:
                if survivor["why"] and not verbose:
                    continue
                print(f"\n  survived: {survivor['mutant']}"
                      + (f"\n  equivalent: {survivor['why']}" if survivor["why"] else ""))
                print("    " + survivor["diff"].replace("\n", "\n    "))
            if s.survivors and not verbose:
                print()
    return 1 if below else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", metavar="SET",
                        help=f"module sets to run (default: all of {', '.join(SETS)})")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "quantum-mutation")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--fresh", action="store_true",
                        help="forget the last runs' results: mutate and test everything")
    parser.add_argument("--survivors", action="store_true",
                        help="re-run only the last run's survivors not registered as "
                             "equivalent")
    parser.add_argument("--report", action="store_true", help="report the last runs only")
    parser.add_argument("--verbose", action="store_true",
                        help="print the equivalent survivors too")
    parser.add_argument("--list", action="store_true", help="print the sets and exit")
    args = parser.parse_args(argv)
    unknown = [n for n in args.sets if n not in SETS]
    if unknown:
        parser.error(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    names = args.sets or list(SETS)
    if args.list:
        for name in names:
            s = SETS[name]
            print(f"{name}: {' '.join(s.files)}{' ' + ' '.join(s.names) if s.names else ''}"
                  f"\n    tests: {' '.join(s.tests)}{' -k ' + repr(s.keyword) if s.keyword else ''}"
                  f"\n    ({s.why})")
        return 0
    if not args.report:
        for name in names:
            run_set(name, args.workdir, args.max_children, args.fresh, args.survivors)
    return report(names, args.workdir, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
