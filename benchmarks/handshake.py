"""The server's CPU per handshake against the cryptography it cannot avoid (its crypto floor).

    python -m benchmarks.handshake --json [--connections 5000] [--rounds 3]
                                   [--interpreted-loadgen]

The floor is what a Quantum 1.0 server must compute for one handshake (docs/PROTOCOL.md 4),
timed with the bare primitives of `cryptography`, `hmac` and `hashlib` on the server's core,
nothing of the product's code in between:

* the SYN: its ephemeral key pair (a private key from 32 random bytes and its public key), the
  two X25519 exchanges with the client's ephemeral key (ee and es), the transcript hash,
  HKDF-Extract and the confirmation key's HKDF-Expand, the confirmation's AES-256-GCM seal, the
  cookie's 12-byte nonce, its AES-256-GCM seal and the SHA-256 of the address it is bound to
  (the cookie key's AES-GCM object is built once per key, not per handshake);
* the ACK: the cookie's AES-256-GCM open and the address hash again, the finish key's
  HKDF-Expand and the credentials' open, the two traffic secrets' HKDF-Expands. No
  Diffie-Hellman: the cookie carries the handshake's pseudorandom key.

Two figures set against it, in the same run:

* `sans_io_us`: `ServerHandshake.on_client_hello` + `on_client_finish` alone (the handshake
  module: parsing, the cipher offer, the cookie's layout and checks, exceptions' set-up);
* `server_us`: the whole server, over real UDP: the server (pinned to one core, as in
  `benchmarks.heartbeat`) accepts `--connections` handshakes from the load generator (pinned to
  the other) per round, and its CPU over the accepts, less what the connections already
  open cost over the same time (measured in a quiet second just before:
  `background_share_per_round`), is divided by the connections it established. That is
  everything an accept costs: the listener's front door and rate accounting, the handshake,
  the connection's set-up, the session's creation in the store, its token and the SESSION
  frame, the ACKs.

`sans_io_vs_floor` and `server_vs_floor` are floor / figure: 1.0 would be a server doing
nothing but the cryptography (the target is >= 0.7). `handshakes_per_s` is the wall-clock
rate of the accepts, which the generator may limit; the CPU figures are per handshake and hold
either way.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from benchmarks.crypto_bench import server_handshake_us
from benchmarks.heartbeat import (
    SERVER_CPU,
    _positive_int,
    _start_loadgen,
    _start_server,
    run_bench_server,
)
from benchmarks.loadgen_build import LoadgenBuild, load_loadgen
from benchmarks.report import BenchError, finish
from quantum.build import is_compiled
from quantum.handshake import Credentials, ServerHandshake, ServerParams

_T = TypeVar("_T")

TARGET = 0.7
#: connections opened (and measured by nobody) before the first round: imports, caches, the
#: store's first allocations
WARMUP = 200
#: seconds of quiet measured before each round: the open connections' own CPU, subtracted
IDLE_WINDOW = 1.0
#: a ClientFinish's credentials, as the load generator sends them (user id, no ticket)
CREDENTIALS = Credentials("bench-user-000001")


def _pinned(run: Callable[[], _T]) -> _T:
    """`run()` with this process on the server's core (where the server measures), then back."""
    if not hasattr(os, "sched_setaffinity"):
        return run()
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {SERVER_CPU})
    except OSError:  # the core is not ours to use (a container's cpuset): measure where we are
        return run()
    try:
        return run()
    finally:
        os.sched_setaffinity(0, before)


def _batch_us(run: Callable[[], None], count: int) -> float:
    """CPU microseconds per call over one batch of `count` calls."""
    start = time.process_time_ns()
    for _ in range(count):
        run()
    return (time.process_time_ns() - start) / count / 1000


def _floor_handshake() -> tuple[Callable[[], None], Callable[[], None]]:
    """(one server handshake's primitives, the client's credential seal within them, which is
    subtracted): the module doc's list, nothing of the product's code in between."""
    client_public = X25519PrivateKey.generate().public_key().public_bytes_raw()
    static = X25519PrivateKey.generate()
    # the cookie key's AEAD object lives as long as the key (a cookie lifetime), not a
    # handshake: built once here as in the server
    cookie_aead, address = AESGCM(os.urandom(32)), (4433).to_bytes(2, "big") + bytes(4)
    params, credentials = bytes(24), bytes(48)  # the sizes encode_params/credentials give
    label = b"Quantum 1.0 handshake: X25519, HKDF-SHA256"

    def handshake() -> None:
        # SYN -> SYN-ACK
        ephemeral = X25519PrivateKey.from_private_bytes(os.urandom(32))
        server_ephemeral = ephemeral.public_key().public_bytes_raw()
        ee = ephemeral.exchange(X25519PublicKey.from_public_bytes(client_public))
        es = static.exchange(X25519PublicKey.from_public_bytes(client_public))
        h = hashlib.sha256(label + bytes(16) + client_public + b"\x01\x01" + server_ephemeral
                           + bytes(32) + b"\x01").digest()
        prk = hmac.digest(h, ee + es, "sha256")
        confirm = hmac.digest(prk, b"quantum confirm\x01", "sha256")
        AESGCM(confirm).encrypt(bytes(12), params, h)
        tag = hashlib.sha256(address).digest()[:16]
        nonce = os.urandom(12)
        cookie = cookie_aead.encrypt(nonce, prk + h + b"\x01" + bytes(8) + tag, b"ad")
        # ACK: the cookie, the credentials, the traffic secrets
        cookie_aead.decrypt(nonce, cookie, b"ad")
        hmac.compare_digest(hashlib.sha256(address).digest()[:16], tag)
        finish = AESGCM(hmac.digest(prk, b"quantum finish\x01", "sha256"))
        sealed = finish.encrypt(bytes(12), credentials, h)  # (the client's part)
        finish.decrypt(bytes(12), sealed, h)
        hmac.digest(prk, b"quantum client traffic\x01", "sha256")
        hmac.digest(prk, b"quantum server traffic\x01", "sha256")

    sealing = AESGCM(os.urandom(32))

    def client_seal() -> None:
        # the credentials' seal is the client's work (the AESGCM object it used is the
        # server's too: it opens with it)
        sealing.encrypt(bytes(12), credentials, bytes(32))

    return handshake, client_seal


