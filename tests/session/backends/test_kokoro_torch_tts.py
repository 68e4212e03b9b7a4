"""hexgrad's ``kokoro`` (PyTorch) backend, offline: the missing-package error and our adapter's handling of
the pipeline's output, driven by a stand-in pipeline (torch and the hub weights are not available here)."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voicechat_session.backends.kokoro_torch_tts import (
    KokoroTorchOptions,
    KokoroTorchTTS,
    import_kokoro,
    to_float32,
)
from voicechat_session.backends.loader import load_tts
from voicechat_session.settings import SessionSettings


class FakeTensor:
    """Quacks like a CUDA ``torch.Tensor`` for what the adapter calls: ``.detach().cpu().numpy()``."""

    def __init__(self, values: list[float]) -> None:
        self.values = values
        self.moved_to_cpu = False

    def detach(self) -> FakeTensor:
        return self

    def cpu(self) -> FakeTensor:
        self.moved_to_cpu = True
        return self

    def numpy(self) -> np.ndarray:
        assert self.moved_to_cpu, "a GPU tensor must be moved to the CPU before .numpy()"
        return np.array(self.values, dtype=np.float64)


@dataclass
class FakeResult:
    """Shape of ``KPipeline.Result``: graphemes, phonemes and ``audio`` (None when no model ran)."""

    graphemes: str
    phonemes: str
    audio: Any


class StandInPipeline:
    """Stands in for ``KPipeline``: records calls, yields results like the real generator does."""

    def __init__(self, results: list[FakeResult]) -> None:
        self.results = results
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self, text: str, voice: str, speed: float, split_pattern: str | None
    ) -> Iterator[FakeResult]:
        self.calls.append({"text": text, "voice": voice, "speed": speed, "split_pattern": split_pattern})
        yield from self.results


def test_missing_package_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kokoro", None)  # makes `import kokoro` raise ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'voicechat\[kokoro-torch\]'"):
        import_kokoro()
    with pytest.raises(RuntimeError, match="tts_backend=kokoro needs the kokoro package"):
        load_tts(SessionSettings(tts_backend="kokoro"))


def test_adapter_joins_pipeline_chunks_into_float32() -> None:
    pipeline = StandInPipeline(
        [
            FakeResult("Hello,", "hVlO,", FakeTensor([0.1, 0.2])),
            FakeResult("", "", None),  # a chunk without audio is skipped
            FakeResult("world.", "wVld.", np.array([[0.3], [-0.4]], dtype=np.float64)),
        ]
    )
    tts = KokoroTorchTTS(pipeline, voices=["jf_alpha", "af_heart"])
    audio = tts.synthesize("Hello, world.", "af_heart", 1.2)
    assert audio.dtype == np.float32
    np.testing.assert_allclose(audio, [0.1, 0.2, 0.3, -0.4], rtol=1e-6)
    # One clause in: the service already split the text, so no newline splitting on top.
    assert pipeline.calls == [
        {"text": "Hello, world.", "voice": "af_heart", "speed": 1.2, "split_pattern": None}
    ]
    assert tts.voices == ["af_heart", "jf_alpha"]


def test_adapter_passes_local_voice_files(tmp_path: Path) -> None:
    pipeline = StandInPipeline([FakeResult("Hi.", "hI.", np.zeros(10, np.float32))])
    tts = KokoroTorchTTS(pipeline, voices=["af_heart"], voices_dir=tmp_path)
    assert tts.synthesize("Hi.", "af_heart", 1.0).size == 10
    assert pipeline.calls[0]["voice"] == str(tmp_path / "af_heart.pt")


def test_adapter_errors_and_empty_input() -> None:
    pipeline = StandInPipeline([])
    tts = KokoroTorchTTS(pipeline, voices=["af_heart"])
    with pytest.raises(ValueError, match=r"unknown voice 'nope'; available voices: af_heart"):
        tts.synthesize("Hi.", "nope", 1.0)
    with pytest.raises(ValueError, match="speed must be between"):
        tts.synthesize("Hi.", "af_heart", 0.1)
    assert tts.synthesize("  ", "af_heart", 1.0).size == 0
    assert pipeline.calls == []  # nothing reached the pipeline
    assert tts.synthesize("Hi.", "af_heart", 1.0).size == 0  # a pipeline yielding nothing: silence
    with pytest.raises(ValueError, match="no Kokoro voices"):
        KokoroTorchTTS(pipeline, voices=[])


def test_adapter_serialises_calls_into_the_pipeline() -> None:
    active = 0
    peak = 0

    class Probe(StandInPipeline):
        def __call__(
            self, text: str, voice: str, speed: float, split_pattern: str | None
        ) -> Iterator[FakeResult]:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            try:
                yield FakeResult(text, text, np.full(1000, 0.1, np.float32))
            finally:
                active -= 1

    tts = KokoroTorchTTS(Probe([]), voices=["af_heart"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        sizes = list(pool.map(lambda i: tts.synthesize(f"clause {i}", "af_heart", 1.0).size, range(40)))
    assert sizes == [1000] * 40
    assert peak == 1


def test_options_validate_local_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"must be a directory of <voice>\.pt files"):
        KokoroTorchOptions.from_settings(
            SessionSettings(tts_backend="kokoro", tts_voices_path=tmp_path / "v.npz")
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KokoroTorchOptions.from_settings(
            SessionSettings(tts_backend="kokoro", tts_model_path=tmp_path / "k.pth")
        )
    options = KokoroTorchOptions.from_settings(SessionSettings(tts_backend="kokoro", tts_device="cuda"))
    assert (options.lang, options.device, options.model_path, options.voices_dir) == (
        "en-us",
        "cuda",
        None,
        None,
    )


def test_to_float32_flattens_any_array_like() -> None:
    assert to_float32([0.5, -0.5]).dtype == np.float32
    assert to_float32(np.ones((2, 3))).shape == (6,)


def test_load_wires_kmodel_and_kpipeline_as_kokoro_0_9_expects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load`` against a stand-in ``kokoro`` module with the 0.9 constructor signatures (read from
    hexgrad/kokoro ``kokoro/model.py`` and ``kokoro/pipeline.py``)."""
    created: dict[str, Any] = {}

    class KModel:
        def __init__(self, repo_id: str | None = None, config: Any = None, model: str | None = None) -> None:
            created["model"] = {"repo_id": repo_id, "config": config, "model": model}

        def to(self, device: str) -> KModel:
            created["device"] = device
            return self

        def eval(self) -> KModel:
            return self

    class KPipeline:
        def __init__(self, lang_code: str, repo_id: str | None = None, model: Any = True) -> None:
            created["pipeline"] = {"lang_code": lang_code, "repo_id": repo_id, "model": model}

        def __call__(
            self, text: str, voice: str, speed: float, split_pattern: str | None
        ) -> Iterator[FakeResult]:
            yield FakeResult(text, text, np.ones(5, np.float32))

    module = types.ModuleType("kokoro")
    module.KModel = KModel  # type: ignore[attr-defined]
    module.KPipeline = KPipeline  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kokoro", module)

    weights = tmp_path / "kokoro-v1_0.pth"
    weights.write_bytes(b"weights")
    voices = tmp_path / "voices"
    voices.mkdir()
    for name in ("af_heart", "bm_george"):
        (voices / f"{name}.pt").write_bytes(b"voice")
    options = KokoroTorchOptions(lang="en-us", device="cuda", model_path=weights, voices_dir=voices)

    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        KokoroTorchTTS.load(options)
    (tmp_path / "config.json").write_text("{}")
    tts = KokoroTorchTTS.load(options)

    assert created["model"] == {
        "repo_id": "hexgrad/Kokoro-82M",
        "config": str(tmp_path / "config.json"),
        "model": str(weights),
    }
    assert created["device"] == "cuda"
    assert created["pipeline"]["lang_code"] == "en-us"  # KPipeline maps it to "a" (American English)
    assert isinstance(created["pipeline"]["model"], KModel)
    assert tts.voices == ["af_heart", "bm_george"]
    assert tts.synthesize("Hi.", "bm_george", 1.0).size == 5
