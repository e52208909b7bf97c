"""The models file at start-up: one that does not parse stops `sdbot run` before anything loads,
with one line naming the file and the line."""

from __future__ import annotations

from pathlib import Path

from tests.bot.test_cli import sdbot


def test_run_with_a_broken_models_file_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "models.toml").write_text('default = "a"\n\n[models.a]\nmodel_id = "x/y"\nsteps = "four"\n')
    result = sdbot("run", env={"SDBOT_DISCORD_TOKEN": "x"}, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("sdbot: models.toml, line 3: [models.a]: steps:"), result.stderr
