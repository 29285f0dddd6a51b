"""The protocol's bounds that more than one module enforces: each is defined here, once.

Two kinds:

* what the handshake carries to the session service (user id, metadata, resume token, ticket,
  session id): the handshake's encoder and decoder (`quantum/handshake.py`), the authenticator
  (`quantum/auth.py`), the SESSION frame (`quantum/frames.py`) and the session service
  (`session/model.py`, `session/tokens.py`) all check these very numbers, so the handshake
  refuses (BAD_REQUEST, naming the field) exactly what the session service would refuse, and
  never lets through a value that would fail later;
* FEC's group shape (k, m): the configuration, the handshake's parameters, the PARITY frame
  and the coder (`quantum/fec.py`).

Every length here is in bytes of UTF-8 (a user id of 128 two-byte characters is at the limit).
The packet format's own sizes (header, payload, datagram, connection id) are in
`quantum/packet.py`. This module imports nothing: `session/` takes its bounds from here, which
is the one thing it imports from `quantum/` (docs/ARCHITECTURE.md, "Layers").
"""

from __future__ import annotations

from typing import Final

#: a user id: 1..256 bytes
MAX_USER_ID_BYTES: Final = 256
#: a ticket (printable ASCII, see `quantum.auth`): at most 1200 bytes; the longest a 256-byte
#: user id makes is about 400
MAX_TICKET_BYTES: Final = 1200
#: a resume token: 1..64 bytes (the session service issues 43-character tokens)
MAX_TOKEN_BYTES: Final = 64
#: a session id on the wire: the 16 bytes of its UUID
SESSION_ID_SIZE: Final = 16
#: a session's metadata: at most 64 entries, keys of 1..128 bytes, values of 0..1024 bytes
MAX_METADATA_ENTRIES: Final = 64
MAX_METADATA_KEY_BYTES: Final = 128
MAX_METADATA_VALUE_BYTES: Final = 1024

#: FEC: k data packets per group, 1..16, and m parity packets, 1..16. k is bounded by the
#: datagram: a parity packet carries the group's k sequence numbers (4k bytes) beside a shard
#: as large as the largest data payload, and with k = 16 that just fits (see
#: `quantum.connection.MAX_DATA_PAYLOAD`)
MAX_FEC_K: Final = 16
MAX_FEC_M: Final = 16
