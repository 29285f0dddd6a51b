"""A client generated from the ORIGINAL definition works against this server unchanged.

The .proto below is written from ../shared/reference/session-service-api.md alone: the six RPCs,
their messages and fields with the reference's numbers and types, nothing of ours. The test
compiles it with grpcio-tools into a temporary directory and runs, in a separate process that
sees only those generated modules, a client calling every original RPC against a real server.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from session.store import Store
from tests.api_harness import api_store, running_stack  # noqa: F401  (fixture)
from tests.test_server import dial

ORIGINAL_PROTO = """
syntax = "proto3";
package session;
import "google/protobuf/timestamp.proto";

service SessionService {
  rpc CreateSession(CreateSessionRequest) returns (CreateSessionResponse);
  rpc GetSession(GetSessionRequest) returns (GetSessionResponse);
  rpc UpdateSession(UpdateSessionRequest) returns (UpdateSessionResponse);
  rpc DeleteSession(DeleteSessionRequest) returns (DeleteSessionResponse);
  rpc ListSessions(ListSessionsRequest) returns (ListSessionsResponse);
  rpc Heartbeat(HeartbeatRequest) returns (HeartbeatResponse);
}

enum SessionState {
  SESSION_STATE_UNSPECIFIED = 0;
  SESSION_STATE_CONNECTING = 1;
  SESSION_STATE_ACTIVE = 2;
  SESSION_STATE_IDLE = 3;
  SESSION_STATE_DISCONNECTING = 4;
  SESSION_STATE_CLOSED = 5;
}

message SessionStats {
  uint64 packets_sent = 1;
  uint64 packets_received = 2;
  uint64 bytes_sent = 3;
  uint64 bytes_received = 4;
  uint64 retransmissions = 5;
  uint32 current_rtt_ms = 6;
}

message Session {
  string session_id = 1;
  string user_id = 2;
  string connection_id = 3;
  string client_ip = 4;
  uint32 client_port = 5;
  string server_addr = 6;
  SessionState state = 7;
  google.protobuf.Timestamp created_at = 8;
  google.protobuf.Timestamp last_active_at = 9;
  google.protobuf.Timestamp expires_at = 10;
  map<string, string> metadata = 11;
  SessionStats stats = 12;
}

message CreateSessionRequest {
  string user_id = 1;
  string client_ip = 2;
  uint32 client_port = 3;
  map<string, string> metadata = 4;
  uint32 timeout_seconds = 5;
}
message CreateSessionResponse { Session session = 1; string token = 2; }

message GetSessionRequest { string session_id = 1; }
message GetSessionResponse { Session session = 1; }

message UpdateSessionRequest {
  string session_id = 1;
  SessionState state = 2;
  map<string, string> metadata = 3;
  SessionStats stats = 4;
}
message UpdateSessionResponse { Session session = 1; }

message DeleteSessionRequest { string session_id = 1; string reason = 2; }
message DeleteSessionResponse { bool success = 1; }

message ListSessionsRequest {
  string user_id = 1;
  SessionState state = 2;
  uint32 page = 3;
  uint32 page_size = 4;
}
message ListSessionsResponse {
  repeated Session sessions = 1;
  uint32 total = 2;
  uint32 page = 3;
  uint32 page_size = 4;
}

message HeartbeatRequest {
  string session_id = 1;
  google.protobuf.Timestamp client_timestamp = 2;
}
message HeartbeatResponse {
  bool success = 1;
  google.protobuf.Timestamp server_timestamp = 2;
  uint32 remaining_seconds = 3;
}
"""

#: run with only the generated modules importable: every original RPC, results as JSON
CLIENT = r"""
import json, sys
import grpc
from google.protobuf import timestamp_pb2
import session_pb2 as pb, session_pb2_grpc as rpc

address, token, claimed = sys.argv[1:4]
auth = (("authorization", "Bearer " + token),)
stub = rpc.SessionServiceStub(grpc.insecure_channel(address))
assert pb.DESCRIPTOR.name == "session.proto"  # the original's, not the server's module
out = {}
created = stub.CreateSession(pb.CreateSessionRequest(
    user_id="legacy", client_ip="192.0.2.1", client_port=7000, metadata={"game": "chess"},
    timeout_seconds=120), metadata=auth)
