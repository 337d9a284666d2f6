"""The job spec's models: what a job may say, what is inferred, what is refused, what is masked."""

from __future__ import annotations

import json
import pickle

import pytest
from conftest import BASE_JOB as BASE
from conftest import spec_error as _error

from genai_pipeline.errors import ConfigError
from genai_pipeline.jobs import build_job
from genai_pipeline.storage import resolve_options


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


def test_every_storage_option_is_secret_unless_it_only_says_where_the_data_is() -> None:
    """Masking by a fixed list of key names let an SSE customer key and an Authorization header
    into the run manifest and the subflow's parameters: now every text value is masked but those
    of a short list of options that locate the data, and any value under a key naming a secret."""
    options = {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": False,
        "s3_additional_kwargs": {"SSECustomerKey": "sse-hunter2", "SSECustomerAlgorithm": "AES256"},
        "headers": {"Authorization": "Bearer hunter2"},
        "client_kwargs": {"region_name": "eu-west-1", "AWS_Session_Token": "tok-hunter2"},
        "sas_list": ["hunter2-sas"],
        "api_key_id": 12345,
        "token": "${S3_TOKEN}",
    }
    job = build_job({**BASE, "export": {"output": "s3://b", "storage_options": options}})
    public = job.public_dict()["export"]["storage_options"]
    assert public["endpoint_url"] == "http://127.0.0.1:9000" and public["anon"] is False
    assert public["client_kwargs"]["region_name"] == "eu-west-1" and public["token"] == "${S3_TOKEN}"
    assert public["s3_additional_kwargs"] == {
        "SSECustomerKey": "**********",
        "SSECustomerAlgorithm": "**********",
    }
    assert public["headers"]["Authorization"] == public["client_kwargs"]["AWS_Session_Token"] == "**********"
    assert public["sas_list"] == ["**********"] and public["api_key_id"] == "**********"
    assert "hunter2" not in json.dumps(public) + repr(job) + job.model_dump_json()
    resolved = resolve_options(
        {key: value for key, value in job.export.storage_options.items() if key != "token"}
    )
    assert {key: value for key, value in resolved.items()} == {
        k: v for k, v in options.items() if k != "token"
    } | {"api_key_id": "12345"}


def test_an_existing_dask_cluster_is_never_sent_a_literal_secret() -> None:
    """The job reaches a cluster's workers pickled, and a pickle holds a SecretStr's value in clear
    (a local cluster's workers are this machine's processes; an existing cluster's are not)."""
    literal = {**BASE, "export": {"output": "s3://b", "storage_options": {"secret": "hunter2"}}}
    assert b"hunter2" in pickle.dumps(build_job(literal))  # why: masking does not survive pickling
    remote = {"generate": {"runner": {"kind": "dask", "address": "tcp://scheduler:8786"}}}
    message = _error({**literal, **remote})
    assert message.startswith("job.yaml: generate.runner.address: the job is sent to the cluster's workers")
    assert "export.storage_options as ${VAR}" in message and "hunter2" not in message
    hook = {**BASE, **remote, "notify": {"webhook_url": "https://hooks.example/hunter2"}}
    assert "notify.webhook_url as ${VAR}" in _error(hook)
    referenced = {
        **BASE,
        **remote,
        "export": {
            "output": "s3://b",
            "workspace": "s3://private",
            "storage_options": {"secret": "${S3_SECRET}"},
        },
    }
    assert b"S3_SECRET" in pickle.dumps(build_job(referenced))  # the reference travels, the secret does not
    local = {**referenced, "export": {**referenced["export"], "workspace": "./workspace"}}
    assert "the cluster's workers read the model from export.workspace" in _error(local)


@pytest.mark.parametrize(
    ("output", "workspace"),
    [
        ("./out", "./out"),
        ("./out", "./out/private"),
        ("./out/synthetic", "./out"),
        ("s3://bucket/synthetic", "s3://bucket/synthetic/workspace"),
        ("s3://bucket", "s3://bucket/workspace"),
    ],
)
def test_a_workspace_inside_the_output_is_refused(output: str, workspace: str) -> None:
    """Readers are granted the output: a workspace inside it would grant them the real data."""
    message = _error({**BASE, "export": {"output": output, "workspace": workspace}})
    assert message.startswith("job.yaml: export: workspace:") and "overlap" in message


@pytest.mark.parametrize(
    ("output", "workspace"),
    [
        ("./out", "./workspace"),
        ("s3://bucket/synthetic", "s3://bucket/synthetic-private"),
        ("s3://a/x", "s3://b/x"),
    ],
)
def test_a_workspace_apart_from_the_output_is_accepted(output: str, workspace: str) -> None:
    job = build_job({**BASE, "export": {"output": output, "workspace": workspace}})
    assert job.export.workspace == workspace
