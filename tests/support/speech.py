"""Spoken test audio: WAV files of real speech, made once and cached by content.

Speech comes from our own Kokoro backend (the embedded int8 model; transcribes best) or, as a fallback,
the espeak-ng command line (robotic but dependency-free). Files are mono PCM16 at the rate asked for (16 kHz
by default, what the session service's STT takes), with silence before and after so a VAD sees the end of the
utterance. ::

    from tests.support.speech import read_wav, speech_wav, words

    path = speech_wav("What is the capital of France?")          # cached; cheap after the first call
    audio, rate = read_wav(path)                                   # float32 in [-1, 1]
    assert words(transcript) == words("What is the capital of France?")

The cache lives in ``.cache/test-speech/`` at the repository root (git-ignored; ``make clean`` removes it),
or wherever ``VOICECHAT_TEST_SPEECH_CACHE`` or the ``cache_dir`` argument points.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import wave
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from voicechat_session.audio import float_to_pcm16, pcm16_to_float, resample
from voicechat_session.backends.base import STT_SAMPLE_RATE, TTS_SAMPLE_RATE, TextToSpeech
from voicechat_session.backends.kokoro_onnx_tts import KokoroOnnxTTS
from voicechat_session.backends.loader import load_tts
from voicechat_session.settings import SessionSettings

Audio = npt.NDArray[np.float32]
Engine = Literal["auto", "kokoro", "espeak"]

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_ENV = "VOICECHAT_TEST_SPEECH_CACHE"
_FORMAT_VERSION = 1  # bump when the way files are made changes, so stale cache entries are not reused
DEFAULT_VOICE = str(SessionSettings.model_fields["tts_voice"].default)
_kokoro_lock = threading.Lock()


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or REPO_ROOT / ".cache" / "test-speech")


@lru_cache(maxsize=1)
def kokoro_tts() -> KokoroOnnxTTS:
    """Our Kokoro backend on the embedded model, loaded once per process (~1 s, ~400 MB)."""
    cache = Path(SessionSettings.model_fields["model_cache_dir"].default)
    settings = SessionSettings(
        model_cache_dir=cache, tts_model_path=None, tts_voices_path=None, tts_device="cpu"
    )
    # As the service loads it: integer or float convolutions, whichever this machine runs faster.
    tts = load_tts(settings)
    assert isinstance(tts, KokoroOnnxTTS)
    return tts


def synthesize_kokoro(text: str, voice: str = DEFAULT_VOICE, speed: float = 1.0) -> tuple[Audio, int]:
    with _kokoro_lock:  # one load even when tests call this from several threads
        tts = kokoro_tts()
    return tts.synthesize(text, voice, speed), TTS_SAMPLE_RATE


def synthesize_espeak(text: str, voice: str = "en-us", speed: float = 1.0) -> tuple[Audio, int]:
    """espeak-ng (the Debian package) through its command line; writes a WAV to stdout."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise RuntimeError("espeak-ng is not installed: run `make system` (scripts/install-system.sh)")
    words_per_minute = str(round(175 * speed))
    result = subprocess.run(
        # Text on stdin: a sentence starting with "-" must not read as an option.
        [binary, "-v", voice, "-s", words_per_minute, "--stdout", "--stdin"],
        input=text.encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "espeak.wav"
        path.write_bytes(result.stdout)
        return read_wav(path)


def speech_wav(
    text: str,
    *,
    rate: int = STT_SAMPLE_RATE,
    engine: Engine = "auto",
    voice: str | None = None,
    speed: float = 1.0,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
    cache_dir: Path | None = None,
    tts: TextToSpeech | None = None,
) -> Path:
    """A mono PCM16 WAV of ``text`` spoken at ``rate`` Hz, padded with silence; cached by its parameters.

    ``engine="auto"`` uses Kokoro and falls back to espeak-ng when the Kokoro model cannot be loaded.
    ``tts``: an already loaded Kokoro backend to speak with (saves loading a second copy in this process).
    """
    if not text.strip():
        raise ValueError("text to speak must not be empty")
    chosen = engine
    if engine == "auto":
        chosen = "kokoro" if tts is not None or _kokoro_available() else "espeak"
    key = {
        "v": _FORMAT_VERSION,
        "text": text,
        "engine": chosen,
        "voice": voice,
        "speed": speed,
        "rate": rate,
        "lead_s": lead_s,
        "tail_s": tail_s,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "speech"
    directory = cache_dir or default_cache_dir()
    path = directory / f"{slug}-{digest}.wav"
    if path.is_file():
        return path

    if chosen == "kokoro" and tts is not None:
        audio, source_rate = tts.synthesize(text, voice or DEFAULT_VOICE, speed), TTS_SAMPLE_RATE
    elif chosen == "kokoro":
        audio, source_rate = synthesize_kokoro(text, voice or DEFAULT_VOICE, speed)
    else:
        audio, source_rate = synthesize_espeak(text, voice or "en-us", speed)
    if audio.size == 0:
        raise RuntimeError(f"{chosen} produced no audio for {text!r}")
    audio = resample(audio, source_rate, rate)
    audio = np.concatenate(
        [np.zeros(round(lead_s * rate), np.float32), audio, np.zeros(round(tail_s * rate), np.float32)]
    )
    directory.mkdir(parents=True, exist_ok=True)
    # Write then rename: parallel test processes may make the same file at once.
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".speech-", suffix=".wav")
    os.close(fd)
    try:
        write_wav(Path(tmp), audio, rate)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def speech_audio(
    text: str,
    *,
    rate: int = STT_SAMPLE_RATE,
    engine: Engine = "auto",
    voice: str | None = None,
    speed: float = 1.0,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
    cache_dir: Path | None = None,
    tts: TextToSpeech | None = None,
) -> Audio:
    """Like :func:`speech_wav` but returns the float32 samples (at ``rate``)."""
    path = speech_wav(
        text,
        rate=rate,
        engine=engine,
        voice=voice,
        speed=speed,
        lead_s=lead_s,
        tail_s=tail_s,
        cache_dir=cache_dir,
        tts=tts,
    )
    audio, _rate = read_wav(path)
    return audio


@lru_cache(maxsize=1)
def _kokoro_available() -> bool:
    try:
        with _kokoro_lock:
            kokoro_tts()
    except (RuntimeError, OSError, ValueError):
        return False
    return True


def write_wav(path: Path, audio: Audio, rate: int) -> None:
    """Mono PCM16 little-endian WAV."""
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(float_to_pcm16(audio))


def read_wav(path: Path) -> tuple[Audio, int]:
    """A PCM16 WAV → (mono float32 samples in [-1, 1), rate); several channels are averaged."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported, got {8 * f.getsampwidth()}-bit")
        channels, rate = f.getnchannels(), f.getframerate()
        frames = f.readframes(f.getnframes())
    samples = pcm16_to_float(frames)
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
    return samples, rate


def pcm16_bytes(audio: Audio) -> bytes:
    """float32 → the PCM16 LE bytes the WebSocket protocol carries."""
    return float_to_pcm16(audio)


def rms(audio: Audio) -> float:
    """Root mean square level (0 for empty audio)."""
    samples = np.asarray(audio, dtype=np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


def rms_dbfs(audio: Audio) -> float:
    """RMS level in dB relative to full scale (-inf for digital silence)."""
    level = rms(audio)
    return 20 * float(np.log10(level)) if level > 0 else float("-inf")


def active_fraction(
    audio: Audio, rate: int, *, frame_ms: float = 20.0, threshold_dbfs: float = -45.0
) -> float:
    """Share of ``frame_ms`` frames whose RMS is above ``threshold_dbfs``."""
    samples = np.asarray(audio, dtype=np.float64)
    frame = max(1, round(rate * frame_ms / 1000))
    count = samples.size // frame
    if count == 0:
        return 0.0
    levels = np.sqrt(np.mean(samples[: count * frame].reshape(count, frame) ** 2, axis=1))
    return float(np.mean(levels > 10 ** (threshold_dbfs / 20)))


def is_silent(audio: Audio, rate: int, *, threshold_dbfs: float = -45.0, min_active_s: float = 0.1) -> bool:
    """True when less than ``min_active_s`` of the audio is louder than ``threshold_dbfs`` (speech is ~-20)."""
    duration = np.asarray(audio).size / rate
    return active_fraction(audio, rate, threshold_dbfs=threshold_dbfs) * duration < min_active_s


def words(text: str) -> list[str]:
    """Lower-cased words without punctuation, for comparing transcripts: "Hello, World!" → hello, world."""
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))  # typographic apostrophe
