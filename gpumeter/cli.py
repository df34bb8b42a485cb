"""The ``gpumeter`` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpumeter import __version__
from gpumeter.config import Settings, load_settings, parse_listen
from gpumeter.errors import ConfigError, ListenError

if TYPE_CHECKING:
    from gpumeter.daemon import Daemon
    from gpumeter.demo import Demo

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_USAGE = 2


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the process exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            parser.error(f"--listen: {exc}")
    status: int = args.handler(args)
    return status


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpumeter",
        description="Meters what each LLM token costs on this node's NVIDIA GPUs.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    parser.set_defaults(command=None, listen=None)
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, help="TOML configuration file")
    run.add_argument("--listen", metavar="HOST:PORT", help="metrics address")
    run.set_defaults(command="run", handler=_run)

    demo = commands.add_parser(
        "demo", help="run the daemon on a simulated node and show a live table"
    )
    demo.add_argument(
        "--duration", type=float, metavar="SECONDS", help="stop after this long"
    )
    demo.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default="127.0.0.1:9402",
        help="metrics address (default %(default)s)",
    )
    demo.set_defaults(command="demo", handler=_demo)

    check = commands.add_parser(
        "check-config", help="validate a configuration file and print it"
    )
    check.add_argument("file", type=Path, help="TOML configuration file")
    check.set_defaults(command="check-config", handler=_check_config)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: Path | None, explicit: bool) -> Settings | None:
    try:
        return load_settings(path, explicit=explicit)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"gpumeter: config: {problem}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    settings = _load(args.config, explicit=args.config is not None)
    if settings is None:
        return EXIT_USAGE
    if args.listen is not None:
        settings = settings.model_copy(update={"listen": args.listen})
    _configure_logging(settings.log_level)
    from gpumeter.daemon import Daemon

    return _serve(Daemon(settings), duration=None)


def _demo(args: argparse.Namespace) -> int:
    settings = _load(None, explicit=False)
    if settings is None:
        return EXIT_USAGE
    settings = settings.model_copy(update={"listen": args.listen})
    _configure_logging("warning")
    from gpumeter.demo import Demo

    demo = Demo(settings)
    return _serve(demo.daemon, duration=args.duration, extra=demo)


def _serve(daemon: Daemon, *, duration: float | None, extra: Demo | None = None) -> int:
    """Runs a daemon until a signal or the duration ends; 1 if it cannot start."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, signum, stop)
        if duration is not None:
            loop.call_later(duration, stop.set)
        tasks = [asyncio.create_task(daemon.run(stop))]
        if extra is not None:
            tasks.append(asyncio.create_task(extra.show(stop)))
        await asyncio.gather(*tasks)

    try:
        asyncio.run(body())
    except ListenError as exc:
        print(f"gpumeter: {exc}", file=sys.stderr)
        return 1
    return 0


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    logger.info("received %s, stopping", signal.Signals(signum).name)
    stop.set()


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file, explicit=True)
    if settings is None:
        return EXIT_USAGE
    print(_to_toml(settings.model_dump(mode="json")), end="")
    return 0


def _to_toml(data: dict[str, Any]) -> str:
    """Writes settings (scalars and one level of tables) as TOML."""
    scalars = [
        f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)
    ]
    lines = [*scalars]
    for key, value in data.items():
        if isinstance(value, dict):
            lines.append(f"\n[{key}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in value.items())
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
