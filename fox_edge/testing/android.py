"""The Android library's JVM half on this machine: the JNI bridge (apps/android/fox-edge/src/main/cpp, built with
the core by fox_edge.testing.native from that CMake project, against the host JDK's jni.h), the Kotlin API (everything that does not import android.*) and its
test program compiled with the Kotlin compiler from npm, run on the host JVM. JNI is the same specification on
Android; only the android.* layer (apps/android/fox-edge/src/main/kotlin/dev/foxedge/android) is written only.

    python -m fox_edge.testing.android SPEC.properties      # builds what is missing and runs the Kotlin tests
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[2] / "apps" / "android" / "fox-edge"
KOTLIN_SOURCES = LIBRARY / "src" / "main" / "kotlin"
KOTLIN_TESTS = LIBRARY / "src" / "test" / "kotlin"
ANDROID_ONLY = KOTLIN_SOURCES / "dev" / "foxedge" / "android"
TEST_MAIN = "dev.foxedge.FoxEdgeJvmTestKt"


def _stale(stamp: Path, content: bytes) -> bool:
    return not stamp.is_file() or stamp.read_text() != hashlib.sha256(content).hexdigest()


def _stamp(stamp: Path, content: bytes) -> None:
    stamp.write_text(hashlib.sha256(content).hexdigest())


def kotlin_files() -> list[Path]:
    return sorted(p for folder in (KOTLIN_SOURCES, KOTLIN_TESTS) for p in folder.rglob("*.kt") if ANDROID_ONLY not in p.parents)


def build() -> tuple[Path, list[Path]]:
    """(the folder holding libfox_edge_jni.so and libfox_edge.so, the classpath), rebuilt when a source changed."""
    from fox_edge.testing.native import build_core, run_build_step
    from fox_edge.testing.suite_assets import kotlin_compiler

    out = build_core()  # the Android library's CMake project: the core, its tests and the JNI bridge
    kotlin = kotlin_compiler()
    classpath = [kotlin / "lib" / "kotlin-stdlib.jar", kotlin / "lib" / "kotlinx-coroutines-core-jvm.jar"]
    jar = out / "fox-edge-jvm.jar"  # the Kotlin API and its test program
    sources = kotlin_files()
    content = b"".join(p.read_bytes() for p in sources)
    if _stale(out / ".kotlin", content) or not jar.is_file():
        run_build_step([str(kotlin / "bin" / "kotlinc"), "-jvm-target", "17", "-cp", str(classpath[1]), "-d", str(jar), *map(str, sources)])
        _stamp(out / ".kotlin", content)
    return out, [jar, *classpath]


def run_tests(spec: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    libraries, classpath = build()
    command = ["java", f"-Djava.library.path={libraries}", "-cp", ":".join(map(str, classpath)), TEST_MAIN, str(spec)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    result = run_tests(Path(sys.argv[1]))
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
