"""``gpumeter probe`` over HTTP, against every recorded exposition."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gpumeter.cli import main
from gpumeter.engines.dialects import dialect
from gpumeter.engines.records import EngineReading
from tests.test_dialects import CASES, text

Routes = dict[str, tuple[int, str, bytes]]


class _Handler(BaseHTTPRequestHandler):
    routes: Routes

    def do_GET(self) -> None:
        status, content_type, body = self.routes.get(
            self.path, (404, "text/plain", b"404 page not found\n")
        )
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(routes: Routes) -> str:
        handler = type("Handler", (_Handler,), {"routes": routes})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _expected(reading: EngineReading) -> list[dict[str, Any]]:
    return [
        {k: _plain(v) for k, v in dataclasses.asdict(m).items()} for m in reading.models
    ]


@pytest.mark.parametrize(
    ("name", "kind", "identity", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_probe_names_the_dialect_models_and_totals(
    serve: Any,
    capsys: pytest.CaptureFixture[str],
    name: str,
    kind: str,
    identity: str | None,
    expected: EngineReading,
) -> None:
    found = dialect(kind)
    routes: Routes = {
        found.metrics_paths[0]: (200, "text/plain; version=0.0.4", text(name).encode())
    }
    if identity is not None and found.identity_path is not None:
        routes[found.identity_path] = (200, "application/json", text(identity).encode())
    base = serve(routes)
    assert main(["probe", base]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == kind
    assert report["url"] == base + found.metrics_paths[0]
    models = report["models"]
    assert [m["model"] for m in models] == [m.model for m in expected.models]
    for got, want in zip(models, _expected(expected), strict=True):
        assert got == {
            k: pytest.approx(v) if isinstance(v, float) else v for k, v in want.items()
        }


def test_probe_takes_the_full_metrics_url(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    exposition = text("vllm-0.12-v1-dp2-constructed.txt").encode()
    base = serve({"/custom/path": (200, "text/plain", exposition)})
    assert main(["probe", f"{base}/custom/path"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "vllm"


def test_probe_fails_in_one_line_when_nothing_listens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.running import free_port

    assert main(["probe", f"http://127.0.0.1:{free_port()}"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("gpumeter: probe: http://127.0.0.1:")
    assert "refused" in line


def test_probe_of_something_else_says_unknown(
    serve: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    other = b"# TYPE node_load1 gauge\nnode_load1 0.5\n"
    base = serve({"/metrics": (200, "text/plain", other)})
    assert main(["probe", base]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"engine": "unknown", "models": []}
    assert "no inference server's metrics" in captured.err


def test_probe_rejects_a_url_without_scheme(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "localhost:8000"]) == 2
    assert "expected http://HOST:PORT" in capsys.readouterr().err
