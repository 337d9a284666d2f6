"""Shared fixtures: Prefect in a temporary home, a real S3 endpoint (moto over HTTP), tiny jobs."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Prefect reads its settings at import: give the whole test session its own home first.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="genai-pipeline-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
from flows.settings import apply_prefect_defaults  # noqa: E402

apply_prefect_defaults()

from genai_pipeline.config import JobSpec  # noqa: E402
from genai_pipeline.errors import ConfigError  # noqa: E402
from genai_pipeline.jobs import build_job  # noqa: E402

S3_KEY, S3_SECRET = "test-access-key", "test-secret-d0-not-leak"
BUCKET = "synthetic"


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server for every flow test (starting it costs ~9 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def s3_server() -> Iterator[dict[str, str]]:
    """A real S3 endpoint over HTTP on 127.0.0.1 (moto's server), with one bucket."""
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    fs = s3fs.S3FileSystem(key=S3_KEY, secret=S3_SECRET, endpoint_url=endpoint)
    fs.mkdir(BUCKET)
    yield {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET, "bucket": BUCKET}
    server.stop()


@pytest.fixture
def s3_env(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials the way production passes them: in the environment, referenced by the job."""
    monkeypatch.setenv("TEST_S3_ENDPOINT", s3_server["endpoint_url"])
    monkeypatch.setenv("TEST_S3_KEY", s3_server["key"])
    monkeypatch.setenv("TEST_S3_SECRET", s3_server["secret"])
    return s3_server


S3_OPTIONS = {"endpoint_url": "${TEST_S3_ENDPOINT}", "key": "${TEST_S3_KEY}", "secret": "${TEST_S3_SECRET}"}


#: the smallest valid job: penguins, tabular VAE
BASE_JOB = {"name": "j", "dataset": {"uri": "builtin://penguins"}, "model": {"family": "vae"}}


def spec_error(data: dict[str, Any], **kwargs: Any) -> str:
    """The one-line ConfigError a job's data fails with (``build_job``'s keyword arguments apply)."""
    with pytest.raises(ConfigError) as caught:
        build_job(data, source="job.yaml", **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


#: each family's hyper-parameters for a job that trains in seconds
TINY_MODELS: dict[tuple[str, str], dict[str, Any]] = {
    ("tabular", "vae"): {"hidden": [32], "latent_dim": 8},
    ("tabular", "gan"): {"generator_dims": [32], "critic_dims": [32], "noise_dim": 16},
    ("tabular", "diffusion"): {"width": 32, "depth": 1},
    ("tabular", "autoregressive"): {"hidden": [32], "embedding_dim": 16},
    ("image", "vae"): {"channels": 16, "latent_dim": 16},
    ("image", "gan"): {"channels": 16, "latent_dim": 16},
    ("image", "diffusion"): {"channels": 8, "sampling_steps": 3},
    ("image", "autoregressive"): {
        "patch_size": 2,
        "levels": 8,
        "width": 16,
        "head_width": 8,
        "depth": 1,
        "heads": 2,
    },
}


def workspace_for(output: str) -> str:
    """The private workspace tests give a job: beside its output, never inside it."""
    return f"{str(output).rstrip('/')}-workspace"


def run_stages(run: Any) -> Any:
    """The five stages one after another, as the flow calls them (without Prefect); the model."""
    from genai_pipeline import stages

    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated)
    stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    return model


def tiny_job(uri: str, family: str, output: str, **sections: Any) -> JobSpec:
    """A job small enough to train in seconds on one CPU core."""
    image = uri in ("builtin://digits", "builtin://mnist") or sections.get("dataset", {}).get("format") in (
        "imagefolder",
        "image_parquet",
    )
    model = {"family": family, **TINY_MODELS[("image" if image else "tabular", family)]}
    data: dict[str, Any] = {
        "name": "tiny",
        "dataset": {"uri": uri},
        "model": model,
        "train": {"epochs": 2, "batch_size": 64, "device": "cpu", "seed": 3},
        "generate": {"num_samples": 120, "batch_size": 50},
        "validate": {"min_column_shapes": 0.0, "null_tolerance": 1.0, "classifier_steps": 30},
        "export": {"output": output, "workspace": workspace_for(output)},
        "retries": {"count": 0, "delay_seconds": 0},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    if {"per_label", "complete"} & set(data["generate"]) and "num_samples" not in sections.get(
        "generate", {}
    ):
        del data["generate"]["num_samples"]  # they say how many rows are drawn
    return build_job(data, source="tiny-job")


_PEAK_RSS = """
import json, resource, sys
from genai_pipeline import stages
from genai_pipeline.config import JobSpec
from genai_pipeline.refs import DatasetRef, ModelRef
from genai_pipeline.runs import Run

job = JobSpec.model_validate_json(sys.argv[1])
dataset, model = DatasetRef(**json.loads(sys.argv[2])), ModelRef(**json.loads(sys.argv[3]))
for day, count in enumerate(map(int, sys.argv[4:]), start=1):
    generate = job.generate.model_copy(update={"num_samples": count})
    run = Run(job=job.model_copy(update={"generate": generate}), run_date=f"2026-01-{day:02d}")
    assert stages.generate_shard(run, model=model, dataset=dataset, shard=0).num_samples == count
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)  # MiB
"""


def peak_rss_after_generating(job: JobSpec, counts: list[int]) -> list[int]:
    """Train the job's model, then generate ``counts`` samples one run after another in a fresh
    process: its peak RSS in MiB after each (a process of its own, so the peak is the generation's)."""
    import json
    import subprocess
    import sys
    from dataclasses import asdict

    from genai_pipeline import stages
    from genai_pipeline.runs import Run

    run = Run(job=job, run_date="2026-01-01")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    args = [job.model_dump_json(), json.dumps(asdict(dataset)), json.dumps(asdict(model), default=str)]
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, *args, *map(str, counts)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return [int(line) for line in out.stdout.split()]
