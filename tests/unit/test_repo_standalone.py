"""The repository stands alone: no tracked file refers to a path outside the repository root.

A test, doc or script that reads a sibling directory (``../<dir>/...``), a developer's absolute path
(``/work/...``, ``/home/...``) or cites a contract document that is not in the repository works on
one machine and breaks every fresh clone. This scans every file ``git ls-files`` lists and fails
naming each such reference with its file and line. It is not a link checker: a relative path that
stays inside the repository is fine whether or not the file exists.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[2]
# This file holds the forbidden patterns as test data, so it is the one file not scanned.
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

# The product contract the project started from lives outside the repository; its rules are in
# docs/semantics.md, so citing it ("SPEC §3", "the SPEC", SPEC.md) points a reader nowhere.
# Only the upper-case word or the file name: "spec" is an ordinary word and identifier.
_CITATION = re.compile(r"\bSPEC\b|\bspec\.md\b")
# Home and work directories of a machine, not of the repository (a URL's path is not one: the
# character before its slash is part of the host or path).
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])/(?:work|home|Users|root|mnt)/[\w.-]+")
# A relative path that starts by going up, resolved from the file's own directory (as a Markdown
# link or an import path is); a path meant relative to the working directory is read the same way.
_UP = re.compile(r"(?<![\w./-])((?:\.\./)+[\w.-]*)")
# Path(__file__) walked up with .parent / .parents[n]: resolved from the file's own directory.
_FILE_CHAIN = re.compile(r"Path\(__file__\)(?:\.resolve\(\))?((?:\.parent\b|\.parents\[\d+\])+)")
_CHAIN_STEP = re.compile(r"\.parent\b|\.parents\[(\d+)\]")


def _levels_up(chain: str) -> int:
    """How many directories above the file's own one a ``.parent``/``.parents[n]`` chain ends."""
    steps = 0
    for step in _CHAIN_STEP.finditer(chain):
        steps += 1 if step.group(1) is None else int(step.group(1)) + 1
    return steps - 1  # the first step only goes from the file to its directory


def outside_references(path: str, text: str) -> list[str]:
    """Every reference in ``text`` (the content of tracked file ``path``) to something outside the
    repository, as ``"path:line: what"``."""
    directory = PurePosixPath(path).parent
    depth = len(directory.parts)
    found: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{path}:{number}"
        found += [f"{where}: cites {m.group()!r}, not in the repository" for m in _CITATION.finditer(line)]
        found += [f"{where}: absolute path {m.group()!r}" for m in _ABSOLUTE.finditer(line)]
        for m in _UP.finditer(line):
            target = posixpath.normpath(posixpath.join(directory.as_posix(), m.group(1)))
            if target == ".." or target.startswith("../"):
                found.append(f"{where}: {m.group(1)!r} leaves the repository")
        for m in _FILE_CHAIN.finditer(line):
            if _levels_up(m.group(1)) > depth:
                found.append(f"{where}: {m.group()!r} leaves the repository")
    return found


def _tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_no_tracked_file_refers_outside_the_repository() -> None:
    files = _tracked_files()
    assert "README.md" in files and "tests/vectors/semantics.json" in files
    found: list[str] = []
    for name in files:
        if name == SELF:
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary: no paths to read
        except FileNotFoundError:
            continue  # deleted in the work tree, not yet in the index
        found += outside_references(name, text)
    assert found == []


# The sibling directory of the samples below, spelled in two pieces so that this file does not
# itself hold the references it teaches the checker to refuse (other repository scanners read it).
SIBLING = "sha" + "red"


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ("tests/unit/test_x.py", f'VECTORS = HERE / "../../../{SIBLING}/vectors/semantics.json"'),
        ("tests/unit/test_x.py", f'Path(__file__).resolve().parents[3] / "{SIBLING}" / "vectors"'),
        ("tests/unit/test_x.py", f'Path(__file__).resolve().parents[2].parent / "{SIBLING}"'),
        ("tests/unit/test_x.py", "Path(__file__).parent.parent.parent.parent"),
        ("README.md", "the full contract is SPEC §1-9"),
        ("README.md", "the decisions the SPEC leaves open"),
        ("docs/design.md", f"see [the contract](../../{SIBLING}/SPEC.md)"),
        ("docs/design.md", "see spec.md for details"),
        ("node/node.py", "# Defaults are the SPEC's."),
        (".ci/run", f"cp /work/{SIBLING}/vectors/semantics.json tests/"),
        ("tools/x.py", 'open("/home/dev/unimeter/data")'),
        ("README.md", "cd ../unimeter-data && ls"),
        ("examples/node/x.js", "includeDirs: ['../../../proto']"),
    ],
)
def test_the_check_finds(path: str, line: str) -> None:
    found = outside_references(path, f"first line\n{line}\n")
    assert found and all(f.startswith(f"{path}:2: ") for f in found), found


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (
            "tests/unit/test_x.py",
            'VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "semantics.json"',
        ),
        ("tests/unit/test_x.py", "REPO = Path(__file__).resolve().parents[2]"),
        ("tests/unit/test_x.py", "Path(__file__).parent.parent.parent"),
        ("examples/go/README.md", "[docs/go.md](../../docs/go.md) and ../../.venv/bin/unimeter"),
        ("examples/node/x.js", "includeDirs: ['../../proto']"),
        ("tests/unit/test_x.py", 'for bad_zone in ("../../etc/passwd", "../zoneinfo/UTC", "../etc"):'),
        (".ci/run", 'cd "$(dirname "$0")/.."'),
        ("proto/unimeter/v1/types.proto", "  AGG_TYPE_UNSPECIFIED = 0;"),
        ("bench/targets.py", '_SPEC_SIZES = {"query": 1_000_000}'),
        ("tests/unit/test_x.py", "SPECIAL_KEYS = [0, 1]"),
        ("bench/payloads.py", "def fill_batches(spec: Mapping[str, Any]) -> None:"),
        ("Dockerfile", "VOLUME /var/lib/unimeter"),
        ("README.md", "https://github.com/work/unimeter and https://example.com/home/x"),
        ("README.md", "--data-dir /tmp/unimeter-data"),
    ],
)
def test_the_check_accepts(path: str, line: str) -> None:
    assert outside_references(path, line) == []
