"""The speech simulated users say: 16 kHz mono PCM16 WAVs shipped as package data, texts in a manifest."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

MANIFEST_NAME = "manifest.json"
SAMPLE_WIDTH = 2  # PCM16
DATA_DIR = Path(__file__).resolve().parent / "data"


class Utterance(BaseModel):
    model_config = ConfigDict(frozen=True)

    file: str = Field(description="WAV file name, relative to the manifest.")
    text: str = Field(description="What the speech says (the expected transcript).")
    sample_rate: int
    duration_s: float


class SpeechManifest(BaseModel):
    generator: str
    utterances: list[Utterance] = Field(min_length=1)


@dataclass(frozen=True)
class Speech:
    """One utterance loaded into memory, ready to stream."""

    name: str
    text: str
    sample_rate: int
    pcm: bytes

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / SAMPLE_WIDTH / self.sample_rate

    def frames(self, frame_ms: int) -> list[bytes]:
        """The PCM split into frames of ``frame_ms`` (the last one may be shorter)."""
        step = frame_bytes(self.sample_rate, frame_ms)
        return [self.pcm[i : i + step] for i in range(0, len(self.pcm), step)]


def frame_bytes(sample_rate: int, frame_ms: int) -> int:
    return sample_rate * frame_ms // 1000 * SAMPLE_WIDTH


def read_wav(path: Path) -> tuple[bytes, int]:
    """PCM16 mono samples and the rate of a WAV file; anything else is refused with a clear error."""
    with wave.open(str(path), "rb") as wav:
        if wav.getnchannels() != 1 or wav.getsampwidth() != SAMPLE_WIDTH:
            raise ValueError(
                f"{path}: need mono 16-bit PCM, got {wav.getnchannels()} channel(s), "
                f"{8 * wav.getsampwidth()}-bit"
            )
        return wav.readframes(wav.getnframes()), wav.getframerate()


def load_speech(directory: Path | None = None) -> list[Speech]:
    """The utterances listed in ``directory/manifest.json`` (default: the shipped package data)."""
    if directory is None:
        directory = DATA_DIR
    manifest_path = directory / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}")
    manifest = SpeechManifest.model_validate_json(manifest_path.read_text())
    speeches = []
    for utt in manifest.utterances:
        pcm, rate = read_wav(directory / utt.file)
        speeches.append(Speech(name=Path(utt.file).stem, text=utt.text, sample_rate=rate, pcm=pcm))
    return speeches
