"""The command line: listing, checking, and clear errors with the documented exit codes."""

from __future__ import annotations

from pathlib import Path

import pytest

from genai_pipeline.cli import main

JOB = str(Path(__file__).parents[1] / "deployments" / "jobs" / "penguins-vae.yaml")


def test_datasets_lists_the_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in ("builtin://penguins", "builtin://digits", "builtin://mnist"):
        assert name in out


def test_check_accepts_a_valid_job_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", JOB, "--set", "generate.num_samples=10", "--output", "s3://b/p"]) == 0
    assert "10 samples to s3://b/p/penguins-vae" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["check", JOB, "--set", "train.epochs=0"],
            "train.epochs: Input should be greater than or equal to 1",
        ),
        (["check", "missing.yaml"], "missing.yaml: job file not found"),
        (["check", JOB, "--set", "nonsense"], "--set 'nonsense': expected KEY=VALUE"),
        (["run", JOB, "--run-date", "yesterday"], "--run-date: expected YYYY-MM-DD"),
        # identifiers that become paths, refused before a deployment is even looked up
        (["trigger", "penguins-vae", "--param", "run_id=../.."], "--param run_id: '../..' is not a run id"),
        (["trigger", "penguins-vae", "--param", "run_date=../x"], "--param run_date: expected YYYY-MM-DD"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
