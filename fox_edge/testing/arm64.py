"""The ARM64 stage: fox-edge's runners on an emulated ARM64 Linux, token for token against x86-64.

    sudo .venv/bin/python -m fox_edge.testing.arm64        # alone: builds the tiny models, runs the stage, prints the log

tests/test_arm64.py runs the same stage in the suite. What it builds, cached between runs under
FOX_EDGE_CACHE/arm64 (the first run about 11 minutes on 2 cores, nearly all of it the native build; later ones seconds):
- an ARM64 Debian root made by mmdebstrap (no emulation needed to make it), with Debian's Python 3.11;
- fox-edge's dependencies as aarch64 wheels fetched by the host's pip and unpacked into the root, so no pip
  runs under emulation; onnxruntime is its aarch64 wheel;
- llama.cpp's shared libraries from the native core's ARM64 build (clang, every CPU variant of ggml from armv8.0
  to armv9.2 as modules, the best one chosen at run time, as Android ships it), from the llama.cpp that the
  installed llama-cpp-python vendors, its Python bindings copied beside them.
Each model then runs inside the root (chroot; qemu-user through binfmt_misc) under each emulated CPU
(QEMU_CPU): cortex-a76 has dotprod, cortex-a53 has plain NEON only, so a variant chosen wrongly, or one that
executed anything beyond the baseline on the a53, would die there with SIGILL. Needs root (mounts, chroot) and Debian's
qemu-user-static, binfmt-support, g++-aarch64-linux-gnu and mmdebstrap (installed when missing).
Every mount is undone on the way out, on failure too.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from fox_edge.downloads import cache_dir
from fox_edge.testing.stages import exclusive, stage, whole_machine

CPUS = ("cortex-a76", "cortex-a53")
T = TypeVar("T")
PROMPT = "The castle stood on the hill, and"
N_TOKENS = 16
DEBIAN_PACKAGES = ("qemu-user-static", "binfmt-support", "g++-aarch64-linux-gnu", "mmdebstrap", "clang-14")
ROOT_PACKAGES = "python3,libstdc++6,libgomp1,zlib1g"
MIRROR = "http://deb.debian.org/debian"
# What the runners import, pinned to this machine's versions where it has them (the same onnxruntime on both sides).
WHEELS = ("numpy", "gguf", "sentencepiece", "protobuf", "huggingface_hub", "onnx", "onnxruntime", "tokenizers", "jinja2",
          "typer", "rich", "jsonschema", "diskcache", "typing_extensions")  # fmt: skip
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# /proc/cpuinfo as an ARM kernel writes it: onnxruntime's CPU detection crashes under qemu on the host's x86 one.
FAKE_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\n"
    "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd03\nCPU revision\t: 4\n\n"
    for i in range(2)
)
# getauxval(AT_HWCAP / AT_HWCAP2) bits of the features the log line names (Linux's arch/arm64 hwcap.h).
HWCAP_BITS = {"asimd": (16, 1), "asimddp": (16, 20), "sve": (16, 22), "i8mm": (26, 13), "bf16": (26, 14), "sve2": (26, 1)}


def log(message: str) -> None:
    print(f"[arm64] {message}", file=sys.stderr, flush=True)


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... failed ({result.returncode}): {(result.stderr or result.stdout)[-2000:]}")
    return result


# --- the host's tools ----------------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [
        p
        for p, tool in zip(
            DEBIAN_PACKAGES, ("qemu-aarch64-static", "update-binfmts", "aarch64-linux-gnu-g++", "mmdebstrap", "clang++-14"), strict=True
        )
        if not shutil.which(tool)
    ]
    if missing:
        log(f"installing {', '.join(missing)} from Debian")
        run(["apt-get", "update", "-qq"])
        run(["apt-get", "install", "-y", "-qq", *missing], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if not Path("/proc/sys/fs/binfmt_misc/register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", "/proc/sys/fs/binfmt_misc"])
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        run(["update-binfmts", "--enable", "qemu-aarch64"])


# --- the root, its Python packages and llama.cpp ------------------------------------------------------


def make_root(cache: Path) -> Path:
    root = cache / "root"
    if (root / "usr" / "bin" / "python3").exists():
        return root
    log("making an ARM64 Debian root with mmdebstrap (no emulation)")
    partial = cache / "root.part"
    shutil.rmtree(partial, ignore_errors=True)
    run(["mmdebstrap", "--quiet", "--arch=arm64", "--variant=extract", f"--include={ROOT_PACKAGES}", "bookworm", str(partial), MIRROR])
    for folder in ("proc", "root", "tmp", "opt"):
        (partial / folder).mkdir(exist_ok=True)
    (partial / "tmp").chmod(0o1777)
    partial.replace(root)
    return root


def requirements() -> list[str]:
    pinned = []
    for name in WHEELS:
        try:
            pinned.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def install_wheels(cache: Path, root: Path) -> Path:
    """fox-edge's dependencies for aarch64, fetched by the host's pip and unpacked into the root's /opt/pylib."""
    wanted = "\n".join(requirements())
    site = root / "opt" / "pylib"
    stamp = site / ".requirements"
    if stamp.is_file() and stamp.read_text() == wanted:
        return site
    wheels = cache / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    log("fetching aarch64 wheels with the host's pip")
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", *platforms, "--python-version", "3.11",
         "--implementation", "cp", "--abi", "cp311", "-d", str(wheels), *requirements()])  # fmt: skip
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
    for data in site.glob("*.data"):  # a wheel's .data/purelib and platlib belong in site-packages itself
        for kind in ("purelib", "platlib"):
            if (data / kind).is_dir():
                shutil.copytree(data / kind, site, dirs_exist_ok=True)
        shutil.rmtree(data)
    stamp.write_text(wanted)
    return site


