"""The Quantum protocol: a sans-I/O core (`quantum.connection`) and an asyncio client.

    conn = await quantum.connect("127.0.0.1", 9090, user_id="alice", ticket=ticket)
"""

import warnings

from quantum.build import REBUILD_HINT, stale_modules
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

if _stale := stale_modules():
    warnings.warn(f"compiled modules built from older sources (the old code runs): "
                  f"{', '.join(_stale)}; {REBUILD_HINT}", RuntimeWarning, stacklevel=2)
