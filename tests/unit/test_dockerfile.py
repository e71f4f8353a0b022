"""The Dockerfile's invariants, checked without a Docker engine so the file cannot silently rot.

Parses the Dockerfile into stages and instructions and checks what the image promises: stubs
generated before the wheel is built, the native engine compiled in the builder only, a non-root
user, the data volume, ports, environment, the health check (which is also run, against a
stand-in /readyz) and the entry point.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.config import env_names

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def index(self, keyword: str, needle: str) -> int:
        found = [i for i, (kw, args) in enumerate(self.instructions) if kw == keyword and needle in args]
        assert found, f"no {keyword} containing {needle!r} in stage {self.name or self.image}"
        return found[0]


def parse(text: str) -> list[Stage]:
    """Stages of a Dockerfile: comments dropped, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        args = " ".join(args.split())
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            stages.append(Stage(parts[0], name))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


def env_of(stage: Stage) -> dict[str, str]:
    values: dict[str, str] = {}
    for args in stage.all("ENV"):
        for pair in shlex.split(args):
            key, _, value = pair.partition("=")
            values[key] = value
    return values


def test_two_stages_on_python_3_11_slim(stages: list[Stage]) -> None:
    assert [(s.image, s.name) for s in stages] == [("python:3.11-slim", "builder"), ("python:3.11-slim", "")]


def test_builder_generates_the_stubs_like_make_proto_before_building_the_wheel(stages: list[Stage]) -> None:
    builder = stages[0]
    protoc = builder.index("RUN", "-m grpc_tools.protoc")
    install = builder.index("RUN", "pip install .")
    assert protoc < install, "the stubs must exist before hatch builds the wheel"
    command = builder.instructions[protoc][1]
    # The same output layout as the Makefile's protoc call, so `import unimeter.v1` works the same way.
    makefile = (REPO / "Makefile").read_text()
    for flag in ("-Iproto", "--python_out=proto", "--grpc_python_out=proto"):
        assert flag in command
        assert flag in makefile
    assert "proto/unimeter/v1/*.proto" in command
    # Only grpcio-tools of the dev extras, at pyproject's pin.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    pin = next(
        d for d in pyproject["project"]["optional-dependencies"]["dev"] if d.startswith("grpcio-tools==")
    )
    assert pin in builder.instructions[builder.index("RUN", "/opt/tools/bin/pip install")][1]
    assert not any(".[dev]" in run for run in builder.all("RUN"))


def test_builder_copies_every_packaged_directory_and_not_gitignore(stages: list[Stage]) -> None:
    copies = [args for args in stages[0].all("COPY") if not args.startswith("--from=")]
    sources = [src for args in copies for src in args.split()[:-1]]
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        top = package.split("/")[0]
        assert any(src.rstrip("/") == top for src in sources), f"{top} is packaged but not copied"
    # hatch leaves files listed in .gitignore out of the wheel, and .gitignore lists the stubs.
    assert ".gitignore" not in sources and "." not in sources
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ".gitignore" in ignored
    assert "proto/unimeter/v1/*_pb2*.py" in ignored  # stubs come from the build, never the work tree
    assert "native/target" in ignored  # cargo's build cache never enters the context


def test_builder_compiles_the_native_engine_and_only_the_builder_has_rust(stages: list[Stage]) -> None:
    builder, runtime = stages
    toolchain = [args for args in builder.all("COPY") if args.startswith("--from=rust:")]
    assert {args.split()[0] for args in toolchain} == {"--from=rust:1.95-slim"}, "one pinned Rust image"
    assert {args.split()[1] for args in toolchain} == {"/usr/local/cargo", "/usr/local/rustup"}
    assert env_of(builder)["PATH"].startswith("/usr/local/cargo/bin:")
    assert "native/ native/" in builder.all("COPY")
    install = builder.instructions[builder.index("RUN", "pip install .")][1]
    assert "pip install . ./native" in install
    assert "unimeter_native" in install, "the build fails unless the compiled module imports"
    # maturin comes from native/pyproject.toml's build requirement, at the dev extras' pin.
    native = tomllib.loads((REPO / "native" / "pyproject.toml").read_text())
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert native["build-system"]["requires"] == [d for d in dev if d.startswith("maturin==")]
    assert native["tool"]["maturin"]["locked"] is True
    # The runtime carries the virtualenv (with the compiled module) and no toolchain.
    assert not any("rust" in args or "cargo" in args for _, args in runtime.instructions)


def test_runtime_runs_as_a_non_root_user_with_a_data_volume(stages: list[Stage]) -> None:
    runtime = stages[1]
    users = runtime.all("USER")
    assert users and users[-1] == "unimeter"
    useradd = runtime.index("RUN", "useradd")
    assert "unimeter" in runtime.instructions[useradd][1].split()
    assert "chown unimeter:unimeter /var/lib/unimeter" in runtime.instructions[useradd][1]
    # Changes to a path after VOLUME are discarded: the ownership must be set before it.
    assert useradd < runtime.index("VOLUME", "/var/lib/unimeter")
    assert runtime.all("VOLUME") == ["/var/lib/unimeter"]
    assert runtime.all("COPY") == ["--from=builder /opt/unimeter /opt/unimeter"]


def test_runtime_ports_environment_and_entry_point(stages: list[Stage]) -> None:
    runtime = stages[1]
    assert set(" ".join(runtime.all("EXPOSE")).split()) == {"50051", "7001", "9090"}
    env = env_of(runtime)
    assert {k: env[k] for k in ("UNIMETER_DATA_DIR", "UNIMETER_GRPC_ADDR", "UNIMETER_HTTP_ADDR")} == {
        "UNIMETER_DATA_DIR": "/var/lib/unimeter",
        "UNIMETER_GRPC_ADDR": "0.0.0.0:50051",
        "UNIMETER_HTTP_ADDR": "0.0.0.0:9090",
    }
    assert {k for k in env if k.startswith("UNIMETER_")} <= set(env_names()), "serve would ignore it"
    assert env["PATH"].startswith("/opt/unimeter/bin:")
    assert json.loads(runtime.all("ENTRYPOINT")[-1]) == ["unimeter"]
    assert json.loads(runtime.all("CMD")[-1]) == ["serve"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["unimeter"] == "service.cli:main"


def healthcheck_command(stages: list[Stage]) -> list[str]:
    (check,) = stages[1].all("HEALTHCHECK")
    options, _, command = check.partition("CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--start-period=\d+s", options)
    argv = json.loads(command)
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_healthcheck_needs_only_python_and_asks_readyz_on_the_http_port(stages: list[Stage]) -> None:
    argv = healthcheck_command(stages)
    assert argv[:2] == ["python", "-c"]
    http_port = env_of(stages[1])["UNIMETER_HTTP_ADDR"].rsplit(":", 1)[1]
    assert f"http://127.0.0.1:{http_port}/readyz" in argv[2]


class _Readyz(BaseHTTPRequestHandler):
    """/readyz as the server answers it: 200 when ready, 503 while recovering."""

    ready = True

    def do_GET(self) -> None:
        status = 200 if self.path == "/readyz" and self.ready else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(("ready", "code"), [(True, 0), (False, 1)])
def test_healthcheck_command_passes_only_when_ready(stages: list[Stage], ready: bool, code: int) -> None:
    handler = type("Handler", (_Readyz,), {"ready": ready})
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            port = server.server_address[1]
            script = healthcheck_command(stages)[2].replace("127.0.0.1:9090", f"127.0.0.1:{port}")
            result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
            assert result.returncode == code, result.stderr
        finally:
            server.shutdown()
            thread.join(timeout=10)
