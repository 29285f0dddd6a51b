"""Protocol benchmark: two connections over the simulated network, in-process, no sockets.

    python -m benchmarks.protocol_bench --json

For each case (random loss 0/1/5/10 %, 20 ms one-way delay, FEC on and off) a client sends
reliable-ordered 1 KiB messages at a steady rate; the benchmark checks every message arrives once
and in order, and reports goodput, delivery latency p50/p99 in virtual time, retransmissions,
FEC recoveries and CPU time per delivered packet. A bulk case at 0 % loss measures messages per
CPU-second, a path MTU case measures what a probe costs (CPU and bytes, both endpoints) in a
whole search of a 1280-byte path, and a protection case compares sealing+opening a 100-byte
packet with the bare AEAD. Prints one JSON array, one object per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from quantum.build import is_compiled
from quantum.config import QuantumConfiguration
from quantum.connection import ConnectionState
from quantum.events import MessageReceived
from quantum.handshake import Credentials
from quantum.simulation import (
    CLIENT_ADDR,
    SERVER_ADDR,
    LinkProfile,
    SimulatedNetwork,
    SimulatedServer,
    Simulation,
)

MESSAGE_SIZE = 1024
ONE_WAY_DELAY = 0.020


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _connect(loss: float, fec: bool, seed: int, send_buffer: int = 4 << 20, mtu: int = 1472,
             tap: Any = None) -> tuple[Simulation, Any]:
    """An established client over a new simulated network; `tap(data, src, dst, now, send)`
    sees every datagram from the first on, and forwards it with `send`."""
    config = QuantumConfiguration(keepalive_interval=None, fec=(10, 3) if fec else None,
                                  idle_timeout=600.0, handshake_tries=20,
                                  handshake_timeout=20.0, max_send_buffer=send_buffer)
    sim = Simulation(SimulatedNetwork(LinkProfile(delay=ONE_WAY_DELAY, loss=loss, mtu=mtu),
                                      seed),
                     SimulatedServer.create(config))
    if tap is not None:
        send = sim.network.send
        sim.network.send = (  # type: ignore[method-assign]
            lambda data, src, dst, now: tap(data, src, dst, now, send))
    client = sim.add_client(Credentials(user_id="bench"), configuration=config)
    sim.run(until=30.0, condition=lambda: client.state is ConnectionState.ESTABLISHED)
    if client.state is not ConnectionState.ESTABLISHED:
        raise RuntimeError("handshake did not complete in the benchmark network")
    return sim, client


def run_case(loss: float, fec: bool, messages: int, rate: float, seed: int = 42,
             warmup: float = 1.0) -> dict[str, Any]:
    """Steady stream: 1 KiB messages, one every 1/rate seconds of virtual time.

    The first `warmup` seconds of the stream (BBR's startup, which with FEC's parity packets
    is briefly window-limited) are sent and checked like the rest but left out of the latency
    figures, which describe the steady state; `warmup_p99_ms` reports them separately.
    """
    warm = int(warmup * rate)
    messages += warm
    sim, client = _connect(loss, fec, seed)
    server_events = sim.server.events
    sent_at: list[float] = []
    delivered_at: dict[int, float] = {}
    order: list[int] = []
    seen = 0
    interval = 1.0 / rate
    start = sim.now
    cpu0 = time.process_time()

    def collect() -> int:
        nonlocal seen
        while seen < len(server_events):
            _, event = server_events[seen]
            seen += 1
            if isinstance(event, MessageReceived):
                index = int.from_bytes(event.data[:4], "big")
                order.append(index)
                delivered_at.setdefault(index, sim.now)
        return len(order)

    for i in range(messages):
        sim.run(until=start + i * interval)
        collect()
        sent_at.append(sim.now)
        client.send(i.to_bytes(4, "big") + bytes(MESSAGE_SIZE - 4))
        sim.flush()
    sim.run(until=sim.now + 120.0, condition=lambda: collect() >= messages)
    collect()
    cpu = time.process_time() - cpu0
    all_latencies = [delivered_at[i] - sent_at[i] for i in range(messages) if i in delivered_at]
    latencies, warm_latencies = all_latencies[warm:], all_latencies[:warm]
    stats = client.refresh_stats()
    server_stats = next(iter(sim.server.connections.values())).stats
    duration = max(delivered_at.values(), default=start) - start
    packets = server_stats.packets_received
    rtt = 2 * ONE_WAY_DELAY
    return {
        "case": f"loss={loss:.0%} fec={'on' if fec else 'off'}",
        "loss": loss,
        "fec": fec,
        "one_way_delay_ms": ONE_WAY_DELAY * 1000,
        "message_size": MESSAGE_SIZE,
        "messages_sent": messages,
        "warmup_messages": warm,
        "warmup_p99_ms": round(_percentile(warm_latencies, 0.99) * 1000, 2) if warm else None,
        "messages_delivered": len(order),
        "delivered_in_order": order == list(range(messages)),
        "goodput_mbit_s": round(len(order) * MESSAGE_SIZE * 8 / duration / 1e6, 3)
        if duration > 0 else None,
        "latency_p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "rtt_ms": rtt * 1000,
        "p99_over_rtt": round(_percentile(latencies, 0.99) / rtt, 3),
        "retransmissions": stats.retransmissions,
        "packets_lost": stats.packets_lost,
        "fec_recovered": server_stats.fec_recovered,
        "packets_delivered": packets,
        "cpu_s": round(cpu, 4),
        "cpu_us_per_delivered_packet": round(cpu / packets * 1e6, 2) if packets else None,
    }


def run_bulk(messages: int, seed: int = 7) -> dict[str, Any]:
    """0 % loss, everything queued at once: CPU per delivered 1 KiB message, per endpoint.

    The two connections are pumped directly into each other (no simulator heap, zero delay),
    and the CPU time of each endpoint's calls is measured separately, so the figures are the
    protocol's own cost: sender (fragmenting, sealing, congestion control, ack processing) and
    receiver (opening, reassembly, acknowledging).
    """
    # everything is queued at once: the send buffer must hold it all
    sim, client = _connect(0.0, False, seed, send_buffer=max(4 << 20, 2 * messages * MESSAGE_SIZE))
    server = next(iter(sim.server.connections.values()))
    while server.next_event() is not None:
        pass
    payload = bytes(MESSAGE_SIZE)
    clock = time.process_time
    now = sim.now
    sender_cpu = receiver_cpu = 0.0
    delivered = 0
    t = clock()
    for _ in range(messages):
        client.send(payload)
    sender_cpu += clock() - t
    for _ in range(messages * 10):
        if delivered >= messages:
            break
        now += 0.0005
        t = clock()
        out = client.datagrams_to_send(now)
        timer = client.get_timer()
        if timer is not None and timer <= now:
            client.handle_timer(now)
        t2 = clock()
        for data, _ in out:
            server.receive_datagram(data, CLIENT_ADDR, now)
        while (event := server.next_event()) is not None:
            delivered += isinstance(event, MessageReceived)
        acks = server.datagrams_to_send(now)
        timer = server.get_timer()
        if timer is not None and timer <= now:
            server.handle_timer(now)
        t3 = clock()
        for data, _ in acks:
            client.receive_datagram(data, SERVER_ADDR, now)
        t4 = clock()
        sender_cpu += (t2 - t) + (t4 - t3)
        receiver_cpu += t3 - t2
    total = sender_cpu + receiver_cpu
    return {
        "case": "bulk loss=0% fec=off",
        "messages_sent": messages,
        "messages_delivered": delivered,
        "cpu_s": round(total, 4),
        "cpu_us_per_message": round(total / delivered * 1e6, 2) if delivered else None,
        "messages_per_cpu_s": round(delivered / total) if total > 0 else None,
        "sender_us_per_message": round(sender_cpu / delivered * 1e6, 2) if delivered else None,
        "receiver_us_per_message": round(receiver_cpu / delivered * 1e6, 2) if delivered else None,
        "receiver_messages_per_cpu_s": round(delivered / receiver_cpu) if receiver_cpu else None,
        "target_messages_per_cpu_s": 100_000,
        "note": "messages_per_cpu_s counts both endpoints' CPU together",
    }


def _search_run(seed: int, mtu: int, sizes: list[int]) -> tuple[float, int, int, set[int]]:
    """One quiet connection (no data) for 60 s of virtual time on a `mtu`-byte path, from its
    first datagram: CPU of both endpoints, probes sent and lost, PLPMTUs found; the sizes of
    the probes (every datagram above 1200 bytes: nothing else is) land in `sizes`."""

    def tap(data: bytes, src: Any, dst: Any, now: float, send: Any) -> None:
        if len(data) > 1200:
            sizes.append(len(data))
        send(data, src, dst, now)

    t = time.process_time()
    sim, client = _connect(0.0, False, seed, mtu=mtu, tap=tap)
    sim.run(until=sim.now + 60.0)
    cpu = time.process_time() - t
    probes = lost = 0
    found: set[int] = set()
    for conn in (client, next(iter(sim.server.connections.values()))):
        stats = conn.refresh_stats()
        probes += stats.pmtu_probes_sent
        lost += stats.pmtu_probes_lost
        found.add(stats.plpmtu)
    return cpu, probes, lost, found


def run_pmtu_probe(searches: int, mtu: int = 1280) -> dict[str, Any]:
    """What a path MTU probe costs: quiet connections searching a `mtu`-byte path (about 15
    probes per endpoint, most of them lost) against the same runs on a 1472-byte path (one
    probe each, acknowledged). CPU per probe is the difference of the two runs' CPU (both
    endpoints: the probe, its acknowledgement or timeout, the next probe's scheduling) over
    the difference in probes, so the handshake and idle timers cancel out."""
    cpu = base_cpu = 0.0
    probes = base_probes = lost = 0
    found: set[int] = set()
    sizes: list[int] = []
    for seed in range(searches):
        run_cpu, run_probes, run_lost, run_found = _search_run(seed, mtu, sizes)
        cpu += run_cpu
        probes += run_probes
        lost += run_lost
        found |= run_found
        run_cpu, run_probes, _, _ = _search_run(seed, 1472, [])
        base_cpu += run_cpu
        base_probes += run_probes
    extra = probes - base_probes
    return {
        "case": f"pmtu search mtu={mtu}",
        "searches": 2 * searches,
        "probes_per_search": round(probes / (2 * searches), 1),
        "probes_lost_per_search": round(lost / (2 * searches), 1),
        "plpmtu_found": sorted(found),
        "bytes_per_probe": round(sum(sizes) / probes) if probes else None,
        "bytes_per_search": round(sum(sizes) / (2 * searches)),
        "cpu_us_per_probe": round((cpu - base_cpu) / extra * 1e6, 2) if extra > 0 else None,
        "note": "CPU of both endpoints per extra probe, against the same runs on a 1472 path",
    }


def run_protection(iterations: int) -> dict[str, Any]:
    from benchmarks.crypto_bench import measure

    result = measure(iterations)
    return {"case": "protection", **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.protocol_bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON array (default)")
    parser.add_argument("--messages", type=int, default=2000,
                        help="messages per loss case (default 2000)")
    parser.add_argument("--rate", type=float, default=500.0,
                        help="messages per second of virtual time in loss cases (default 500)")
    parser.add_argument("--bulk", type=int, default=20000,
                        help="messages in the bulk CPU case (default 20000)")
    parser.add_argument("--quick", action="store_true", help="small runs, for a smoke test")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rate <= 0 or args.bulk < 1:
        parser.error("--messages and --bulk must be at least 1, --rate positive")
    if args.quick:
        args.messages, args.bulk = 200, 1000
    results: list[dict[str, Any]] = []
    for loss in (0.0, 0.01, 0.05, 0.10):
        for fec in (True, False):
            results.append(run_case(loss, fec, args.messages, args.rate))
            print(f"# {results[-1]['case']}: done", file=sys.stderr, flush=True)
    results.append(run_bulk(args.bulk))
    results.append(run_pmtu_probe(20 if args.quick else 200))
    results.append(run_protection(20_000 if args.quick else 200_000))
    compiled = is_compiled()  # the protocol core that ran: mypyc-compiled or plain Python
    for result in results:
        result["compiled"] = compiled
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
