"""`cityos grafana build`: writes the files, and --check tells stale from current."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cityos.cli.grafana import DASHBOARD_DIR, app
from cityos.grafana.dashboards import DASHBOARDS, render

runner = CliRunner()


def test_build_writes_every_dashboard_then_check_passes(tmp_path: Path) -> None:
    assert runner.invoke(app, ["build", "--out", str(tmp_path), "--check"]).exit_code == 1
    result = runner.invoke(app, ["build", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(DASHBOARDS)
    assert (tmp_path / "traffic.json").read_text(encoding="utf-8") == render("traffic")
    assert runner.invoke(app, ["build", "--out", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "alerts.json").write_text("{}", encoding="utf-8")
    result = runner.invoke(app, ["build", "--out", str(tmp_path), "--check"])
    assert result.exit_code == 1 and "alerts.json" in result.output


def test_the_committed_files_are_current() -> None:
    result = runner.invoke(app, ["build", "--out", str(DASHBOARD_DIR), "--check"])
    assert result.exit_code == 0, result.output
