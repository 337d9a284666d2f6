"""Reading a job: its YAML file, overrides, the run date; every bad one fails in one line naming it."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import BASE_JOB as BASE
from conftest import spec_error as _error

from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import build_job, load_job, parse_overrides, parse_run_date

JOBS = sorted((Path(__file__).parents[1] / "deployments" / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_jobs_are_valid(path: Path) -> None:
    job = load_job(path)
    assert job.name and job.generate.num_samples > 0


def test_missing_sections_and_non_mappings() -> None:
    assert "dataset: Field required" in _error({"name": "x", "model": {"family": "vae"}})
    assert "a job must be a mapping" in _error(["not", "a", "job"])  # type: ignore[arg-type]


def test_files_missing_or_not_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML at line \d"):
        load_job(bad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_job(unsafe)


def test_overrides_change_a_job_without_editing_it() -> None:
    overrides = parse_overrides(
        ["train.epochs=5", "generate.conditions.species=Adelie", "export.output=s3://b/p"]
    )
    job = build_job(BASE, overrides=overrides)
    assert job.train.epochs == 5
    assert job.generate.conditions == {"species": "Adelie"}
    assert job.export.output == "s3://b/p"
    assert "train.epochs: Input should be greater" in _error(
        BASE, overrides=parse_overrides(["train.epochs=-1"])
    )
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="name is not a section"):
        build_job(BASE, overrides={"name.x": 1})


def test_run_dates() -> None:
    assert parse_run_date("2026-03-04") == "2026-03-04"
    assert len(parse_run_date(None)) == 10
    with pytest.raises(ConfigError, match="--run-date: expected YYYY-MM-DD"):
        parse_run_date("04/03/2026")
