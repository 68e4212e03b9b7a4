"""Pure parts of the LLM service: the vLLM command line, warm-up figures, engine metrics (readiness: test_gate)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.support.fake_vllm import build_parser
from voicechat_common.cpus import usable_cpus
from voicechat_common.localstack import free_port
from voicechat_llm import config
from voicechat_llm.engines.llamacpp import build_params
from voicechat_llm.engines.vllm import build_vllm_argv, vllm_env
from voicechat_llm.metrics import count_in_flight
from voicechat_llm.report import WarmupSample
from voicechat_llm.settings import DEFAULT_VLLM_MODEL, LLMSettings
from voicechat_llm.warmup import warm_figures, warmup_user_turn


def _settings(**values: object) -> LLMSettings:
    return LLMSettings.model_validate(values)


def test_vllm_argv_from_settings() -> None:
    settings = _settings(
        engine="vllm",
        host="0.0.0.0",
        engine_port=8000,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        tensor_parallel_size=2,
        extra_args=["--max-num-seqs", "64", "--enforce-eager"],
        vllm_executable="/opt/bin/vllm",
    )
    argv = build_vllm_argv(settings, "meta-llama/Llama-3.1-8B-Instruct", "llama")
    assert argv == [
        "/opt/bin/vllm",
        "serve",
        "meta-llama/Llama-3.1-8B-Instruct",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--served-model-name",
        "llama",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.85",
        "--tensor-parallel-size",
        "2",
        "--enable-prefix-caching",
        "--override-generation-config",
        '{"max_new_tokens": 1024}',
        "--max-num-seqs",
        "64",
        "--enforce-eager",
    ]


def test_vllm_argv_prefix_caching_off_and_parsed_like_vllm() -> None:
    argv = build_vllm_argv(_settings(enable_prefix_caching=False), "m", "served")
    assert "--no-enable-prefix-caching" in argv
    assert "--enable-prefix-caching" not in argv
    # The stand-in's strict parser (vLLM's flag names) accepts exactly what the builder produces.
    parsed = build_parser().parse_args(argv[1:])
    assert parsed.enable_prefix_caching is False
    assert parsed.served_model_name == ["served"]
    assert parsed.max_model_len == 4096


def test_fake_vllm_rejects_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", "m", "--no-such-flag"])
    assert exit_info.value.code == 2
    assert "--no-such-flag" in capsys.readouterr().err


def test_warm_figures_skip_the_cold_first_generation() -> None:
    samples = [
        WarmupSample(ttft_seconds=1.0, total_seconds=2.0, completion_tokens=10, tokens_per_second=10.0),
        WarmupSample(ttft_seconds=0.1, total_seconds=0.5, completion_tokens=10, tokens_per_second=50.0),
        WarmupSample(ttft_seconds=0.3, total_seconds=0.7, completion_tokens=10, tokens_per_second=None),
    ]
    ttft, rate = warm_figures(samples)
    assert ttft == pytest.approx(0.2)
    assert rate == 50.0
    assert warm_figures(samples[:1]) == (1.0, 10.0)


def test_warmup_user_turns_differ_after_the_first() -> None:
    turns = [warmup_user_turn("Hi", i) for i in range(3)]
    assert turns[0] == "Hi"
    assert len(set(turns)) == 3


def test_count_in_flight() -> None:
    llamacpp = (
        "# TYPE llamacpp:requests_processing gauge\nllamacpp:requests_processing 2\n"
        "# TYPE llamacpp:requests_deferred gauge\nllamacpp:requests_deferred 1\n"
    )
    vllm = (
        '# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name="m"} 3\n'
        '# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name="m"} 0\n'
    )
    assert count_in_flight(llamacpp) == 3
    assert count_in_flight(vllm) == 3
    assert count_in_flight("# TYPE other gauge\nother 5\n") is None


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:8000"),
        ("10.0.0.5", "http://10.0.0.5:8000"),
        ("::1", "http://[::1]:8000"),
    ],
)
def test_engine_url_is_reachable_from_this_host(host: str, url: str, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("  Be brief.\n")
    settings = _settings(
        engine="vllm", host=host, vllm_executable=sys.executable, system_prompt_file=prompt, api_key="k"
    )
    with pytest.MonkeyPatch.context() as patch:
        # The ports are not bound here: only the derived values are under test.
        patch.setattr(config, "check_port_free", lambda *_: None)
        start = config.plan(settings)
    assert start.engine_url(8000) == url
    assert start.system_prompt == "Be brief."
    assert start.served_model_name == start.model == DEFAULT_VLLM_MODEL


def test_llamacpp_plan_names_the_model_after_the_file() -> None:
    settings = _settings(host="127.0.0.1", engine_port=free_port(), gate_port=free_port())
    start = config.plan(settings)
    assert start.model == str(config.embedded_model_path().resolve())
    assert start.served_model_name == "SmolLM2-135M-Instruct.Q4_1"


def _plan_without_ports(settings: LLMSettings) -> config.StartPlan:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "check_port_free", lambda *_: None)
        return config.plan(settings)


def test_api_key_from_file_wins_and_stays_out_of_repr(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-the-secret\n")
    start = _plan_without_ports(_settings(host="0.0.0.0", api_key="from-env", api_key_file=key_file))
    assert start.api_key == "from-the-secret"
    assert start.auth_headers() == {"Authorization": "Bearer from-the-secret"}
    assert "from-the-secret" not in repr(start)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::"])
def test_no_api_key_beyond_loopback_is_refused(host: str) -> None:
    with pytest.raises(config.ConfigError, match=r"no API key.*VOICECHAT_LLM_API_KEY"):
        _plan_without_ports(_settings(host=host))
    assert _plan_without_ports(_settings(host=host, allow_unauthenticated=True)).api_key is None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost"])
def test_loopback_may_run_without_a_key(host: str) -> None:
    start = _plan_without_ports(_settings(host=host))
    assert start.api_key is None
    assert start.auth_headers() == {}


@pytest.mark.parametrize(
    ("content", "error"),
    [("", "is empty"), ("  \n", "is empty"), ("two words", "whitespace"), (None, "cannot read")],
)
def test_bad_api_key_file(tmp_path: Path, content: str | None, error: str) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    with pytest.raises(config.ConfigError, match=error):
        _plan_without_ports(_settings(api_key_file=key_file))


def test_vllm_child_gets_the_key_in_its_environment_not_its_argv() -> None:
    settings = _settings(engine="vllm", api_key="s3cret", max_tokens=77)
    argv = build_vllm_argv(settings, "m", "served")
    assert not any("s3cret" in arg for arg in argv)
    assert argv[argv.index("--override-generation-config") + 1] == '{"max_new_tokens": 77}'
    assert vllm_env("s3cret")["VLLM_API_KEY"] == "s3cret"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_API_KEY", "inherited")
        assert "VLLM_API_KEY" not in vllm_env(None)


def test_llamacpp_params_key_cap_and_private_endpoints_off() -> None:
    settings = _settings(host="127.0.0.1", max_tokens=99, engine_port=free_port(), gate_port=free_port())
    start = config.plan(settings.model_copy(update={"api_key": SecretStr("k1")}))
    params = build_params(settings, start)
    assert params.api_keys == ["k1"]
    assert params.n_predict == 99
    assert params.endpoint_slots is False
    assert params.endpoint_props is False


def test_llamacpp_prompt_processing_and_generation_threads_are_separate() -> None:
    settings = _settings(host="127.0.0.1", engine_port=free_port(), gate_port=free_port())
    start = config.plan(settings)
    params = build_params(settings, start)
    assert params.cpuparams.n_threads == 1  # generation: one thread beside speech synthesis
    # Prompts: every CPU the process may use (they run while TTS waits for text).
    assert params.cpuparams_batch.n_threads == usable_cpus()
    tuned = build_params(settings.model_copy(update={"threads": 2, "batch_threads": 3}), start)
    assert (tuned.cpuparams.n_threads, tuned.cpuparams_batch.n_threads) == (2, 3)
