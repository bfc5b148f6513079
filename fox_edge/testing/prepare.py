"""The suite's long preparations by name, for the background process that tests/conftest.py starts (each one is a
cached, locked and timed stage: fox_edge/testing/stages.py).

    python -m fox_edge.testing.prepare NAME [NAME ...]      # prepares those, in order
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from fox_edge.testing import arm64, native, suite_assets
from fox_edge.testing.stages import whole_machine

# In the order the background process prepares them, the longest chain first (the ARM64 build, then the tests under
# qemu); tests/conftest.py says which tests wait on which.
PREPARATIONS: dict[str, Callable[[], object]] = {
    "x86-64 native core": native.build_core,
    "ARM64 native core": lambda: arm64.build_native_core(arm64.prepared_root()[0]),
    "trained tiny Fox-1": suite_assets.trained_tiny_fox1,
    "ARM64 Python stage": arm64.prepare_python_stage,
    "macOS native core": native.build_core_macos,
    "optimum environment": lambda: suite_assets.side_environment("optimum"),
}


def main(names: list[str]) -> int:
    # Stopped (an interrupted test run): the builds it started stop too; they are in its process group.
    signal.signal(signal.SIGTERM, lambda *_: (signal.signal(signal.SIGTERM, signal.SIG_DFL), os.killpg(0, signal.SIGTERM)))
    whole_machine()  # started by a test worker pinned to its share of the CPUs (tests/conftest.py); niced, it takes what they leave
    failed = 0
    for name in names:
        try:
            PREPARATIONS[name]()
        except Exception as exc:  # the test that needs it prepares it again in the foreground and reports the error there
            print(f"[prepare] {name} failed: {exc}", file=sys.stderr, flush=True)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
