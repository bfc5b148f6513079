"""The Android library's Kotlin API and JNI bridge on the host JVM (JNI is the same specification on Android): a reply
split mid-character arrives whole, greedy tokens equal the Python runner's, the template renders as Python's Jinja
does, coroutine cancellation stops generation, errors are FoxExceptions. The test program is
apps/android/fox-edge/src/test/kotlin/dev/foxedge/FoxEdgeJvmTest.kt; fox_edge/testing/android.py builds it."""

from __future__ import annotations

import shutil

import pytest

from fox_edge.testing.native import CONVERSATIONS, SCRIPTED_REPLY, edit_manifest, greedy_case, template_cases

pytestmark = pytest.mark.skipif(
    shutil.which("javac") is None or shutil.which("npm") is None, reason="needs a JDK and npm (the Kotlin compiler)"
)


def properties(values: dict[str, str]) -> str:
    """A java.util.Properties file in UTF-8 (Properties.load(Reader) decodes the escapes below)."""
    escape = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "=": "\\=", ":": "\\:"})
    return "".join(f"{key}={value.translate(escape)}\n" for key, value in values.items())


def flipped_copy(bundle, copy):
    shutil.copytree(bundle, copy)
    data = bytearray((copy / "model.gguf").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "model.gguf").write_bytes(bytes(data))
    return copy


@pytest.mark.prepared("x86-64 native core")
def test_kotlin_api_on_the_host_jvm(tiny_bundle, scripted_bundle, tmp_path):
    from fox_edge.testing.android import run_tests

    greedy = greedy_case(tiny_bundle, "tiny Fox-1")
    (unicode_case,) = [c for c in template_cases(tiny_bundle, "Fox-1") if c["name"] == "Fox-1 unicode"]
    spec = tmp_path / "spec.properties"
    spec.write_text(
        properties(
            {
                "scripted.reply": SCRIPTED_REPLY,
                "scripted.bundle": str(scripted_bundle),
                "scripted.unicode_bundle": str(shutil.copytree(scripted_bundle, tmp_path / "bündle 🦊 世界")),
                "greedy.bundle": str(tiny_bundle),
                "greedy.turns": "\x1f".join(greedy["turns"]),
                "greedy.max_tokens": str(greedy["max_tokens"]),
                "greedy.expected": ";".join(",".join(map(str, tokens)) for tokens in greedy["expected"]),
                "render.messages": "\x1e".join(f"{role}\x1f{content}" for role, content in CONVERSATIONS["unicode"]),
                "render.expected": unicode_case["expected"],
                "endless.bundle": str(edit_manifest(tiny_bundle, tmp_path / "endless", lambda m: m["tokenizer"].update(stop_ids=[0]))),
                "missing.bundle": str(tmp_path / "no-bundle-here"),
                "flipped.bundle": str(flipped_copy(tiny_bundle, tmp_path / "flipped")),
                "resume.file": str(tmp_path / "saved.chat"),
            }
        ),  # fmt: skip
        encoding="utf-8",
    )
    result = run_tests(spec)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1].endswith(" passed, 0 failed"), result.stdout
