"""Canaries: unique values planted in one training row must come out of no output of a run.

Every family, tables and images. A table gets the penguins plus an e-mail per row, an identifier per
row and, in one row, a planted e-mail, a planted island (a category one row holds) and a planted
body mass (an extreme number); an image dataset gets one planted, unique image. After a whole run
(ingest → train → generate → validate → export), every object under the published output is read
(Parquet files as tables, everything else as bytes) and none may hold a canary, a real e-mail or a
real identifier; nor may the model file, which lives in the private workspace; nor may the output
hold anything derived from real rows (a source copy, a snapshot, a model).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import tiny_job, workspace_for
from PIL import Image

from genai_pipeline import stages
from genai_pipeline.datasets import BUILTINS
from genai_pipeline.privacy.memorisation import memorised_share
from genai_pipeline.runs import Run

CANARY_EMAIL = "canary-7f3a9@leak.example"
CANARY_ISLAND = "Canary Islet Zq"
CANARY_MASS = 9_876_543
CANARY_REMARK = "the canary sang a unique song on the seventeenth of never"
TABLE_FAMILIES = ["gan", "vae", "diffusion", "autoregressive"]
IMAGE_FAMILIES = TABLE_FAMILIES


def planted_penguins(path: Path) -> pa.Table:
    """The penguins with an e-mail, an identifier and a keeper's free-text remark per row, and one
    row of canaries."""
    table = BUILTINS["penguins"].load()
    n = table.num_rows
    emails = [f"keeper.{i:03d}@zoo.example" for i in range(n)]
    ids = [f"P{i:06d}" for i in range(n)]
    remarks = [f"penguin number {i} was weighed on a windy morning by the keeper" for i in range(n)]
    emails[17] = CANARY_EMAIL
    remarks[17] = CANARY_REMARK
    island = table.column("island").to_pylist()
    island[17] = CANARY_ISLAND
    mass = table.column("body_mass_g").to_pylist()
    mass[17] = CANARY_MASS
    table = (
        table.set_column(table.schema.get_field_index("island"), "island", pa.array(island))
        .set_column(table.schema.get_field_index("body_mass_g"), "body_mass_g", pa.array(mass, pa.int64()))
        .append_column("keeper_email", pa.array(emails))
        .append_column("penguin_id", pa.array(ids))
        .append_column("remark", pa.array(remarks))
    )
    pq.write_table(table, path)
    return table


def _texts(root: Path) -> dict[str, str]:
    """Every file below ``root`` as text: Parquet files as their rows (decompressed), others as
    their bytes decoded loosely (JSON, HTML, PNG chunks)."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".parquet":
            out[rel] = json.dumps(pq.read_table(path).to_pylist(), default=str)
        else:
            out[rel] = path.read_bytes().decode("latin-1")
    return out


def _numbers(root: Path, value: float) -> list[str]:
    """Parquet cells equal to ``value`` in any numeric column, and raw float32/float64/int64
    encodings of it in any other file (safetensors weights)."""
    found = []
    patterns = [struct.pack("<f", value), struct.pack("<d", value), struct.pack("<q", int(value))]
    for path in (p for p in root.rglob("*") if p.is_file()):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                column = table.column(name)
                numeric = pa.types.is_integer(column.type) or pa.types.is_floating(column.type)
                if numeric and pc.any(pc.equal(column, value)).as_py():
                    found.append(f"{path}:{name}")
        elif any(pattern in path.read_bytes() for pattern in patterns):
            found.append(str(path))
    return found


def _run_whole(job: Any, day: str = "2026-05-01") -> Run:
    run = Run(job=job, run_date=day)
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated)
    assert verdict.passed, verdict.failures
    stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    return run


def _assert_nothing_real_published(output: Path) -> None:
    published = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    assert published, "the run published nothing"
    for rel in published:
        top = rel.split("/")[0]
        assert top in ("data", "images", "quality", "_runs", "_locks"), f"{rel} is not synthetic or aggregate"
    assert not any("/input/" in rel or rel.endswith(".safetensors") for rel in published)


