"""The native core (native/, fox_edge.h) built here and tested against what the Python side writes: template
renderings byte for byte, the Python runner's greedy tokens, UTF-8 streaming, cancel, overflow, bundle checks and
the performance cores of fake sysfs trees. The C++ test program (native/tests/test_core.cpp) reads the spec."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fox_edge.bundle import make_bundle
from fox_edge.testing.native import INJECTED, SCRIPTED_REPLY, TURNS, edit_manifest, greedy_case, template_cases

# Fake /sys/devices/system/cpu trees: cpu index -> (cpuinfo_max_freq in kHz, cpu_capacity or None)
TOPOLOGIES = {
    "1+3+4 phone": ({i: (1_800_000, None) for i in range(4)} | {i: (2_800_000, None) for i in range(4, 7)} | {7: (3_200_000, None)}, 4),
    "4+4 phone": ({i: (1_800_000, None) for i in range(4)} | {i: (2_400_000, None) for i in range(4, 8)}, 4),
    "1+3+4 phone with cpu_capacity": ({i: (0, 380) for i in range(4)} | {i: (0, 870) for i in range(4, 7)} | {7: (0, 1024)}, 4),
    "laptop": ({i: (4_000_000, None) for i in range(8)}, 8),
    # Snapdragon 8 Elite: 2 prime cores at 4.32 GHz and 6 at 3.53 (0.82 of them): all 8 are performance cores, capped.
    "2+6 phone": ({i: (3_530_000, None) for i in range(6)} | {6: (4_320_000, None), 7: (4_320_000, None)}, 4),
    "1+5+2 phone": ({0: (2_000_000, None), 1: (2_000_000, None)} | {i: (3_150_000, None) for i in range(2, 7)} | {7: (3_300_000, None)}, 4),
    "16-core desktop": ({i: (5_000_000, None) for i in range(16)}, 8),
    "topology unreadable": ({i: (0, None) for i in range(8)}, min(4, os.cpu_count() or 1)),
}


# Manifests that open in a lax reader and fail later: each must be refused at open, naming the field.
MANIFEST_DAMAGE = {
    "no context": lambda m: m.pop("context"),
    "a context that is text": lambda m: m["context"].update(default="2048"),
    "a temperature that is text": lambda m: m["generation"].update(temperature="warm"),
    "no generation defaults": lambda m: m.pop("generation"),
    "stop ids that are text": lambda m: m["tokenizer"].update(stop_ids=["<eos>"]),
    "a file size that is text": lambda m: m["files"][0].update(size="big"),
}


def resume_case(bundle: str, file: str, n_ctx: int = 1024) -> dict:
    """A chat that nearly fills the context (about 1,500 tokens of SmolLM2's 2,048; 770 of 1,024, the random tiny
    model's; 490 of 512, the trained one's) saved, restored in a new chat, and continued."""
    parts, repeat = {2048: (12, 9), 1024: (6, 8), 512: (5, 4)}[n_ctx]
    turns = [f"Part {i}: " + "the castle stood on the hill above the sleeping town, " * repeat for i in range(parts)] + ["And then?"]
    return {"bundle": bundle, "n_ctx": n_ctx, "max_tokens": 16, "file": file, "turns": turns}


def fake_sysfs(folder: Path, cores: dict) -> Path:
    for index, (frequency, capacity) in cores.items():
        cpu = folder / f"cpu{index}"
        (cpu / "cpufreq").mkdir(parents=True)
        if frequency:
            (cpu / "cpufreq" / "cpuinfo_max_freq").write_text(f"{frequency}\n")
        if capacity:
            (cpu / "cpu_capacity").write_text(f"{capacity}\n")
    (folder / "cpufreq").mkdir()  # sysfs holds other entries beside the cpuN folders
    (folder / "online").write_text("0-7\n")
    return folder


def run_core(spec: dict, folder: Path) -> subprocess.CompletedProcess:
    from fox_edge.testing.native import build_core

    core = build_core()
    path = folder / "spec.json"
    path.write_text(json.dumps({"version": importlib.metadata.version("fox-edge")} | spec, ensure_ascii=False))
    result = subprocess.run([str(core / "fox_edge_tests"), str(path)], capture_output=True, text=True, timeout=600)
    assert "llama_model_load" not in result.stderr, result.stderr[-2000:]  # the log went to fox_log_set's callback
    return result


@pytest.mark.prepared("x86-64 native core")
def test_native_core_on_the_tiny_bundle(tiny_bundle, scripted_bundle, tmp_path):
    bundle = tiny_bundle
    flipped = shutil.copytree(bundle, tmp_path / "flipped")
    data = bytearray((flipped / "model.gguf").read_bytes())
    data[len(data) // 2] ^= 1
    (flipped / "model.gguf").write_bytes(bytes(data))
    truncated = shutil.copytree(bundle, tmp_path / "truncated")
    (truncated / "model.gguf").write_bytes((bundle / "model.gguf").read_bytes()[:4096])
    missing = shutil.copytree(bundle, tmp_path / "missing")
    (missing / "model.gguf").unlink()
    spec = {
        "templates": template_cases(bundle, "Fox-1"),
        "greedy": [
            greedy_case(bundle, "tiny Fox-1"),
            greedy_case(bundle, "tiny Fox-1 with a system prompt", "Be brief."),
            greedy_case(bundle, "tiny Fox-1, a message spelling the template's markup", turns=[INJECTED, "And " + INJECTED]),
        ],  # fmt: skip
        "utf8": {"text": SCRIPTED_REPLY, "bundle": str(scripted_bundle)},
        "cancel": {"bundle": str(edit_manifest(bundle, tmp_path / "endless", lambda m: m["tokenizer"].update(stop_ids=[0])))},
        "overflow": {
            "bundle": str(bundle),
            "n_ctx": 128,
            "messages": [f"Message {i}: " + "the castle stood on the hill " * 4 for i in range(8)],
        },
        "resume": resume_case(str(bundle), str(tmp_path / "saved.chat")),
        "threads": [
            {"name": name, "sysfs": str(fake_sysfs(tmp_path / name.replace(" ", "_"), cores)), "expected": expected}
            for name, (cores, expected) in TOPOLOGIES.items()
        ]
        + [{"at_most": len(os.sched_getaffinity(0))}],  # fmt: skip
    }
    result = run_core(spec, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed")


@pytest.mark.slow
@pytest.mark.prepared("x86-64 native core")
def test_native_core_on_smollm2(smollm2_gguf, tmp_path):
    """SmolLM2's ChatML template (Jinja with loops and conditionals) and its greedy replies, as the Python side makes them."""
    bundle = make_bundle(smollm2_gguf, tmp_path / "smollm2").folder
    spec = {
        "templates": template_cases(bundle, "SmolLM2"), "greedy": [greedy_case(bundle, "SmolLM2")],
        "resume": resume_case(str(bundle), str(tmp_path / "saved.chat"), 2048),  # a 1,500-token chat restored
    }  # fmt: skip
    result = run_core(spec, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert int(re.search(r"resume: (\d+) prompt tokens", result.stdout)[1]) >= 1500, result.stdout


@pytest.mark.slow
@pytest.mark.skipif(platform.machine() != "x86_64" or os.geteuid() != 0, reason="emulates ARM64 on x86-64 and needs root (mounts, chroot)")
@pytest.mark.prepared("ARM64 native core")
def test_native_core_under_qemu(trained_tiny_fox1, scripted_bundle, smollm2, tmp_path):
    """The core cross-compiled for ARM64 with every CPU variant, on an emulated cortex-a53 (plain NEON), cortex-a76
    (dotprod) and qemu's max CPU (i8mm, SVE): each loads its own variant and gives the x86-64 Python runner's greedy
    tokens and template renderings, the mid-character reply whole, and cancel. The trained tiny Fox-1: the
    random-weight one has near-ties that ARM's and x86's float summation orders resolve differently."""
    from fox_edge.converters.gguf import convert_to_gguf
    from fox_edge.testing.arm64 import CPUS, run_native_tests

    gguf = convert_to_gguf(trained_tiny_fox1, tmp_path / "trained.f16.gguf").output
    bundle = make_bundle(gguf, tmp_path / "trained-bundle").folder
    endless = edit_manifest(bundle, tmp_path / "endless", lambda m: m["tokenizer"].update(stop_ids=[0]))
    # SmolLM2 in f16, real weights: at Q8_0 its replies meet near-ties (top-2 logits within rounding) that x86's and
    # ARM's integer dot-product summation orders resolve differently, on the a53 already in the first reply.
    smollm2_bundle = make_bundle(convert_to_gguf(smollm2, tmp_path / "smollm2.f16.gguf", "f16").output, tmp_path / "smollm2-bundle").folder
    spec = {
        "templates": template_cases(bundle, "Fox-1", at="/work/trained-bundle"),
        "greedy": [greedy_case(bundle, "trained tiny Fox-1", at="/work/trained-bundle")],
        "utf8": {"text": SCRIPTED_REPLY, "bundle": f"/work/{scripted_bundle.name}"},
        "cancel": {"bundle": "/work/endless"},
    }
    # SmolLM2 on the two phone cores (slow under emulation: one turn; the tiny model covers the KV cache across turns).
    with_smollm2 = spec | {
        "templates": spec["templates"] + template_cases(smollm2_bundle, "SmolLM2", at="/work/smollm2-bundle"),
        "greedy": spec["greedy"] + [greedy_case(smollm2_bundle, "SmolLM2", at="/work/smollm2-bundle", turns=TURNS[:1])],
    }
    cpus = (*CPUS, "max")  # max: i8mm, SVE and SVE2 as well
    # max loads its variant by name (through the loader's search path), as an app whose libraries stay in its APK does.
    by_name = spec | {"cpu_backend_folder": "/no-such-folder"}
    # A saved chat restored, on the dotprod core (emulated SVE, on max, is several times slower).
    specs = {
        "cortex-a53": with_smollm2,
        "cortex-a76": with_smollm2 | {"resume": resume_case("/work/trained-bundle", "/work/saved.chat", 512)},
    }
    results = run_native_tests({cpu: specs.get(cpu, by_name) for cpu in cpus}, [bundle, endless, scripted_bundle, smollm2_bundle])
    for cpu in cpus:
        result = results[cpu]
        failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
        assert result.returncode == 0, (cpu, failures or result.stdout[-2000:], result.stderr[-1000:])
        assert result.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed"), cpu
    # One build, the CPU variant chosen at run time: plain NEON on the armv8.0 core, dotprod where it exists.
    features = {
        cpu: next(line for line in results[cpu].stdout.splitlines() if line.startswith("cpu features:")).split()[2:] for cpu in CPUS
    }
    assert "DOTPROD" not in features["cortex-a53"] and "NEON" in features["cortex-a53"], features
    assert "DOTPROD" in features["cortex-a76"], features
    # Android 15's 16 KB pages: every shared library's loadable segments aligned to 16 KB.
    from fox_edge.downloads import cache_dir
    from fox_edge.testing.arm64 import build_native_core, native_libraries

    build = build_native_core(cache_dir() / "arm64")
    libraries = [p for p in native_libraries(build) if not p.is_symlink()]
    misaligned = {p.name: load_alignments(p) for p in libraries if min(load_alignments(p)) < 16384}
    assert len(libraries) >= 10 and not misaligned, misaligned
    # Every CPU variant in the folder Android packages (configured as AGP configures it), none left behind in bin/.
    variants = {p.name for p in libraries if p.name.startswith("libggml-cpu-")}
    assert len(variants) >= 7 and {"libfox_edge.so", "libllama.so", "libggml.so", "libggml-base.so"} <= {
        p.name for p in native_libraries(build)
    }, variants
    assert "DOTPROD" in next(line for line in results["max"].stdout.splitlines() if line.startswith("cpu features:")), results[
        "max"
    ].stdout[:500]


def load_alignments(library: Path) -> list[int]:
    """p_align of every PT_LOAD segment of a 64-bit little-endian ELF file."""
    import struct

    data = library.read_bytes()
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    size, count = struct.unpack_from("<HH", data, 0x36)
    headers = [struct.unpack_from("<IIQQQQQQ", data, phoff + i * size) for i in range(count)]
    return [h[7] for h in headers if h[0] == 1]


@pytest.mark.slow
@pytest.mark.prepared("macOS native core")
def test_native_core_cross_compiles_for_macos():
    """The core and llama.cpp's CPU backend cross-compiled for Apple Silicon macOS with zig (compile only: nothing Apple
    runs here): a Mach-O arm64 dylib exporting the C API, and its test program."""
    import struct

    from fox_edge.testing.native import build_core_macos

    build = build_core_macos()
    for name, filetype in (("libfox_edge.dylib", 6), ("fox_edge_tests", 2)):  # MH_DYLIB, MH_EXECUTE
        magic, cputype, _, kind = struct.unpack("<IiiI", (build / name).read_bytes()[:16])
        assert (magic, cputype, kind) == (0xFEEDFACF, 0x0100000C, filetype), name  # 64-bit Mach-O, CPU_TYPE_ARM64
    if not (shutil.which("llvm-nm-14") or shutil.which("llvm-nm")):
        subprocess.run(["apt-get", "install", "-y", "-qq", "llvm-14"], check=True, capture_output=True)
    nm = shutil.which("llvm-nm-14") or shutil.which("llvm-nm")
    exported = subprocess.run(
        [nm, "--extern-only", "--defined-only", str(build / "libfox_edge.dylib")], capture_output=True, text=True, check=True
    ).stdout
    header = (Path(__file__).resolve().parents[1] / "native" / "include" / "fox_edge.h").read_text()
    api = set(re.findall(r"FOX_API [^;]*?\b(fox_\w+)\(", header))
    assert api and all(f"_{function}" in exported.split() for function in api), api - set(exported.split())