def floor_and_sans_io(count: int, repeats: int = 7) -> tuple[float, float]:
    """(floor us, sans-I/O us) per handshake: batches of each in turn, so a machine whose
    speed drifts slows both alike, and the best batch of each (the least disturbed)."""
    handshake, client_seal = _floor_handshake()
    server = ServerHandshake(os.urandom(32), ServerParams((10, 3), 10.0, 60.0))
    floor = sans_io = float("inf")
    for _ in range(repeats):
        floor = min(floor, _batch_us(handshake, count) - _batch_us(client_seal, count))
        sans_io = min(sans_io, server_handshake_us(server, CREDENTIALS, count))
    return floor, sans_io


def server_rounds(build: LoadgenBuild, connections: int, rounds: int) -> list[dict[str, Any]]:
    """Per round: the server's CPU over `connections` accepts, and the generator's."""
    ctx = multiprocessing.get_context("spawn")
    total = WARMUP + connections * rounds
    results: list[dict[str, Any]] = []
    with ExitStack() as stack:
        server, port = _start_server(ctx, stack, "quantum-server-handshakes", run_bench_server,
                                     "memory", [], total + 100, graceful=False)
        loadgen = _start_loadgen(ctx, stack, port, build)
        warm = loadgen.call("connect", count=WARMUP, user_prefix="warmup")
        if warm["established"] != WARMUP:
            raise BenchError(f"warm-up: {warm['established']} of {WARMUP} connections "
                             f"established ({warm['failed']} failed)")
        for round_ in range(rounds):
            # what the connections already open cost meanwhile (their timers, the periodic
            # sweeps): measured alone just before, and taken out of the round's CPU
            server.call("start")
            time.sleep(IDLE_WINDOW)
            idle = server.call("stop")
            idle_rate = idle["cpu_s"] / idle["wall_s"] if idle["wall_s"] > 0 else 0.0
            server.call("start")
            opened = loadgen.call("connect", count=connections, user_prefix=f"hs{round_}-")
            window = server.call("stop")
            established = int(opened["established"])
            if established < connections * 0.99:
                raise BenchError(f"round {round_ + 1}: {established} of {connections} "
                                 f"established ({opened['failed']} failed)")
            background = min(window["cpu_s"], idle_rate * window["wall_s"])
            results.append({"cpu_s": window["cpu_s"], "seconds": opened["seconds"],
                            "background_share": background / window["cpu_s"],
                            "us": (window["cpu_s"] - background) / established * 1e6})
    return results


def run(connections: int, rounds: int, interpreted_loadgen: bool = False,
        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _: None)
    say("timing the crypto floor and the sans-I/O handshake on the server's core")
    floor, sans_io = _pinned(lambda: floor_and_sans_io(300))
    build = load_loadgen(compiled=not interpreted_loadgen)
    say(f"accepting {rounds} x {connections} connections on the real server")
    measured = server_rounds(build, connections, rounds)
    server = statistics.median(r["us"] for r in measured)
    return {
        "floor_us": round(floor, 1),
        "sans_io_us": round(sans_io, 1),
        "server_us": round(server, 1),
        "server_us_per_round": [round(r["us"], 1) for r in measured],
        "background_share_per_round": [round(r["background_share"], 3) for r in measured],
        "sans_io_vs_floor": round(floor / sans_io, 3),
        "server_vs_floor": round(floor / server, 3),
        "target": TARGET,
        "server_handshakes_per_cpu_s": round(1e6 / server),
        "handshakes_per_s": round(connections / statistics.median(r["seconds"]
                                                                  for r in measured)),
        "connections_per_round": connections,
        "rounds": rounds,
        "compiled": is_compiled(),
        "loadgen_compiled": build.compiled,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.handshake",
                                     description="server CPU per handshake vs its crypto floor")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--connections", type=_positive_int, default=5000,
                        help="handshakes per measured round (default 5000)")
    parser.add_argument("--rounds", type=_positive_int, default=3,
                        help="measured rounds; the median is reported (default 3)")
    parser.add_argument("--interpreted-loadgen", action="store_true",
                        help="run the load generator interpreted (no mypyc build)")
    args = parser.parse_args(argv)
    return finish("handshake", lambda: run(
        args.connections, args.rounds, args.interpreted_loadgen,
        progress=lambda line: print(line, file=sys.stderr, flush=True)), args.json)


if __name__ == "__main__":
    sys.exit(main())
