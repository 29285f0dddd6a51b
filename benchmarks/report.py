"""What every benchmark's command line does with its result: one JSON object (`--json`), or
lines for a person; a failed step (`BenchError`) is one line on stderr and exit status 1."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


class BenchError(RuntimeError):
    """A benchmark step failed; the message names the step and the child's reason."""


def print_report(result: dict[str, Any], as_json: bool, width: int = 40) -> None:
    """One JSON object, or one `name: value` line per figure for people."""
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        for name, value in result.items():
            print(f"{name:>{width}}: {value}")


def finish(name: str, produce: Callable[[], dict[str, Any]], as_json: bool,
           show: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the benchmark (`produce`) and report it: as JSON, or by `show` (default: a line per
    figure). Returns the exit status: 1, with the reason on stderr, if a step failed."""
    try:
        result = produce()
    except BenchError as exc:
        print(f"benchmarks.{name}: {exc}", file=sys.stderr)
        return 1
    if as_json or show is None:
        print_report(result, as_json)
    else:
        show(result)
    return 0
