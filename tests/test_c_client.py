"""libquantum, the C client (clients/c), built and run from pytest against the real server.

The library is built once per session (`make -C clients/c`, and a second build under
AddressSanitizer and UndefinedBehaviorSanitizer); its own unit tests run every Quantum 1.0 test
vector (clients/c/tests/vectors-1.0.md, written by clients/c/tests/make_vectors.py until
docs/PROTOCOL.md prints the 1.0 vectors); `quantum-echo` proves every delivery mode, several
channels, a 1 MiB message, heartbeats, migration, resume, reconnection, both ciphers, key update
and close against examples/echo_server.py, over IPv4 and IPv6 and through a lossy network;
`quantum-chat` shares a chat room with a Python client; the datagram decoders are fuzzed for a
bounded time.

The C toolchain (a C compiler, make, libsodium's headers) comes from Debian's packages; where
it is missing these tests skip with a message saying what to install, except in CI
(QUANTUM_REQUIRE_NATIVE=1, set by .ci/run), where a missing tool is a failure.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import zfec

from quantum.client import connect
from tests.relay import LossyRelay, RelayProfile
from tests.test_examples import example
from tests.test_server import HOST, client_config

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "clients" / "c"
BUILD = C_DIR / "build"
SAN_BUILD = BUILD / "san"
#: the 1.0 vectors in the layout of PROTOCOL.md's vector sections (see make_vectors.py)
SPEC = C_DIR / "tests" / "vectors-1.0.md"
REQUIRE_NATIVE = os.environ.get("QUANTUM_REQUIRE_NATIVE") == "1"
DEBIAN_PACKAGES = "apt-get install -y --no-install-recommends build-essential pkg-config " \
                  "libsodium-dev clang libclang-rt-14-dev"


def missing(what: str) -> None:
    """Skip (or, in CI, fail) a test whose native toolchain is not installed."""
    message = f"{what} is not installed ({DEBIAN_PACKAGES})"
    if REQUIRE_NATIVE:
        pytest.fail(f"QUANTUM_REQUIRE_NATIVE=1 but {message}")
    pytest.skip(message)


def _has_sodium() -> bool:
    if shutil.which("pkg-config"):
        done = subprocess.run(["pkg-config", "--exists", "libsodium"], capture_output=True)
        if done.returncode == 0:
            return True
    return Path("/usr/include/sodium.h").exists()


def require_c_toolchain() -> None:
    for tool in ("make", "cc"):
        if shutil.which(tool) is None:
            missing(f"`{tool}`")
    if not _has_sodium():
        missing("libsodium (headers)")


@contextmanager
def build_lock() -> Iterator[None]:
    """One `make` at a time in clients/ across pytest-xdist's worker processes: each worker
    builds its session fixtures, and two makes writing one build directory would race."""
    with open(Path(tempfile.gettempdir()) / "quantum-clients-make.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_make(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    with build_lock():
        return subprocess.run(["make", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=600)


def make(*args: str) -> None:
    done = run_make(C_DIR, "-j2", *args)
    if done.returncode != 0:
        pytest.fail(f"make {' '.join(args)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")


@pytest.fixture(scope="session")
def c_build() -> Path:
    """The library, the tools and the unit tests (built once per test session)."""
    require_c_toolchain()
    make("all", "build/unit-tests")
    return BUILD


@pytest.fixture(scope="session")
def c_san_build() -> Path:
    """The same under AddressSanitizer and UndefinedBehaviorSanitizer."""
    require_c_toolchain()
    make("SAN=1", "build/san/unit-tests", "build/san/quantum-echo", "build/san/quantum-chat")
    return SAN_BUILD


def san_env() -> dict[str, str]:
    env = dict(os.environ)
    # leaks are errors; a sanitizer report fails the process
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1:exitcode=24"
    return env


async def run_tool(argv: Sequence[str | Path], timeout: float = 90.0,
                   env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *[str(a) for a in argv], stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        pytest.fail(f"{argv[0]} did not finish in {timeout} s:\n{out.decode()}\n{err.decode()}")
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


ECHO_STEPS = ("connect ok", "echo ok", "big ok: 1048576 bytes", "heartbeat ok",
              "migrate ok", "resume ok", "close ok")
#: through a relay the server sees the relay's address whatever port the client moves to, so
#: there is no migration to validate
RELAYED_STEPS = tuple(step for step in ECHO_STEPS if step != "migrate ok")


def assert_steps(out: str, steps: Sequence[str]) -> None:
    for step in steps:
        assert step in out, f"missing {step!r} in:\n{out}"


# ------------------------------------------------------------------------ unit tests


def test_unit_tests_run_every_spec_vector(c_build: Path) -> None:
    done = subprocess.run([str(c_build / "unit-tests"), str(SPEC)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", done.stdout, re.M)
    assert summary is not None and summary[2] == "0" and int(summary[1]) >= 40, done.stdout
    for vectors in ("test_handshake_vectors", "test_packet_vectors", "test_frame_vectors"):
        assert f"ok   {vectors}" in done.stdout


def test_unit_tests_fail_on_a_changed_vector(c_build: Path, tmp_path: Path) -> None:
    """The C tests really read the vectors: one changed there fails them."""
    text = SPEC.read_text()
    wanted = re.search(r"^server_secret0\s+([0-9a-f]{64})$", text, re.M)
    assert wanted is not None
    value = wanted[1]
    flipped = value[:-1] + ("0" if value[-1] != "0" else "1")
    changed = tmp_path / "vectors.md"
    changed.write_text(text.replace(value, flipped))
    done = subprocess.run([str(c_build / "unit-tests"), str(changed)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert "FAIL test_handshake_vectors" in done.stderr


def test_the_vectors_are_what_the_generator_prints() -> None:
    """vectors-1.0.md is make_vectors.py's output (an independent Python implementation of
    the 1.0 formulas), not hand-edited."""
    done = subprocess.run(["python3", str(C_DIR / "tests" / "make_vectors.py")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == SPEC.read_text()


def test_unit_tests_under_sanitizers(c_san_build: Path) -> None:
    done = subprocess.run([str(c_san_build / "unit-tests"), str(SPEC)], capture_output=True,
                          text=True, timeout=300, env=san_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"^\d+ passed, 0 failed$", done.stdout, re.M)


def test_fec_parity_is_zfecs(c_build: Path) -> None:
    """Reed-Solomon parity byte for byte as zfec computes it, for random k, m and blocks."""
    lib = ctypes.CDLL(str(c_build / "libquantum.so"))
    encode = lib.quantum_fec_encode
    encode.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p),
                       ctypes.c_size_t, ctypes.POINTER(ctypes.c_char_p)]
    encode.restype = ctypes.c_int
    rng = random.Random(17)
    cases = [(1, 1), (1, 16), (32, 16), (10, 3), (16, 16)]
    cases += [(rng.randint(1, 32), rng.randint(1, 16)) for _ in range(60)]
    for k, m in cases:
        size = rng.randint(1, 1402)
        blocks = [rng.randbytes(size) for _ in range(k)]
        expected = [bytes(b) for b in zfec.Encoder(k, k + m).encode(blocks, list(range(k, k + m)))]
        outs = [ctypes.create_string_buffer(size) for _ in range(m)]
        data = (ctypes.c_char_p * k)(*blocks)
        parity = (ctypes.c_char_p * m)(*[ctypes.cast(o, ctypes.c_char_p) for o in outs])
        assert encode(k, m, data, size, parity) == 0
        assert [o.raw for o in outs] == expected, f"k={k} m={m} size={size}"
    bad = (ctypes.c_char_p * 1)(b"x")
    assert encode(33, 1, bad, 1, bad) == -1  # QUANTUM_E_INVALID


# ------------------------------------------------------------------ against the server


@asynccontextmanager
async def echo_server(tmp_path: Path) -> AsyncIterator[tuple[int, str, str]]:
    """examples/echo_server.py; yields (port, public key, fingerprint)."""
    from quantum.keys import ServerKeyFile

    async with example("echo_server", tmp_path) as (port, public, _proc):
        key = ServerKeyFile.load(tmp_path / "server.key")
        yield port, public, key.fingerprint


class FollowingRelay(LossyRelay):
    """The lossy relay, following its client to a new address (migration, reconnection),
    able to cut the network altogether, and noting the largest datagram the client sent."""

    cut = False
    largest_from_client = 0

    def _on_datagram(self, data: bytes, addr: tuple[str, int], to_server: bool) -> None:
        if self.cut:
            return
        if to_server:
            self.client_addr = addr
            self.largest_from_client = max(self.largest_from_client, len(data))
        super()._on_datagram(data, addr, to_server)


@pytest.mark.parametrize("variant", ["release", "sanitizers"])
async def test_echo_every_mode_big_message_heartbeat_migration_resume_close(
        variant: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    build = request.getfixturevalue("c_build" if variant == "release" else "c_san_build")
    env = san_env() if variant == "sanitizers" else None
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        code, out, err = await run_tool(
            [build / "quantum-echo", HOST, str(port), "--server-key", fingerprint,
             "--user", "echo-c"], env=env)
    assert code == 0, out + err
    assert_steps(out, ECHO_STEPS)


async def test_echo_with_the_raw_public_key_pinned(c_build: Path, tmp_path: Path) -> None:
    async with echo_server(tmp_path) as (port, public, _fingerprint):
        code, out, err = await run_tool(
            [c_build / "quantum-echo", HOST, str(port), "--server-key", public, "--user", "raw",
             "--no-migrate", "--no-resume", "--big", "200000"])
    assert code == 0, out + err
    assert "big ok: 200000 bytes" in out


async def test_echo_over_ipv6(c_build: Path, tmp_path: Path) -> None:
    """The client's IPv6 path (resolution, socket, addresses) end to end: the Python server
    binds IPv4 only today, so a relay on [::1] carries the datagrams to it."""
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        try:
            relay = await FollowingRelay.start((HOST, port), host="::1")
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback here: {exc}")
        try:
            code, out, err = await run_tool(
                [c_build / "quantum-echo", "::1", str(relay.port), "-6", "--server-key",
                 fingerprint, "--user", "six", "--no-migrate"])
        finally:
            relay.close()
    assert code == 0, out + err
    assert_steps(out, RELAYED_STEPS)


async def test_echo_through_a_lossy_network(c_build: Path, tmp_path: Path) -> None:
    """Loss, duplication and reordering: retransmission and FEC deliver every reliable byte."""
    profile = RelayProfile(loss=0.05, duplicate=0.02, reorder=0.05, max_delay=0.02)
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        relay = await FollowingRelay.start((HOST, port), profile, seed=5)
        try:
            code, out, err = await run_tool(
                [c_build / "quantum-echo", HOST, str(relay.port), "--server-key", fingerprint,
                 "--user", "lossy", "--channels", "0,200", "--no-migrate"], timeout=120)
        finally:
            relay.close()
    assert code == 0, out + err
    assert_steps(out, RELAYED_STEPS)
    assert relay.stats.dropped > 0 and relay.stats.duplicated > 0
    assert relay.largest_from_client <= 1200


async def test_every_datagram_fits_the_base_size(c_build: Path, tmp_path: Path) -> None:
    """libquantum does not probe the path MTU, so every packet it builds (data, parity,
    acknowledgements, the handshake) under a 1 MiB transfer stays within 1200 bytes; it
    accepts and acknowledges the server's larger datagrams and probes."""
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        relay = await FollowingRelay.start((HOST, port))
        try:
            code, out, err = await run_tool(
                [c_build / "quantum-echo", HOST, str(relay.port), "--server-key", fingerprint,
                 "--user", "small", "--no-migrate"])
        finally:
            relay.close()
    assert code == 0, out + err
    assert_steps(out, RELAYED_STEPS)
    assert relay.largest_from_client == 1200  # the SYN is exactly 1200; nothing is larger


