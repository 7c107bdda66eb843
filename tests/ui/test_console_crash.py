"""A bug in the console (an exception on the UI thread) ends it the way the issue asks: no
full-screen traceback, the collection thread stopped (it writes the live flows and detaches),
and the CLI's one line naming a log with the traceback, exit 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from flowscope import cli
from flowscope.collect import recorder
from flowscope.collect.recorder import RecordSettings
from flowscope.pipeline import Pipeline, PipelineSettings
from flowscope.ui import app as app_module
from flowscope.ui.live import LiveScreen
from flowscope.ui.source import Post, ScriptedSource
from tests.support.scenario import scenario


class NoCompile:
    """recorder.prepare's stand-in: a compile that never started, nothing to wait for."""

    def close(self) -> None:
        pass


class Source(ScriptedSource):
    """Delivers the scenario's first ticks; remembers whether it was stopped."""

    def __init__(self, pipeline: object, stop: object = None) -> None:
        super().__init__(scenario(3), preload=3, has_db=False)
        self.error = None
        SOURCES.append(self)

    def start(self, post: Post) -> None:
        super().start(post)

    def stop(self, timeout: float = 30.0) -> bool:
        super().stop()
        return True


SOURCES: list[Source] = []


@pytest.fixture
def broken_console(monkeypatch: pytest.MonkeyPatch) -> None:
    SOURCES.clear()

    def compute(self: LiveScreen) -> Any:
        raise ZeroDivisionError("a bug in the view")

    def headless_run(self: app_module.FlowscopeApp, **kwargs: Any) -> None:
        original_run(self, headless=True, **kwargs)

    original_run = app_module.FlowscopeApp.run
    monkeypatch.setattr(app_module, "RecorderSource", Source)
    monkeypatch.setattr(LiveScreen, "compute", compute)
    monkeypatch.setattr(app_module.FlowscopeApp, "run", headless_run)
    monkeypatch.setattr(recorder, "prepare", lambda settings: NoCompile())


def test_run_console_raises_the_bug_after_stopping_collection(
    broken_console: None, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = PipelineSettings(RecordSettings(interfaces=("eth0",)), history=None)
    with pytest.raises(ZeroDivisionError, match="a bug in the view"):
        app_module.run_console(Pipeline(settings))
    assert SOURCES and SOURCES[0].stopped
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err and "ZeroDivisionError" not in out + err


def test_the_cli_says_one_line_and_keeps_the_traceback_in_a_log(
    broken_console: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    monkeypatch.setattr("flowscope.kernel.attach.check_can_attach", lambda name, force: None)
    result = CliRunner().invoke(cli.main, ["live", "-i", "eth0", "--no-db"])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("flowscope: internal error: ZeroDivisionError: a bug in the view")
    log = Path(line.rsplit("traceback in ", 1)[1].rstrip(")"))
    text = log.read_text()
    assert "Traceback" in text and "compute" in text
    assert SOURCES and SOURCES[0].stopped