@pytest.mark.parametrize("family", TABLE_FAMILIES)
def test_no_planted_value_leaves_a_table_run(tmp_path: Path, family: str) -> None:
    real = planted_penguins(tmp_path / "zoo.parquet")
    output = tmp_path / "out"
    job = tiny_job(
        str(tmp_path / "zoo.parquet"),
        family,
        str(output),
        generate={"num_samples": 600, "batch_size": 128},
        train={"epochs": 3},
        validate={"holdout": 0},  # the planted row is a training row, whatever the split would be
    )
    run = _run_whole(job)
    root, workspace = output / "tiny", Path(workspace_for(str(output))) / "tiny"
    _assert_nothing_real_published(root)
    texts = _texts(root)
    for canary in (CANARY_EMAIL, CANARY_ISLAND, str(CANARY_MASS), CANARY_REMARK):
        assert not [rel for rel, text in texts.items() if canary in text], f"{canary} was published"
    assert not _numbers(root, CANARY_MASS)
    real_values = set(real.column("keeper_email").to_pylist()) | set(real.column("penguin_id").to_pylist())
    published_data = pq.read_table(root / run.data_file)
    # text, written by the table's language model: no run of 8 words fewer than 5 real remarks hold
    # (each remark names its penguin's number: a model that learned them may have nothing to write)
    written = [text for text in published_data.column("remark").to_pylist() if text is not None]
    assert memorised_share(real.column("remark").to_pylist(), written, 5) == 0
    for column in ("keeper_email", "penguin_id"):
        values = published_data.column(column).to_pylist()
        assert not real_values & set(values), f"real {column} values were published"
        assert len(set(values)) == len(values), f"{column}: fresh values repeat"
    assert published_data.column("penguin_id").to_pylist()[0][0] == "P"
    # the model file (private) holds none of them either
    (model_json,) = workspace.glob("models/*/model.json")
    model_text = model_json.read_text()
    for canary in (
        CANARY_EMAIL,
        CANARY_ISLAND,
        str(CANARY_MASS),
        CANARY_REMARK,
        "keeper.017@zoo.example",
        "P000042",
    ):
        assert canary not in model_text
    assert not _numbers(model_json.parent, CANARY_MASS)
    metrics = pq.read_table(root / run.quality / "metrics.parquet").to_pylist()
    shares = [row for row in metrics if row["metric"] == "rare_real_value_share"]
    assert shares and shares[0]["value"] == 0.0 and shares[0]["passed"]
    protected = {row["column"]: row["value"] for row in metrics if row["metric"] == "protected_values"}
    assert protected["island"] >= 1 and protected["body_mass_g"] >= 1  # the canaries, at least
    # what the run derived from real rows went to the workspace, and the run's own part of it is gone
    assert not (workspace / "runs" / run.run_id).exists()


def planted_digits(path: Path) -> np.ndarray:
    """300 digits as an image folder, one of them replaced by a unique checkerboard."""
    images, labels = BUILTINS["digits"].load()
    canary = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)[..., None]
    for index in range(300):
        image = canary if index == 7 else images[index]
        folder = path / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[..., 0]).save(folder / f"{index}.png")
    return canary


@pytest.mark.parametrize("family", IMAGE_FAMILIES)
def test_no_planted_image_leaves_an_image_run(tmp_path: Path, family: str) -> None:
    canary = planted_digits(tmp_path / "digits")
    output = tmp_path / "out"
    job = tiny_job(
        str(tmp_path / "digits"),
        family,
        str(output),
        dataset={"format": "imagefolder"},
        generate={"num_samples": 200, "batch_size": 100},
        # a model trained for seconds need not look like digits: this is about what it leaks
        validate={
            "max_memorised_share": 1.0,
            "max_duplicate_share": 1.0,
            "expectations": [
                {
                    "type": "expect_column_mean_to_be_between",
                    "kwargs": {"column": "pixel_mean", "min_value": 0, "max_value": 255},
                    "check_input": False,
                }
            ],
        },
    )
    _run_whole(job)
    root = output / "tiny"
    _assert_nothing_real_published(root)
    for png in root.rglob("*.png"):
        image = np.asarray(Image.open(png))
        assert np.abs(image.astype(int) - canary[..., 0].astype(int)).mean() > 20, f"{png} is the canary"
    canary_png = (tmp_path / "digits").rglob("7.png")
    raw = next(canary_png).read_bytes()
    assert not [rel for rel, text in _texts(root).items() if raw.decode("latin-1") in text]