@pytest.mark.parametrize(("preference", "cipher"), [
    ("chacha-only", "chacha20-poly1305"), ("chacha", "chacha20-poly1305"),
    ("aes", "aes-256-gcm")])
async def test_the_cipher_is_negotiated(c_build: Path, tmp_path: Path, preference: str,
                                        cipher: str) -> None:
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        code, out, err = await run_tool(
            [c_build / "quantum-echo", HOST, str(port), "--server-key", fingerprint,
             "--user", "cipher", "--no-migrate", "--no-resume", "--big", "100000",
             "--cipher", preference])
    assert code == 0, out + err
    assert f"cipher={cipher}" in out


async def test_keys_update_under_a_big_transfer(c_build: Path, tmp_path: Path) -> None:
    """A key update every 64 packets: a 1 MiB message and everything else cross many
    generations, which the server follows."""
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        code, out, err = await run_tool(
            [c_build / "quantum-echo", HOST, str(port), "--server-key", fingerprint,
             "--user", "rekey", "--no-migrate", "--no-resume", "--key-update-packets", "64"])
    assert code == 0, out + err
    keys = re.search(r"^keys: send generation (\d+), receive generation (\d+), (\d+) key updates$",
                     out, re.M)
    assert keys is not None, out
    assert int(keys[1]) >= 10 and int(keys[3]) == int(keys[1])