sid = created.session.session_id
out["create"] = [sid, created.token != "", created.session.state, created.session.client_ip,
                 created.session.expires_at.seconds - created.session.created_at.seconds]
got = stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=auth).session
out["get"] = [got.session_id, got.user_id, dict(got.metadata), got.client_port]
updated = stub.UpdateSession(pb.UpdateSessionRequest(
    session_id=sid, state=pb.SESSION_STATE_IDLE, metadata={"elo": "1500"},
    stats=pb.SessionStats(packets_sent=3, current_rtt_ms=25)), metadata=auth).session
out["update"] = [updated.state, dict(updated.metadata), updated.stats.packets_sent,
                 updated.stats.current_rtt_ms]
listed = stub.ListSessions(pb.ListSessionsRequest(user_id="legacy", page=1, page_size=10),
                           metadata=auth)
out["list"] = [[s.session_id for s in listed.sessions], listed.total, listed.page,
               listed.page_size]
everyone = stub.ListSessions(pb.ListSessionsRequest(state=pb.SESSION_STATE_ACTIVE),
                             metadata=auth)
out["list_active"] = [[s.session_id for s in everyone.sessions],
                      [s.connection_id != "" for s in everyone.sessions]]
stamp = timestamp_pb2.Timestamp()
stamp.GetCurrentTime()
beat = stub.Heartbeat(pb.HeartbeatRequest(session_id=sid, client_timestamp=stamp),
                      metadata=auth)
out["heartbeat"] = [beat.success, beat.remaining_seconds, beat.server_timestamp.seconds > 0]
claimed_session = stub.GetSession(pb.GetSessionRequest(session_id=claimed), metadata=auth)
out["claimed"] = [claimed_session.session.state, claimed_session.session.stats.packets_received]
deleted = stub.DeleteSession(pb.DeleteSessionRequest(session_id=sid, reason="legacy logout"),
                             metadata=auth)
out["delete"] = deleted.success
try:
    stub.GetSession(pb.GetSessionRequest(session_id=sid), metadata=auth)
except grpc.RpcError as exc:
    out["after_delete"] = exc.code().name
print(json.dumps(out))
"""


def compile_original(tmp_path: Path) -> Path:
    from importlib.resources import files

    from grpc_tools import protoc

    out = tmp_path / "original"
    out.mkdir()
    (out / "session.proto").write_text(ORIGINAL_PROTO)
    status = protoc.main(["protoc", f"-I{out}", f"-I{files('grpc_tools') / '_proto'}",
                          f"--python_out={out}", f"--grpc_python_out={out}",
                          str(out / "session.proto")])
    assert status == 0
    (out / "client.py").write_text(CLIENT)
    return out


async def test_a_client_of_the_original_definition_works_unchanged(api_store: Store,
                                                                   tmp_path: Path) -> None:
    generated = compile_original(tmp_path)
    async with running_stack(api_store, tmp_path) as stack:
        player = await dial(stack.udp_port, "player", server_key=stack.key.public_key_text)
        assert player.session_id is not None
        assert await player.heartbeat() is not None
        result = await asyncio.to_thread(  # the server answers on this test's event loop
            subprocess.run,
            # -E -s: no PYTHONPATH, no user site; the script's own directory comes first, so
            # session_pb2 is the original's
            [sys.executable, "-E", "-s", str(generated / "client.py"), stack.api_address,
             stack.token, player.session_id], capture_output=True, text=True, timeout=60,
            cwd=generated)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        sid = out["create"][0]
        assert out["create"][1:] == [True, 1, "192.0.2.1", 120]  # CONNECTING, own timeout
        assert out["get"] == [sid, "legacy", {"game": "chess"}, 7000]
        assert out["update"] == [3, {"game": "chess", "elo": "1500"}, 3, 25]  # IDLE, merged
        assert out["list"] == [[sid], 1, 1, 10]
        assert out["list_active"] == [[player.session_id], [True]]
        assert out["heartbeat"] == [True, 120, True]
        assert out["claimed"][0] == 2  # ACTIVE
        assert out["delete"] is True and out["after_delete"] == "NOT_FOUND"
        await player.close()
