"""The README's five-minute tour, run as written, twice, against ``make run``.

The steps come from README.md itself, so the two cannot drift: fenced blocks tagged ``sh tour`` run
in order under ``bash -e`` (the first failing command fails the test), the ``sh tour-tail`` block is
the alert tail of the reader's second terminal and runs beside them, ``python tour`` blocks are fed
to ``.venv/bin/python -``, and a ``js tour FILE`` or ``go tour FILE`` block must be exactly the
program FILE of the repository, which runs with ``node`` or is built with ``go build`` (so this test
needs ``make node-deps proto-go``, as ``make test`` does before it). The node is the README's own
``make run``, with its data in a temporary directory and its three listeners on port 0; the
addresses the README spells out are replaced by the ones the ready line announces. The second run
restarts the node on the same data directory and runs the same blocks: nothing may fail, be counted
twice, or be shown again by the resumed tail.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
README_ADDRS = {"grpc_addr": "127.0.0.1:50051", "node_addr": "127.0.0.1:7001", "http_addr": "127.0.0.1:9464"}
STEP_TIMEOUT = 240.0
_FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    """A fenced block of the tour: ``tag`` is its language and tour word, ``path`` its program file."""

    tag: str
    body: str
    path: str = ""


def tour_blocks(markdown: str) -> list[Block]:
    """Every fenced block whose info string is ``LANG tour[-tail] [FILE]``, in README order."""
    blocks = []
    for m in _FENCE.finditer(markdown):
        words = m.group(1).split()
        if len(words) in (2, 3) and words[1] in ("tour", "tour-tail"):
            blocks.append(Block(f"{words[0]} {words[1]}", m.group(2), *words[2:]))
    return blocks


def test_tour_blocks_are_found_in_order_and_programs_match_their_files() -> None:
    text = (
        "```sh\nmake run\n```\n```sh tour-tail\ntail\n```\nprose\n"
        "```sh tour\na\nb\n```\n```python tour\np\n```\n```go tour x/main.go\ng\n```\n"
    )
    assert tour_blocks(text) == [
        Block("sh tour-tail", "tail\n"),
        Block("sh tour", "a\nb\n"),
        Block("python tour", "p\n"),
        Block("go tour", "g\n", "x/main.go"),
    ]
    readme = README.read_text(encoding="utf-8")
    blocks = tour_blocks(readme)
    tags = [b.tag for b in blocks]
    assert tags == ["sh tour-tail", "sh tour", "sh tour", "python tour", "js tour", "go tour"]
    assert [b.path for b in blocks if b.path] == [
        "examples/node/quickstart.js",
        "examples/go/cmd/quickstart/main.go",
    ]
    for block in blocks:
        if block.path:
            assert (REPO / block.path).read_text(encoding="utf-8") == block.body, block.path
    go_program = (REPO / "examples/go/cmd/quickstart/main.go").read_text(encoding="utf-8")
    assert f"```go\n{go_program}```\n" in (REPO / "docs/go.md").read_text(encoding="utf-8")
    assert "```sh\nmake run\n```" in readme


@dataclass
class Node:
    """``make run`` (make and the server in their own process group) and its ready line."""

    proc: subprocess.Popen[str]
    ready: dict[str, str]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNIMETER_")}
    return {**env, **extra}


@contextmanager
def make_run(data_dir: Path, log: Path) -> Iterator[Node]:
    """The README's ``make run`` on port 0 everywhere; stopped as a reader does, with Ctrl-C."""
    env = _clean_env(
        UNIMETER_DATA_DIR=str(data_dir),
        UNIMETER_GRPC_ADDR="127.0.0.1:0",
        UNIMETER_NODE_ADDR="127.0.0.1:0",
        UNIMETER_HTTP_ADDR="127.0.0.1:0",
        UNIMETER_LOG_LEVEL="WARNING",
    )
    with log.open("a") as err:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
    try:
        assert proc.stdout is not None
        ready: dict[str, str] | None = None
        for line in proc.stdout:  # make echoes its recipe first; the server's ready line follows
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                ready = json.loads(line)
                break
        assert ready is not None, f"make run exited with {proc.wait(timeout=30)}:\n{log.read_text()}"
        yield Node(proc, ready)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        if proc.stdout is not None:
            proc.stdout.close()


