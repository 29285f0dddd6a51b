"""`quantum-client`: a line-oriented Quantum client for people and shell pipes.

    quantum-client 127.0.0.1 9090 --user alice --ticket "$(quantum-server issue-ticket ...)"

Each line read from stdin is sent as one message; each message received is printed on its own
line as it arrives. The CLI sends the keepalives itself (the connection's own keepalive timer is
off) so that it can print "heartbeat: remaining Ns" for every answer; a `/heartbeat` line sends
one at once. End of input closes the connection cleanly (FIN) after a short linger that lets
replies to the last lines arrive.

Exit status: 0 after a clean close, 1 when the connection failed or the server closed it,
2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
from collections.abc import Sequence

from quantum.addresses import unbracketed
from quantum.client import QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.errors import ConnectionClosedError, MessageError, QuantumError
from quantum.frames import Delivery

HEARTBEAT_COMMAND = "/heartbeat"
MODES: dict[str, Delivery] = {mode.name.lower().replace("_", "-"): mode for mode in Delivery}


def _host(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return unbracketed(text)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def _channel(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a channel number: {text!r}") from None
    if not 0 <= value <= 255:
        raise argparse.ArgumentTypeError(f"channel must be 0-255, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _metadata(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"metadata must be KEY=VALUE, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="quantum-client",
        description="Connect to a Quantum server, send each stdin line as a message and print "
                    f"what comes back. A '{HEARTBEAT_COMMAND}' line sends a keepalive now.")
    p.add_argument("host", type=_host, help="server host name, IPv4 or IPv6 address (::1)")
    p.add_argument("port", type=_port, help="server UDP port")
    p.add_argument("--user", required=True, help="user id to log in as")
    p.add_argument("--ticket", default=None, help="login ticket (quantum-server issue-ticket)")
    p.add_argument("--server-key", default=None,
                   help="pin the server's public key (base64, as printed by the server)")
    p.add_argument("--channel", type=_channel, default=0, help="channel to send on (0-255)")
    p.add_argument("--mode", choices=tuple(MODES), default="reliable-ordered",
                   help="delivery mode of the messages sent (default reliable-ordered)")
    p.add_argument("--metadata", type=_metadata, action="append", default=[],
                   metavar="KEY=VALUE", help="session metadata (repeatable)")
    p.add_argument("--keepalive-interval", type=_seconds, default=10.0,
                   help="seconds between keepalives; 0 sends none (default 10)")
    p.add_argument("--linger", type=_seconds, default=0.3,
                   help="seconds to wait for replies after end of input (default 0.3)")
    p.add_argument("--no-fec", dest="fec", action="store_false",
                   help="do not ask for forward error correction")
    return p


def _start_stdin_reader(loop: asyncio.AbstractEventLoop) -> asyncio.Queue[str | None]:
    """Lines from stdin, None at EOF.

    A daemon thread does the blocking reads: asyncio cannot watch a regular file or every
    terminal, and a daemon thread blocked in read() does not keep the process alive once the
    server has closed the connection.
    """
    lines: asyncio.Queue[str | None] = asyncio.Queue()

    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line.rstrip("\r\n"))
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()
    return lines


def _print_heartbeat(remaining: float | None) -> None:
    if remaining is None:
        print("heartbeat: no session", flush=True)
    else:
        print(f"heartbeat: remaining {remaining:.0f}s", flush=True)


async def _heartbeat(client: QuantumClient) -> None:
    try:
        _print_heartbeat(await client.heartbeat())
    except TimeoutError:
        print("quantum-client: keepalive not answered", file=sys.stderr, flush=True)


async def _keepalives(client: QuantumClient, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await _heartbeat(client)
        except ConnectionClosedError:
            return  # the printer notices the close and reports it


async def _printer(client: QuantumClient) -> None:
    """Print messages until the connection closes (queued ones are still printed)."""
    while True:
        try:
            message = await client.recv_message()
        except ConnectionClosedError:
            return
        text = message.data.decode("utf-8", errors="backslashreplace")
        print(text, flush=True)


async def _sender(client: QuantumClient, lines: asyncio.Queue[str | None], channel: int,
                  mode: Delivery) -> None:
    while (line := await lines.get()) is not None:
        if line.strip() == HEARTBEAT_COMMAND:
            await _heartbeat(client)
            continue
        try:
            await client.send(line.encode("utf-8"), channel, mode)
        except MessageError as exc:
            print(f"quantum-client: not sent: {exc}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    configuration = QuantumConfiguration(
        keepalive_interval=None,
        idle_timeout=max(60.0, 3 * args.keepalive_interval),
        fec=(10, 3) if args.fec else None)
    try:
        client = await connect(args.host, args.port, user_id=args.user, ticket=args.ticket,
                               server_key=args.server_key, metadata=dict(args.metadata),
                               fec=args.fec, configuration=configuration)
    except (QuantumError, OSError, ValueError) as exc:  # ConnectError names the reason code
        print(f"quantum-client: cannot connect: {exc}", file=sys.stderr)
        return 1
    print(f"connected: session {client.session_id}", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    printer = loop.create_task(_printer(client))
    background = []
    if args.keepalive_interval > 0:
        # never less often than the server expects (PROTOCOL.md 5.2.6)
        interval = min(args.keepalive_interval, client.server_keepalive_interval)
        background.append(loop.create_task(_keepalives(client, interval)))
    sender = loop.create_task(_sender(client, _start_stdin_reader(loop), args.channel,
                                      MODES[args.mode]))
    try:
        done, _ = await asyncio.wait([sender, printer], return_when=asyncio.FIRST_COMPLETED)
        if sender in done and sender.exception() is None:
            await asyncio.sleep(args.linger)
            await client.close()
            await printer
            return 0
        # the server closed the connection: say why
        if sender in done:
            error = sender.exception()
            if error is not None and not isinstance(error, ConnectionClosedError):
                raise error
            await printer
        reason = client.close_reason or "connection lost"
        print(f"quantum-client: connection closed: {reason}", file=sys.stderr, flush=True)
        return 1
    finally:
        for task in (sender, printer, *background):
            task.cancel()
        client.abort()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
