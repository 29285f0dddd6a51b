"""The Quantum protocol: a sans-I/O core (`quantum.connection`) and an asyncio client.

    conn = await quantum.connect("127.0.0.1", 9090, user_id="alice", ticket=ticket)
"""

from quantum.client import ConnectError, Message, QuantumClient, connect
from quantum.config import QuantumConfiguration
from quantum.connection import Connection, ConnectionState
from quantum.errors import CloseCode, ConnectionClosedError, MessageError, QuantumError
from quantum.frames import Delivery

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
    "connect",
]
