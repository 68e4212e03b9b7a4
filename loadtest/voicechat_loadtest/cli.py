"""``voicechat-loadtest``: ``run`` a load test against a session service URL, or ``bench`` the local stack.

Exit status: 0 when every connect and turn succeeded, 1 when some failed (results are still written),
2 for a bad target or bad arguments (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pydantic

from voicechat_common.localstack import LOCAL_LLM_NICE
from voicechat_common.logging import configure_logging
from voicechat_loadtest.client import BadTargetError
from voicechat_loadtest.report import format_table, write_plot
from voicechat_loadtest.runner import LoadConfig, run_load

if TYPE_CHECKING:
    from voicechat_loadtest.restart import RestartConfig

RESULTS_JSON = "results.json"
RESULTS_PNG = "results.png"
EXIT_FAILURES = 1
EXIT_BAD_TARGET = 2


def _think_time(value: str) -> tuple[float, float]:
    try:
        parts = [float(p) for p in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SECONDS or MIN,MAX, got {value!r}") from None
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"expected SECONDS or MIN,MAX, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="voicechat-loadtest", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="simulate voice users against a session service")
    run.add_argument("url", help="ws://HOST:PORT/ws, or the service's http://HOST:PORT")
    run.add_argument("-u", "--users", type=int, default=1, help="simulated users (default 1)")
    run.add_argument("-r", "--ramp-up", type=float, default=0.0, help="seconds over which users start")
    run.add_argument("-c", "--concurrency", type=int, help="max open connections at once (default: users)")
    run.add_argument("-t", "--turns", type=int, default=1, help="spoken turns per connection (default 1)")
    run.add_argument("-d", "--duration", type=float, help="keep users reconnecting for this many seconds")
    run.add_argument("--think-time", type=_think_time, default=(1.0, 2.0), help="SECONDS or MIN,MAX (1,2)")
    run.add_argument("--voice", help="TTS voice to request")
    run.add_argument("--speed", type=float, help="TTS speed to request (0.5-2)")
    run.add_argument("--speech-dir", type=Path, help="directory with manifest.json + WAVs (default: shipped)")
    run.add_argument("--frame-ms", type=int, default=20, help="audio per WebSocket frame (default 20 ms)")
    run.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to open the WebSocket")
    run.add_argument("--ready-timeout", type=float, default=180.0, help="seconds from open to `ready`")
    run.add_argument("--turn-timeout", type=float, default=60.0, help="seconds after speech for the reply")
    run.add_argument("--match-threshold", type=float, default=0.8, help="word overlap counted as a match")
    run.add_argument("--no-preflight", action="store_true", help="skip the GET /readyz check")
    run.add_argument(
        "--auth-key-file",
        type=Path,
        help="HS256 access-token key of the target (its Secret's key): each user presents its own token",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("-o", "--out", type=Path, default=Path("loadtest-results"), help="results directory")
    run.add_argument("--seed", type=int, default=0, help="random seed (think times, utterance choice)")

    restart = sub.add_parser(
        "restart",
        help="conversations while session processes are restarted under them (resume tokens)",
        description="Start a local stack with several session processes sharing a resume key, run spoken "
        "conversations, restart one process every --restart-every seconds; report sessions resumed and "
        "turns lost.",
    )
    restart.add_argument("-u", "--users", type=int, default=4, help="conversations at once (default 4)")
    restart.add_argument("-t", "--turns", type=int, default=6, help="spoken turns per conversation (6)")
    restart.add_argument("--sessions", type=int, default=2, help="session processes (default 2)")
    restart.add_argument(
        "--restart-every", type=float, default=20.0, help="seconds between restarts of a session process (20)"
    )
    restart.add_argument(
        "--kill", action="store_true", help="SIGKILL (a lost pod) instead of SIGTERM (drain)"
    )
    restart.add_argument(
        "--drain-grace", type=float, default=20.0, help="session drain grace in seconds (20)"
    )
    restart.add_argument(
        "--think-time", type=_think_time, default=(1.0, 2.0), help="SECONDS or MIN,MAX (1,2)"
    )
    restart.add_argument(
        "--turn-timeout", type=float, default=60.0, help="seconds after speech for the reply"
    )
    restart.add_argument("--llm-url", help="use this OpenAI-compatible /v1 URL instead of starting the LLM")
    restart.add_argument(
        "--session-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of the session processes (repeatable)",
    )
    restart.add_argument(
        "--speech-dir", type=Path, help="directory with manifest.json + WAVs (default: shipped)"
    )
    restart.add_argument("-o", "--out", type=Path, default=Path("restart-results"), help="results directory")
    restart.add_argument("--seed", type=int, default=0, help="random seed")

    bench = sub.add_parser("bench", help="start the local stack and measure pod vs connection sharing")
    bench.add_argument("-o", "--out", type=Path, default=Path("bench"), help="results directory (bench/)")
    bench.add_argument("--budget-min", type=float, default=10.0, help="soft time budget in minutes (10)")
    bench.add_argument("--quick", action="store_true", help="fewer samples (for a smoke run)")
    bench.add_argument(
        "--llm-nice",
        type=int,
        default=LOCAL_LLM_NICE,
        choices=range(20),
        metavar="0-19",
        help=f"nice value of the LLM engine's threads ({LOCAL_LLM_NICE}; see voicechat-llm --nice)",
    )
    return parser


def _config(args: argparse.Namespace) -> LoadConfig:
    return LoadConfig(
        url=args.url,
        users=args.users,
        ramp_up_s=args.ramp_up,
        concurrency=args.concurrency,
        turns=args.turns,
        duration_s=args.duration,
        think_time_s=args.think_time,
        frame_ms=args.frame_ms,
        connect_timeout_s=args.connect_timeout,
        ready_timeout_s=args.ready_timeout,
        turn_timeout_s=args.turn_timeout,
        match_threshold=args.match_threshold,
        voice=args.voice,
        speed=args.speed,
        speech_dir=args.speech_dir,
        preflight=not args.no_preflight,
        auth_key_file=args.auth_key_file,
        seed=args.seed,
    )


def _env_pair(value: str) -> tuple[str, str]:
    name, sep, setting = value.partition("=")
    if not sep or not name:
        raise ValueError(f"--session-env expects NAME=VALUE, got {value!r}")
    return name, setting


def _restart_config(args: argparse.Namespace) -> RestartConfig:
    from voicechat_loadtest.restart import RestartConfig

    return RestartConfig(
        users=args.users,
        turns=args.turns,
        sessions=args.sessions,
        restart_every_s=args.restart_every,
        kill=args.kill,
        drain_grace_s=args.drain_grace,
        think_time_s=args.think_time,
        turn_timeout_s=args.turn_timeout,
        llm_url=args.llm_url,
        session_env=dict(_env_pair(v) for v in args.session_env),
        speech_dir=args.speech_dir,
        seed=args.seed,
    )


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    report = asyncio.run(run_load(config, progress=not args.no_progress))
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / RESULTS_JSON
    json_path.write_text(report.model_dump_json(indent=2) + "\n")
    png_path = write_plot(report, args.out / RESULTS_PNG)
    sys.stdout.write(format_table(report) + "\n")
    sys.stdout.write(f"results: {json_path}  plot: {png_path}\n")
    failed = report.turns_total - report.turns_ok + sum(c.error is not None for c in report.connects)
    return EXIT_FAILURES if failed else 0


def _first_error(err: pydantic.ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging("warning", "console")
    try:
        if args.command == "restart":
            from voicechat_loadtest.restart import run_restart_cli

            return run_restart_cli(_restart_config(args), args.out)
        if args.command == "bench":
            from voicechat_loadtest.bench import run_bench

            return run_bench(
                args.out, budget_s=args.budget_min * 60, quick=args.quick, llm_nice=args.llm_nice
            )
        return _run(args)
    except BadTargetError as err:
        sys.stderr.write(f"voicechat-loadtest: error: {err}\n")
    except pydantic.ValidationError as err:
        sys.stderr.write(f"voicechat-loadtest: error: {_first_error(err)}\n")
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f"voicechat-loadtest: error: {err}\n")
    except KeyboardInterrupt:
        sys.stderr.write("voicechat-loadtest: interrupted\n")
        return 130
    return EXIT_BAD_TARGET


if __name__ == "__main__":
    raise SystemExit(main())
