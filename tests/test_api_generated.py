"""The generated modules are what session/api/session.proto compiles to (fails while stale)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from session.api import session_pb2 as pb
from session.api.generate import OUTPUTS, PROTO, ROOT, stale_outputs


def test_the_committed_modules_are_not_stale() -> None:
    stale = stale_outputs()
    assert stale == [], f"stale: {stale}; run python -m session.api.generate"


def test_a_change_to_the_proto_is_caught(tmp_path: Path) -> None:
    for path in (PROTO, *OUTPUTS):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / path, tmp_path / path)
    assert stale_outputs(tmp_path) == []
    proto = tmp_path / PROTO
    proto.write_text(proto.read_text().replace("string reason = 2;",
                                               "string reason = 2;\n  bool force = 3;"))
    assert stale_outputs(tmp_path) == [OUTPUTS[0], OUTPUTS[1]]  # the gRPC glue is unchanged


def test_the_check_command_exits_0_when_fresh() -> None:
    result = subprocess.run([sys.executable, "-m", "session.api.generate", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, "")


def test_the_wire_names_of_the_original_surface() -> None:
    service = pb.DESCRIPTOR.services_by_name["SessionService"]
    assert service.full_name == "session.SessionService"
    assert [m.name for m in service.methods][:6] == [
        "CreateSession", "GetSession", "UpdateSession", "DeleteSession", "ListSessions",
        "Heartbeat"]
    fields = {f.name: (f.number, f.type) for f in pb.Session.DESCRIPTOR.fields}
    assert fields["session_id"][0] == 1 and fields["stats"][0] == 12
    assert fields["timeout_seconds"][0] == 13  # an addition: a new number