async def test_reconnects_and_resumes_after_an_outage(c_build: Path, tmp_path: Path) -> None:
    async with echo_server(tmp_path) as (port, _public, fingerprint):
        relay = await FollowingRelay.start((HOST, port))
        proc = await asyncio.create_subprocess_exec(
            str(c_build / "quantum-echo"), HOST, str(relay.port), "--server-key", fingerprint,
            "--user", "flaky", "--no-migrate", "--no-resume", "--big", "10000", "--reconnect",
            "--idle-timeout", "1.0", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            assert proc.stdout is not None
            lines: list[str] = []
            while not lines or lines[-1] != "outage now":
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, f"quantum-echo ended early: {lines}"
                lines.append(line.decode().strip())
            relay.cut = True  # the network dies: the client notices and keeps trying
            await asyncio.sleep(2.5)
            relay.cut = False
            out, err = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            relay.close()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    text = "\n".join(lines) + "\n" + out.decode()
    assert proc.returncode == 0, text + err.decode()
    assert "reconnect ok" in text and "close ok" in text


async def test_a_c_client_and_a_python_client_share_a_chat_room(c_build: Path,
                                                                tmp_path: Path) -> None:
    async with example("chat_room", tmp_path) as (port, public, _proc):
        alice = await connect(HOST, port, user_id="alice", server_key=public,
                              metadata={"room": "games"}, configuration=client_config())
        assert await asyncio.wait_for(alice.recv(), 5) == b"* welcome to games; here: nobody yet"
        bob = await asyncio.create_subprocess_exec(
            str(c_build / "quantum-chat"), HOST, str(port), "--server-key", public,
            "--user", "bob", "--room", "games", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert bob.stdout is not None and bob.stdin is not None

            async def bob_hears() -> str:
                assert bob.stdout is not None
                return (await asyncio.wait_for(bob.stdout.readline(), 5)).decode().rstrip("\n")

            assert await bob_hears() == "* welcome to games; here: alice"
            assert await asyncio.wait_for(alice.recv(), 5) == b"* bob joined"
            bob.stdin.write("hi from C, h\u00e9h\u00e9\n".encode())
            await bob.stdin.drain()
            assert await asyncio.wait_for(alice.recv(), 5) == \
                "bob: hi from C, h\u00e9h\u00e9".encode()
            await alice.send(b"hello from Python")
            assert await bob_hears() == "alice: hello from Python"
            bob.stdin.close()  # end of input: bob leaves gracefully
            assert await asyncio.wait_for(bob.wait(), 10) == 0
            assert await asyncio.wait_for(alice.recv(), 5) == b"* bob left (client closed)"
        finally:
            if bob.returncode is None:
                bob.kill()
                await bob.wait()
        await alice.close()


async def test_a_wrong_pin_is_refused(c_build: Path, tmp_path: Path) -> None:
    async with echo_server(tmp_path) as (port, _public, _fingerprint):
        wrong = "SHA256:" + "A" * 43
        code, out, err = await run_tool(
            [c_build / "quantum-echo", HOST, str(port), "--server-key", wrong, "--user", "x"])
    assert code == 1 and "BAD_SERVER_KEY" in err, out + err


@pytest.mark.parametrize(("args", "message"), [
    ([], "HOST and PORT are required"),
    (["127.0.0.1", "9"], "--server-key is required"),
    (["127.0.0.1", "99999", "--server-key", "k", "--user", "u"], "PORT must be 1..65535"),
    (["h", "1", "--server-key", "k", "--user", "u", "--bogus"], "unknown or incomplete option"),
    (["h", "1", "--server-key", "k", "--user", "u", "--big", "2000000"], "--big"),
    (["h", "1", "--server-key", "k", "--user", "u", "--cipher", "des"], "--cipher"),
    (["h", "1", "--server-key", "k", "--user", "u", "--key-update-packets", "3"],
     "--key-update-packets"),
])
def test_echo_bad_arguments_exit_2(c_build: Path, args: list[str], message: str) -> None:
    done = subprocess.run([str(c_build / "quantum-echo"), *args], capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 2 and message in done.stderr and "usage:" in done.stderr


def test_echo_with_a_malformed_pin_exits_1(c_build: Path) -> None:
    done = subprocess.run([str(c_build / "quantum-echo"), HOST, "9", "--server-key", "!!",
                           "--user", "u"], capture_output=True, text=True, timeout=10)
    assert done.returncode == 1 and "malformed server key" in done.stderr


# ------------------------------------------------------------------------------ fuzzing

FUZZ_SECONDS = 24  # CI's budget (both targets together); `make -C clients/c fuzz-run
#                    FUZZ_SECONDS=600` for a longer session


@pytest.fixture(scope="session")
def fuzz_build() -> Iterator[Path]:
    require_c_toolchain()
    if shutil.which("clang") is None:
        missing("clang (with libFuzzer: libclang-rt-14-dev)")
    done = run_make(C_DIR, "-j2", "fuzz")
    if done.returncode != 0:
        if "fuzzer" in done.stderr and not REQUIRE_NATIVE:
            pytest.skip(f"clang cannot link libFuzzer here: {done.stderr[-500:]}")
        pytest.fail(f"make fuzz failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    yield BUILD / "fuzz"


@pytest.mark.parametrize("target", ["fuzz-datagram", "fuzz-connection"])
def test_fuzz_the_decoders_for_a_bounded_time(fuzz_build: Path, target: str,
                                              tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    seeds = C_DIR / "fuzz" / target.replace("fuzz-", "seeds-")
    assert any(seeds.iterdir()), f"no seed inputs in {seeds}"
    done = subprocess.run(
        [str(fuzz_build / target), f"-max_total_time={FUZZ_SECONDS // 2}", "-print_final_stats=1",
         f"-artifact_prefix={tmp_path}/", str(corpus), str(seeds)],
        capture_output=True, text=True, timeout=FUZZ_SECONDS * 4, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", done.stderr)
    assert runs is not None and int(runs[1]) > 1000, done.stderr[-2000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("leak-*"))



def test_the_readme_example_compiles(c_build: Path, tmp_path: Path) -> None:
    """The 30-line example of clients/c/README.md is real code."""
    text = (C_DIR / "README.md").read_text()
    blocks = re.findall(r"```c\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    source = tmp_path / "example.c"
    source.write_text(blocks[0])
    assert len(blocks[0].splitlines()) <= 40
    done = subprocess.run(
        ["cc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-I", str(C_DIR / "include"),
         str(source), str(c_build / "libquantum.a"), "-lsodium", "-o", str(tmp_path / "example")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