def toolchain_file(cache: Path) -> Path:
    """CMake's toolchain for ARM64 Linux: clang (as the Android NDK has; Debian 12's gcc 12 cannot compile ggml's
    armv9.2+sme CPU variant), linking against the aarch64 gcc's libraries."""
    toolchain = cache / "aarch64-clang.cmake"
    toolchain.write_text(
        "set(CMAKE_SYSTEM_NAME Linux)\nset(CMAKE_SYSTEM_PROCESSOR aarch64)\n"
        "set(CMAKE_C_COMPILER clang-14)\nset(CMAKE_CXX_COMPILER clang++-14)\n"
        "set(CMAKE_C_COMPILER_TARGET aarch64-linux-gnu)\nset(CMAKE_CXX_COMPILER_TARGET aarch64-linux-gnu)\n"
        "set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)\nset(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)\n"
        "set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)\nset(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)\n"
    )
    return toolchain


@stage("ARM64 native core")
def build_native_core(cache: Path) -> Path:
    """The native core (native/) and its test program cross-compiled for ARM64 as Android ships it: every CPU variant
    of ggml (armv8.0 to armv9.2) beside libfox_edge, the best chosen at run time. The build folder persists, so a
    change to native/ recompiles only the core; the first build took 10 minutes on 2 cores beside the tests."""
    from fox_edge.testing.native import NATIVE, adopt_build_folder
    from fox_edge.testing.suite_assets import llama_cpp_source

    release = importlib.metadata.version("llama-cpp-python")
    build = cache / f"native-variants-build-{release}"
    adopt_build_folder(build, NATIVE)
    started = time.monotonic()
    for command in (
        ["cmake", "-S", str(NATIVE), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={toolchain_file(cache)}", "-DCMAKE_BUILD_TYPE=Release",
         f"-DFOX_EDGE_LLAMA_SOURCE={llama_cpp_source()}", "-DFOX_EDGE_CPU_VARIANTS=ON", "-DFOX_EDGE_16K_PAGES=ON", "-DGGML_OPENMP=OFF",
         # As Gradle's AGP configures it: the folder it packages into the APK, named by the output-folder variables.
         f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={packaged(build)}", f"-DCMAKE_RUNTIME_OUTPUT_DIRECTORY={packaged(build)}"],
        ["cmake", "--build", str(build), "--target", "fox_edge", "fox_edge_tests", "-j", str(os.cpu_count() or 2)],
    ):  # fmt: skip
        run(command)
    log(f"native core with ARM CPU variants ready in {time.monotonic() - started:.0f} s")
    return build


def run_native_tests(specs: dict[str, dict], files: list[Path]) -> dict[str, subprocess.CompletedProcess]:
    """native/tests/test_core.cpp under each emulated CPU named in `specs`, on its spec (whose paths name `files` as
    /work/NAME)."""
    cache, root = prepared_root()
    build = build_native_core(cache)
    target = root / "opt" / "native"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for path in [packaged(build) / "fox_edge_tests", *native_libraries(build)]:
        shutil.copy2(path, target / path.name, follow_symlinks=False)

    def run_on(cpu: str) -> subprocess.CompletedProcess:
        result = chrooted(root, cpu, ["/opt/native/fox_edge_tests", f"/work/spec-{cpu}.json"], {"LD_LIBRARY_PATH": "/opt/native"})
        log(f"native core tests on an emulated {cpu}: exit {result.returncode}")
        return result

    with mounted(root):
        copy_in(root, files)
        for cpu, spec in specs.items():
            # One thread each: the CPUs run at once, and two-thread pools spinning at their barriers under emulation
            # cost three times the work (the qemu test took 9 min beside the suite so).
            spec = {"n_threads": 1, "version": importlib.metadata.version("fox-edge"), **spec}
            (root / "work" / f"spec-{cpu}.json").write_text(json.dumps(spec, ensure_ascii=False))
        results = each_cpu(run_on, list(specs))
        shutil.rmtree(root / "work", ignore_errors=True)
    return results


def each_cpu(run_on: Callable[[str], T], cpus: list[str]) -> dict[str, T]:
    """`run_on(cpu)` for every emulated CPU at once: qemu-user runs the test programs here on about one core each,
    and the CPUs' runs share nothing but the root's read-only files. Each pool thread may use the whole machine,
    whatever share of it the calling test worker keeps to."""

    def run_anywhere(cpu: str) -> T:
        whole_machine()
        return run_on(cpu)

    with ThreadPoolExecutor(len(cpus)) as pool:
        return dict(zip(cpus, pool.map(run_anywhere, cpus), strict=True))


def packaged(build: Path) -> Path:
    """Where the ARM64 build writes its libraries and programs: the folder an Android build packages (AGP's obj/<abi>)."""
    return build / "obj" / "arm64-v8a"


def native_libraries(build: Path) -> list[Path]:
    """The shared libraries of the native core's ARM64 build: libfox_edge, libllama, libggml* and the CPU variants,
    soname links included, all in the folder Android packages."""
    return sorted(packaged(build).glob("lib*.so*"))


def install_fox_edge(root: Path, build: Path) -> None:
    """This checkout's fox_edge and llama-cpp-python's bindings into the root, over the libllama and libggml of the
    native core's ARM64 build (`build`): llama.cpp compiled once for ARM64, with every CPU variant, as Android ships
    it. fox-edge's llama.cpp backend loads the variant for the emulated CPU (GGML_BACKEND_DL)."""
    import llama_cpp

    target = root / "opt" / "fox-edge"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copytree(Path(__file__).resolve().parents[1], target / "fox_edge", ignore=shutil.ignore_patterns("__pycache__"))
    bindings = Path(llama_cpp.__file__).parent
    shutil.copytree(bindings, target / "llama_cpp", ignore=shutil.ignore_patterns("__pycache__", "lib"))
    (target / "llama_cpp" / "lib").mkdir()
    for path in native_libraries(build):
        shutil.copy2(path, target / "llama_cpp" / "lib" / path.name, follow_symlinks=False)


# --- running inside the root ------------------------------------------------------------------------


@contextlib.contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc with an ARM /proc/cpuinfo over it, undone whatever happens; the root's /work is the caller's meanwhile
    (one test at a time: the suite's xdist workers both use the root)."""
    done: list[Path] = []
    fake = root / "opt" / "cpuinfo"
    with exclusive("ARM64 root in use"):
        fake.write_text(FAKE_CPUINFO)
        try:
            run(["mount", "-t", "proc", "proc", str(root / "proc")])
            done.append(root / "proc")
            run(["mount", "--bind", str(fake), str(root / "proc" / "cpuinfo")])
            done.append(root / "proc" / "cpuinfo")
            yield
        finally:
            for point in reversed(done):
                if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                    subprocess.run(["umount", "-l", str(point)], capture_output=True)


PYTHON_ENV = {
    "HOME": "/root", "PYTHONPATH": "/opt/fox-edge:/opt/pylib", "LLAMA_CPP_LIB_PATH": "/opt/fox-edge/llama_cpp/lib",
    "LD_LIBRARY_PATH": "/opt/fox-edge/llama_cpp/lib", "FOX_EDGE_CACHE": "/tmp/fox-edge-cache", "PYTHONDONTWRITEBYTECODE": "1",
}  # fmt: skip


def chrooted(root: Path, cpu: str, command: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    """`command` inside the root on an emulated `cpu` (qemu-user through binfmt_misc reads QEMU_CPU)."""
    return subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(root), *command],
        env={"PATH": "/usr/bin:/bin", "QEMU_CPU": cpu, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def in_root(root: Path, cpu: str, *args: str) -> subprocess.CompletedProcess:
    """The root's Python with fox-edge and its dependencies."""
    return chrooted(root, cpu, ["/usr/bin/python3", *args], PYTHON_ENV)


@stage("ARM64 root")
def prepared_root() -> tuple[Path, Path]:
    """(cache, root): the tools installed and binfmt enabled, the ARM64 root made (both cached)."""
    cache = cache_dir() / "arm64"
    cache.mkdir(parents=True, exist_ok=True)
    ensure_tools()
    return cache, make_root(cache)


@stage("ARM64 Python stage")
def prepare_python_stage() -> Path:
    """The root with fox-edge's dependencies and the native core's ARM64 build of llama.cpp (cached); returns it."""
    cache, root = prepared_root()
    install_wheels(cache, root)
    install_fox_edge(root, build_native_core(cache))
    return root


def copy_in(root: Path, files: list[Path]) -> list[str]:
    """`files` (and folders) into the root's /work, emptied first; returns their paths as seen inside."""
    inside = root / "work"
    shutil.rmtree(inside, ignore_errors=True)
    inside.mkdir()
    for file in files:
        (shutil.copytree if file.is_dir() else shutil.copyfile)(file, inside / file.name)
    return [f"/work/{file.name}" for file in files]


def greedy_tokens(models: list[str], threads: int = 1) -> dict[str, list[int]]:
    """Each model's greedy continuation of PROMPT, N_TOKENS tokens, stopping on nothing: the same on every machine."""
    from fox_edge.runner import generate_tokens, open_runner, text_prompt
    from fox_edge.sampling import SamplingParams

    tokens = {}
    for model in models:
        with open_runner(model, n_ctx=256, n_threads=threads) as runner:
            prompt = text_prompt(runner, PROMPT)
            tokens[model] = list(generate_tokens(runner, prompt, SamplingParams.greedy(N_TOKENS), stop_ids=frozenset()))
    return tokens


def cpu_features() -> str:
    """The features this (emulated) ARM CPU reports to programs, from getauxval."""
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    words = {kind: libc.getauxval(kind) for kind in (16, 26)}
    present = [name for name, (kind, bit) in HWCAP_BITS.items() if words[kind] >> bit & 1]
    absent = [name for name in HWCAP_BITS if name not in present]
    return f"{' '.join(present) or 'none of ' + ' '.join(HWCAP_BITS)} (absent: {' '.join(absent) or 'none'})"


def run_stage(models: list[Path], bundle: Path) -> dict:
    """The whole stage: the x86-64 tokens, then per emulated CPU the ARM64 tokens, and `bundle verify` on ARM64.
    Returns {"x86_64": tokens, cpu: {"features", "tokens", "verify"}} for the caller to compare."""
    started = time.monotonic()
    root = prepare_python_stage()
    log(f"prepared in {time.monotonic() - started:.0f} s")
    on_x86 = list(greedy_tokens([str(m) for m in models]).values())
    script = (
        "import json, sys\nfrom fox_edge.testing.arm64 import cpu_features, greedy_tokens\n"
        "print(json.dumps({'features': cpu_features(), 'tokens': greedy_tokens(sys.argv[1:])}))\n"
    )

    def run_on(cpu: str) -> dict:
        started = time.monotonic()
        ran = in_root(root, cpu, "-c", script, *names[:-1])
        if ran.returncode != 0:
            raise RuntimeError(f"the models failed on an emulated {cpu} (exit {ran.returncode}): {ran.stderr[-3000:]}")
        measured = json.loads(ran.stdout.strip().splitlines()[-1])
        verify = in_root(root, cpu, "-m", "fox_edge.cli", "bundle", "verify", names[-1])
        measured["verify"] = {"exit": verify.returncode, "output": (verify.stdout + verify.stderr).strip()}
        log(
            f"emulated {cpu}: CPU features {measured['features']}; {len(names) - 1} models and `bundle verify` in {time.monotonic() - started:.0f} s"
        )
        return measured

    with mounted(root):
        names = copy_in(root, [*models, bundle])
        results: dict = {"x86_64": dict(zip(names[:-1], on_x86, strict=True))}
        results |= each_cpu(run_on, list(CPUS))
        shutil.rmtree(root / "work", ignore_errors=True)
    return results


def main() -> None:
    """Run alone: the trained tiny Fox-1 (cached; trained here the first time) as GGUF Q8_0 and Q4_0, ONNX int4 and a
    bundle. Not the random-weight tiny model: its near-ties flip between ARM's and x86's float summation orders."""
    import tempfile

    from fox_edge.bundle import make_bundle
    from fox_edge.check import CheckSettings
    from fox_edge.converters.gguf import convert_to_gguf
    from fox_edge.converters.onnx import OnnxOptions, convert_to_onnx
    from fox_edge.quantize import quantize
    from fox_edge.testing.suite_assets import trained_tiny_fox1

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        checkpoint = trained_tiny_fox1()
        f16 = convert_to_gguf(checkpoint, work / "tiny.f16.gguf").output
        models = [quantize(f16, work / f"tiny.{t}.gguf", t, check=CheckSettings(enabled=False)).file.output for t in ("Q8_0", "Q4_0")]
        models.append(convert_to_onnx(checkpoint, work / "tiny-int4", OnnxOptions(precision="int4")).output)
        bundle = make_bundle(models[1], work / "bundle").folder
        results = run_stage(models, bundle)
    failures = 0
    for cpu in CPUS:
        for model, tokens in results["x86_64"].items():
            same = results[cpu]["tokens"][model] == tokens
            failures += not same
            print(f"{cpu:<11} {Path(model).name:<16} {'same tokens as x86-64' if same else 'DIFFERENT tokens'}")
        print(f"{cpu:<11} bundle verify    exit {results[cpu]['verify']['exit']}")
        failures += results[cpu]["verify"]["exit"] != 0
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
