"""Job specs: valid ones load, every bad one fails with one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import build_job, load_job, parse_overrides, parse_run_date
from genai_pipeline.storage import resolve_options

JOBS = sorted((Path(__file__).parents[1] / "deployments" / "jobs").glob("*.yaml"))
BASE = {"name": "j", "dataset": {"uri": "builtin://penguins"}, "model": {"family": "vae"}}


def _error(data: dict, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        build_job(data, source="job.yaml", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_jobs_are_valid(path: Path) -> None:
    job = load_job(path)
    assert job.name and job.generate.num_samples > 0


def test_builtins_bring_their_format_and_label() -> None:
    job = build_job({**BASE, "dataset": {"uri": "builtin://mnist"}, "model": {"family": "gan"}})
    assert (job.dataset.format, job.dataset.label, job.dataset.modality) == ("imagefolder", "label", "image")
    assert build_job(BASE).dataset.label == "species"


def test_formats_are_inferred_from_the_uri() -> None:
    assert build_job({**BASE, "dataset": {"uri": "s3://b/x.csv"}}).dataset.format == "csv"
    assert build_job({**BASE, "dataset": {"uri": "/data/folder"}}).dataset.format == "parquet"


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        ({"train": {"epochs": 0}}, "train.epochs: Input should be greater than or equal to 1 (got 0)"),
        ({"train": {"epocs": 3}}, "train.epocs: unknown field"),
        ({"train": {"device": "tpu"}}, "train.device: Input should be 'auto', 'cpu' or 'cuda'"),
        (
            {"generate": {"num_samples": -5}},
            "generate.num_samples: Input should be greater than or equal to 1",
        ),
        ({"generate": {"batch_size": "big"}}, "generate.batch_size: Input should be a valid integer"),
        (
            {"model": {"family": "transformer"}},
            "model.family: no 'transformer' model for tabular data yet (available: autoregressive, diffusion",
        ),
        (
            {"model": {"family": "diffusion", "sampling_steps": 0}},
            "model.sampling_steps: Input should be greater than or equal to 1",
        ),
        (
            {"model": {"family": "vae", "latent_dim": 0}},
            "model.latent_dim: Input should be greater than or equal",
        ),
        ({"model": {"family": "vae", "layers": 3}}, "model.layers: unknown field"),
        ({"dataset": {"uri": "builtin://iris"}}, "dataset.uri: unknown built-in dataset 'iris'"),
        ({"dataset": {"uri": "x.parquet", "format": "imagefolder", "channels": 2}}, "dataset.channels:"),
        ({"name": "bad/name"}, "name: String should match pattern"),
        (
            {"validate": {"min_column_shapes": 1.5}},
            "validate.min_column_shapes: Input should be less than or equal to 1",
        ),
        (
            {"validate": {"expectations": [{"type": "rm -rf"}]}},
            "validate.expectations.0.type: String should match",
        ),
        ({"surprise": True}, "surprise: unknown field"),
    ],
)
def test_bad_values_name_their_field(patch: dict, expected: str) -> None:
    assert expected in _error({**BASE, **patch})


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


def test_literal_secrets_are_masked_and_env_references_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    job = build_job(
        {
            **BASE,
            "export": {
                "output": "s3://b",
                "storage_options": {
                    "key": "AKIAEXAMPLE",
                    "secret": "hunter2",
                    "endpoint_url": "${S3_URL}",
                    "client_kwargs": {"aws_session_token": "tok"},
                },
            },
        }
    )
    public = job.public_dict()["export"]["storage_options"]
    assert public["key"] == public["secret"] == "**********"
    assert public["client_kwargs"]["aws_session_token"] == "**********"
    assert public["endpoint_url"] == "${S3_URL}"
    assert "hunter2" not in repr(job) and "hunter2" not in str(job.public_dict())
    monkeypatch.setenv("S3_URL", "http://127.0.0.1:9000")
    resolved = resolve_options(job.export.storage_options)
    assert resolved["secret"] == "hunter2" and resolved["endpoint_url"] == "http://127.0.0.1:9000"
    monkeypatch.delenv("S3_URL")
    with pytest.raises(
        ConfigError, match="storage_options.endpoint_url: environment variable S3_URL is not set"
    ):
        resolve_options(job.export.storage_options)


def test_run_dates() -> None:
    assert parse_run_date("2026-03-04") == "2026-03-04"
    assert len(parse_run_date(None)) == 10
    with pytest.raises(ConfigError, match="--run-date: expected YYYY-MM-DD"):
        parse_run_date("04/03/2026")
