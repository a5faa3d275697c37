"""The `emodis` console script: every subcommand explains itself; input errors are one clear line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from emodis_ray.cli import build_parser, main


def _subcommands() -> list[list[str]]:
    """Every subcommand, nested ones (``bench tune``) included, as argv prefixes."""
    found: list[list[str]] = []

    def walk(parser: argparse.ArgumentParser, prefix: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append([*prefix, name])
                    walk(sub, [*prefix, name])

    walk(build_parser(), [])
    return found


@pytest.mark.parametrize("command", _subcommands(), ids=" ".join)
def test_every_subcommand_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"emodis {' '.join(command)}" in out and len(out) > 200
    assert "%%" not in out  # a literal percent sign in a description is written once


def test_console_script_runs() -> None:
    r = subprocess.run([sys.executable, "-m", "emodis_ray.cli", "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and "synth" in r.stdout and "manifest" in r.stdout


def test_config_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--set", "model.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "model.nope" in err and "Traceback" not in err


def test_config_prints_resolved_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--config", "paper", "--set", "model.spk_dim=64"]) == 0
    out = capsys.readouterr().out
    assert "spk_dim: 64" in out and "emo_dim: 2048" in out
