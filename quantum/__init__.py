"""The Quantum protocol: a sans-I/O core (`quantum.connection`) and an asyncio client.

    conn = await quantum.connect("127.0.0.1", 9090, user_id="alice", ticket=ticket)

Importing it checks nothing about the build (hashing every compiled source would cost each
import): the test session and the `quantum-server` command refuse a stale build
(`quantum.build.stale_modules`).
"""

from quantum.client import ConnectError, Message, QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode, ConnectionClosedError, MessageError, QuantumError
from quantum.frames import Delivery
from quantum.reconnect import ReconnectPolicy

__all__ = [
    "CloseCode",
    "ConnectError",
    "Connection",
    "ConnectionClosedError",
    "ConnectionState",
    "Delivery",
    "Message",
    "MessageError",
    "QuantumClient",
    "QuantumConfiguration",
    "QuantumError",
    "ReconnectPolicy",
    "connect",
]
