"""The ``gpumeter`` command line."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from gpumeter import __version__
from gpumeter.config import Settings, load_settings, parse_listen
from gpumeter.engines.records import ENGINE_KINDS
from gpumeter.errors import ConfigError, ListenError, ScrapeError

if TYPE_CHECKING:
    from gpumeter.engines.records import EngineTarget

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

    probe = commands.add_parser(
        "probe", help="read one inference server once and print what it reports"
    )
    probe.add_argument("url", help="http://HOST:PORT, or the full metrics URL")
    probe.add_argument(
        "--kind", choices=ENGINE_KINDS, help="the server's dialect (else detected)"
    )
    probe.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="per request"
    )
    probe.set_defaults(command="probe", handler=_probe)

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
    if level != "debug":
        # apscheduler logs every run of every job at info: once a second, here.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)


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

    return _serve(Daemon(settings).run, duration=None)


def _demo(args: argparse.Namespace) -> int:
    settings = _load(None, explicit=False)
    if settings is None:
        return EXIT_USAGE
    settings = settings.model_copy(update={"listen": args.listen})
    _configure_logging("warning")
    from gpumeter.demo import Demo

    return _serve(Demo(settings).run, duration=args.duration)


def _serve(
    run: Callable[[asyncio.Event], Awaitable[None]], *, duration: float | None
) -> int:
    """Runs until a signal or the duration ends; 1 if it cannot listen."""

    async def body() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, signum, stop)
        if duration is not None:
            loop.call_later(duration, stop.set)
        await run(stop)

    try:
        asyncio.run(body())
    except ListenError as exc:
        print(f"gpumeter: {exc}", file=sys.stderr)
        return 1
    return 0


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    logger.info("received %s, stopping", signal.Signals(signum).name)
    stop.set()


def _probe(args: argparse.Namespace) -> int:
    from gpumeter.engines.records import EngineTarget

    try:
        target = EngineTarget.from_url(args.url, kind=args.kind)
    except ValueError as exc:
        print(f"gpumeter: probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        report = asyncio.run(_probe_once(target, args.timeout))
    except ScrapeError as exc:
        if exc.reason == "unrecognized":
            print(json.dumps({"engine": "unknown", "models": []}))
        print(f"gpumeter: probe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


async def _probe_once(target: EngineTarget, timeout_s: float) -> dict[str, Any]:
    from gpumeter.engines.scrape import Scraper
    from gpumeter.engines.source import probe

    async with aiohttp.ClientSession() as session:
        scraper = Scraper(
            session, connect_timeout_s=min(2.0, timeout_s), total_timeout_s=timeout_s
        )
        found, path, families = await probe(
            scraper, target.base_url, metrics_path=target.metrics_path, kind=target.kind
        )
        identity = None
        if found.identity_path is not None:
            identity = await scraper.json(target.base_url + found.identity_path)
        reading = found.read(families, identity)
    return {
        "engine": reading.kind,
        "url": target.base_url + path,
        "started_at": reading.started_at,
        "models": [
            {k: _plain(v) for k, v in dataclasses.asdict(m).items()}
            for m in reading.models
        ],
    }


def _plain(value: Any) -> Any:
    """Counts as integers when they are whole, as the servers count them."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file, explicit=True)
    if settings is None:
        return EXIT_USAGE
    print(_to_toml(settings.model_dump(mode="json")), end="")
    return 0


def _to_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Writes settings as TOML: scalars, tables and arrays of tables.

    Unset optional values (None) are left out, as TOML has no null.
    """
    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in data.items()
        if value is not None and not _is_table(value) and not _is_table_array(value)
    ]
    for key, value in data.items():
        name = f"{prefix}{key}"
        if _is_table(value):
            lines.append(f"\n[{name}]\n{_to_toml(value, name + '.')}".rstrip("\n"))
        elif _is_table_array(value):
            for item in value:
                lines.append(f"\n[[{name}]]\n{_to_toml(item, name + '.')}".rstrip("\n"))
    return "\n".join(lines) + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(item, dict) for item in value)
    )


def _toml_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
