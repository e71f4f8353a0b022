"""Which ingest engine a server runs: --engine / UNIMETER_ENGINE, the auto fallback when the
extension is missing, the one log line at start, and refusing to start when native is asked for
but cannot load."""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

import pytest

from service.config import ServeConfig
from service.ingest_engine import NATIVE_MODULE, choose_engine
from service.server import UnimeterServer
from tests.conftest import serve_config
from tests.engines import ENGINES

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def without_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as on a machine where the extension was never built (None in sys.modules
    makes its import fail, as a missing module does)."""
    monkeypatch.setitem(sys.modules, NATIVE_MODULE, None)


def test_an_unknown_engine_name_is_refused() -> None:
    with pytest.raises(ValueError, match="engine must be auto, native or python, got 'rust'"):
        ServeConfig(engine="rust")
    with pytest.raises(ValueError, match="engine must be one of auto, native, python, got 'rust'"):
        choose_engine("rust")


def test_python_is_chosen_when_asked_for_whatever_is_installed() -> None:
    choice = choose_engine("python")
    assert (choice.engine.name, choice.reason) == ("python", "python engine (requested)")


@pytest.mark.usefixtures("without_native")
def test_auto_falls_back_to_python_without_the_extension_and_native_refuses() -> None:
    choice = choose_engine("auto")
    assert choice.engine.name == "python"
    assert choice.reason.startswith(
        "python engine (auto: the native extension unimeter_native is not installed"
    )
    with pytest.raises(
        ValueError, match="the native engine was requested but unimeter_native cannot be loaded"
    ):
        choose_engine("native")


def test_auto_runs_native_where_it_is_built() -> None:
    expected = "native" if "native" in ENGINES else "python"
    assert choose_engine("auto").engine.name == expected


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_server_logs_its_engine_once_at_start(
    tmp_path: Path, engine: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", engine=engine))
    with caplog.at_level(logging.INFO, logger="service.ingest_engine"):
        await server.start()
    try:
        lines = [r.getMessage() for r in caplog.records if r.name == "service.ingest_engine"]
        assert lines == [f"ingest engine: {engine} engine (requested)"]
        assert server.stats.ingest_engine == engine
    finally:
        await server.stop(grace=1.0)


@pytest.mark.parametrize("engine", ENGINES)
async def test_the_young_collections_are_timed_for_the_engine_s_garbage(tmp_path: Path, engine: str) -> None:
    """The native engine leaves grpc's per-call cycles as nearly all its garbage: young
    collections every 2,000 objects, short ones; the Python engine's batches leave many
    survivors: every 50,000, so that they are not re-walked."""
    before = gc.get_threshold()
    server = UnimeterServer(serve_config(tmp_path / "data", engine=engine))
    await server.start()
    try:
        assert gc.get_threshold() == ({"native": 2_000, "python": 50_000}[engine], 20, 100)
    finally:
        await server.stop(grace=1.0)
        gc.set_threshold(*before)


@pytest.mark.usefixtures("without_native")
async def test_a_server_asked_for_native_without_it_does_not_start(tmp_path: Path) -> None:
    server = UnimeterServer(serve_config(tmp_path / "data", engine="native"))
    with pytest.raises(ValueError, match="the native engine was requested"):
        await server.start()
    assert not (tmp_path / "data").exists(), "refused before recovering anything"
