"""A stand-in for the ``vllm`` CLI: ``fake_vllm.py serve MODEL --flags...`` serving the OpenAI API.

It parses the ``vllm serve`` command line strictly (unknown flags are rejected with exit code 2, as vLLM's
argparse does) and serves MODEL, a GGUF file, with the real llama.cpp server through xllamacpp on --host and
--port, until SIGTERM/SIGINT. This lets the service's vLLM child-process path (spawn, health wait, warm-up,
readiness, death, stop) run end to end on a CPU-only machine.

``write_launcher`` makes an executable that runs this file with the current interpreter, to be passed as
``--vllm-executable``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
from pathlib import Path


def _fraction(value: str) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", nargs="+", default=None)
    serve.add_argument("--max-model-len", type=int, default=None)
    serve.add_argument("--gpu-memory-utilization", type=_fraction, default=0.9)
    serve.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    serve.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    # A few more real engine args, so extra_args can be exercised.
    serve.add_argument("--max-num-seqs", type=int, default=None)
    serve.add_argument("--dtype", choices=["auto", "half", "float16", "bfloat16", "float", "float32"])
    serve.add_argument("--enforce-eager", action="store_true")
    serve.add_argument("--seed", type=int, default=None)
    serve.add_argument("--override-generation-config", type=json.loads, default=None)
    return parser


def serve(args: argparse.Namespace) -> int:
    import xllamacpp  # the llama.cpp server stands in for vLLM's

    model = Path(args.model)
    if not model.is_file():
        sys.stderr.write(f"fake vllm: {model} is not a GGUF file\n")
        return 1
    params = xllamacpp.CommonParams()
    params.model.path = str(model)
    params.hostnames = [args.host or "0.0.0.0"]
    params.port = args.port
    params.n_ctx = args.max_model_len or 2048
    params.n_parallel = args.max_num_seqs or 2
    params.cache_prompt = bool(args.enable_prefix_caching)
    params.endpoint_metrics = True
    params.model_alias = set(args.served_model_name or [args.model])
    params.verbosity = 1
    # As vLLM: the key comes from VLLM_API_KEY, the generation config's max_new_tokens caps max_tokens.
    if api_key := os.environ.get("VLLM_API_KEY"):
        params.api_keys = [api_key]
    if max_new_tokens := (args.override_generation_config or {}).get("max_new_tokens"):
        params.n_predict = int(max_new_tokens)
    # One thread decodes fastest on a CPU shared with other tests (see the threads setting).
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    # Block the stop signals before the server threads exist, then wait for one of them.
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)
    server = xllamacpp.Server(params)
    sys.stderr.write(f"fake vllm: serving {model.name} on {args.host}:{args.port} (pid {os.getpid()})\n")
    received = signal.sigwait(stop)
    sys.stderr.write(f"fake vllm: {signal.Signals(received).name}, shutting down\n")
    del server
    return 0


def write_launcher(path: Path) -> Path:
    """An executable ``vllm`` look-alike that execs this module with this interpreter."""
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