@dataclass
class Done:
    code: int
    out: str
    err: str


def _run(argv: list[str], cwd: Path, env: dict[str, str], stdin: str = "") -> Done:
    done = subprocess.run(
        argv, cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=STEP_TIMEOUT
    )
    return Done(done.returncode, done.stdout, done.stderr)


def _alert_lines(out: str) -> list[dict[str, str]]:
    return [
        dict(f.split("=", 1) for f in line.split())
        for line in out.splitlines()
        if line.startswith("partition=")
    ]


def _value_column(out: str) -> list[int]:
    """The VALUE of the first row under every ``VALUE`` table header (one per ``query``)."""
    lines = out.splitlines()
    return [int(lines[i + 1].split()[0]) for i, line in enumerate(lines) if line.startswith("VALUE ")]


def _wait_for(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


def _program(block: Block, logs: Path) -> list[str]:
    """The command that runs a ``js``/``go`` tour block's program file (a Go program is built once)."""
    if block.tag == "js tour":
        modules = REPO / "examples/node/node_modules/.installed"
        assert modules.exists(), "the Node.js step needs its packages: run `make node-deps`"
        return ["node", str(REPO / block.path)]
    assert block.tag == "go tour", block
    binary = logs / "go-tour-program"
    if not binary.exists():
        assert (REPO / "examples/go/gen/.generated").exists(), (
            "the Go step needs its stubs: run `make proto-go`"
        )
        package = "./" + str(PurePosixPath(block.path).parent.relative_to("examples/go"))
        built = _run(["go", "build", "-o", str(binary), package], REPO / "examples/go", _clean_env())
        assert built.code == 0, built.err
    return [str(binary)]


def _walk_the_tour(checkout: Path, data_dir: Path, logs: Path, first: bool) -> None:
    """One reader's walk: node, tail, every step; checks each step's output. Logs go to ``logs``."""
    blocks = tour_blocks(README.read_text(encoding="utf-8"))
    offsets = checkout / "offsets.json"
    run = "first" if first else "second"
    with make_run(data_dir, logs / f"make-run-{run}.log") as node:
        addrs = node.ready
        assert all(re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", addrs[k]) for k in README_ADDRS), addrs
        env = _clean_env(UNIMETER_ADDR=addrs["grpc_addr"])

        def literal(body: str) -> str:
            for key, written in README_ADDRS.items():
                body = body.replace(written, addrs[key])
            return body

        tail_out, tail_err = logs / f"tail-{run}.out", logs / f"tail-{run}.err"
        (tail_body,) = [b.body for b in blocks if b.tag == "sh tour-tail"]
        with tail_out.open("w") as out, tail_err.open("w") as err:
            tail = subprocess.Popen(
                ["bash", "-c", literal(tail_body)],
                cwd=checkout,
                env=env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        try:
            outputs = []
            for block in blocks:
                if block.tag == "sh tour":
                    done = _run(["bash", "-e", "-o", "pipefail", "-c", literal(block.body)], checkout, env)
                elif block.tag == "python tour":
                    done = _run([str(checkout / ".venv/bin/python"), "-"], checkout, env, literal(block.body))
                elif block.path:  # reads UNIMETER_ADDR, as the README's text says
                    done = _run(_program(block, logs), checkout, env)
                else:
                    continue
                assert done.code == 0, f"{block.tag} block failed ({done.code}):\n{done.out}\n{done.err}"
                assert "Traceback" not in done.err, done.err
                outputs.append(done.out)
            steps_done_ns = time.time_ns()
            if first:
                _wait_for(lambda: len(_alert_lines(tail_out.read_text())) >= 4, "the tour's four alerts")
            else:  # the resumed tail has saved offsets since the last step: it had its chance to repeat
                _wait_for(lambda: offsets.stat().st_mtime_ns > steps_done_ns, "a heartbeat of the tail")
        finally:
            os.killpg(tail.pid, signal.SIGINT)
            tail.wait(timeout=30)
        assert tail.returncode == 130, tail_err.read_text()
        assert "Traceback" not in tail_err.read_text()
    cli, curl, python, node_js, go = outputs
    alerts = _alert_lines(tail_out.read_text())
    if first:
        assert "stored 1, duplicates 0, offset 1" in cli.splitlines()
        assert "stored 2, duplicates 0" in cli.splitlines()
        assert "stored 8, duplicates 0, rejected 0" in cli.splitlines()
        assert _value_column(cli) == [3, 6]  # account 42 now; account 43 in November
        assert '"nStored": 2' in curl and '"nDuplicates": 1' in curl and '"count": "5"' in curl
        assert "account 42: 6 calls this period" in python.splitlines()
        assert node_js.splitlines() == ["stored 1; api_calls this period: 7"]
        assert go.splitlines()[1:] == ["account 42 has made 8 calls this period"]
        seen = sorted((a["account"], a["threshold"], a["value_at_cross"]) for a in alerts)
        assert seen == [
            ("42", "free_tier_exceeded", "3"),
            ("42", "hard_cap", "5"),
            ("43", "free_tier_exceeded", "3"),
            ("43", "hard_cap", "5"),
        ]
        assert {a["period_start"] for a in alerts if a["account"] == "43"} == {"2026-11-03T00:00:00Z"}
    else:
        assert "stored 0, duplicates 1, offset 1" in cli.splitlines()
        assert "stored 0, duplicates 2" in cli.splitlines()
        assert "stored 0, duplicates 8, rejected 0" in cli.splitlines()
        assert _value_column(cli) == [8, 6]  # the first run's 3 + 2 (curl) + 1 each (Python, Node, Go)
        assert '"nStored"' not in curl and '"nDuplicates": 3' in curl and '"count": "8"' in curl
        assert "account 42: 9 calls this period" in python.splitlines()
        assert node_js.splitlines() == ["stored 0; api_calls this period: 9"]  # its event id is fixed
        assert go.splitlines()[1:] == ["account 42 has made 10 calls this period"]
        assert alerts == []
    assert "threshold             free_tier_exceeded=3" in cli.splitlines()
    assert re.search(r"^stored 1, offsets \[\d+\]$", python, re.MULTILINE), python
    assert re.fullmatch(r"stored 1 event\(s\), offset \d+", go.splitlines()[0]), go


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_readme_tour_runs_as_written_twice(tmp_path: Path) -> None:
    venv = REPO / ".venv"
    assert (venv / "bin" / "unimeter").exists(), "the tour needs the project's .venv: run `make venv proto`"
    checkout = tmp_path / "checkout"  # the reader's repository root: what the tour reads, and writes
    checkout.mkdir()
    (checkout / ".venv").symlink_to(venv)
    (checkout / "examples").symlink_to(REPO / "examples")
    data_dir = tmp_path / "data"
    _walk_the_tour(checkout, data_dir, tmp_path, first=True)
    _walk_the_tour(checkout, data_dir, tmp_path, first=False)
    # What the tour wrote in the reader's root (besides ./data, where make run keeps the node's data)
    # is ignored by git.
    written = sorted(p.name for p in checkout.iterdir() if not p.is_symlink())
    assert written == ["offsets.json"]
    ignored = subprocess.run(
        ["git", "check-ignore", *written, "data/"], cwd=REPO, capture_output=True, text=True
    )
    assert ignored.stdout.split() == [*written, "data/"], ignored


def test_the_ready_line_names_each_listener_or_off(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            str(REPO / ".venv/bin/unimeter"),
            "serve",
            "--data-dir",
            str(tmp_path),
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        env=_clean_env(UNIMETER_LOG_LEVEL="WARNING", UNIMETER_PARTITIONS="2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    port = ready["grpc_addr"].rpartition(":")[2]
    assert int(port) > 0
    assert ready == {
        "event": "ready",
        "grpc_addr": f"127.0.0.1:{port}",
        "node_addr": "off",
        "http_addr": "off",
        "data_dir": str(tmp_path),
    }
