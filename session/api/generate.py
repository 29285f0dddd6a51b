"""Regenerate the Python modules of session/api/session.proto (the one command for it).

    python -m session.api.generate           # rewrite session_pb2.py, .pyi, session_pb2_grpc.py
    python -m session.api.generate --check   # exit 1, naming them, if any is stale

Runs the protoc bundled with `grpcio-tools` (a dev dependency, pinned in pyproject.toml so the
output is byte-for-byte reproducible) with the project root as the include path, so the
generated modules import each other as `session.api.session_pb2`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = Path("session/api/session.proto")
#: what protoc writes for PROTO, relative to the project root
OUTPUTS = (
    Path("session/api/session_pb2.py"),
    Path("session/api/session_pb2.pyi"),
    Path("session/api/session_pb2_grpc.py"),
)


class GenerateError(RuntimeError):
    """protoc failed or is not installed."""


def generate(out_dir: Path, root: Path = ROOT) -> list[Path]:
    """Compile `root`/PROTO into `out_dir` (mirroring the package path); returns the files
    written."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise GenerateError("grpcio-tools is not installed: pip install -e '.[dev]'") from None
    import importlib.resources

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    status = protoc.main([
        "grpc_tools.protoc",
        f"-I{root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(root / PROTO),
    ])
    if status != 0:
        raise GenerateError(f"protoc failed on {PROTO} (exit status {status})")
    return [out_dir / path for path in OUTPUTS]


def stale_outputs(root: Path = ROOT) -> list[Path]:
    """The generated modules under `root` that differ from what its PROTO compiles to now."""
    with tempfile.TemporaryDirectory(prefix="session-proto-") as tmp:
        fresh = generate(Path(tmp), root)
        return [path for path, new in zip(OUTPUTS, fresh, strict=True)
                if not (root / path).exists() or (root / path).read_bytes() != new.read_bytes()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m session.api.generate",
                                     description="Regenerate the modules of " + str(PROTO))
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a generated module is stale")
    args = parser.parse_args(argv)
    try:
        if args.check:
            stale = stale_outputs()
            for path in stale:
                print(f"stale: {path} (run python -m session.api.generate)", file=sys.stderr)
            return 1 if stale else 0
        for path in generate(ROOT):
            print(f"wrote {path.relative_to(ROOT)}")
    except GenerateError as exc:
        print(f"python -m session.api.generate: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
