"""Bad and odd inputs (issue 7): every bad one ends in one line naming the field or file, before
anything is trained or published; every legitimate but odd one runs through.

Cases already covered elsewhere are not repeated here: ``test_config.test_bad_values_name_their_field``
(zero epochs, unknown top-level and model keys, unknown device and family…), ``test_cli`` (exit code 2),
``test_datasets.test_missing_corrupt_and_empty_inputs_name_the_file`` (missing, tail-truncated and
zero-row Parquet) and ``test_stages.test_impossible_conditions_fail_at_ingest`` (conditions on the
penguins).
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from conftest import tiny_job, workspace_for
from PIL import Image

from genai_pipeline import stages
from genai_pipeline.cli import main
from genai_pipeline.config import DatasetSpec
from genai_pipeline.datasets.sources import read_dataset
from genai_pipeline.errors import ConfigError, DatasetError, PipelineError, StorageError
from genai_pipeline.jobs import load_job
from genai_pipeline.publishing import record_failure
from genai_pipeline.runs import Run

RUN_DATE = "2026-03-01"
ROWS = 200
rng = np.random.default_rng(7)


def _one_line(error: BaseException) -> str:
    message = str(error)
    assert message and "\n" not in message and message.isprintable(), message
    return message


def _files(root: Path) -> list[str]:
    """Every file below ``root``, relative, sorted (``[]`` when it does not exist)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# -- config -----------------------------------------------------------------------------------------

JOB = {"name": "faults", "dataset": {"uri": "builtin://penguins"}, "model": {"family": "vae"}}


def _job_file(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**JOB, **sections}, allow_unicode=True))
    return path


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        # unknown keys, nested
        ({"generate": {"runner": {"kind": "dask", "wokers": 2}}}, "generate.runner.wokers: unknown field"),
        ({"dataset": {"uri": "x.csv", "labl": "y"}}, "dataset.labl: unknown field"),
        (
            {"validate": {"expectations": [{"type": "expect_x", "kwarg": {}}]}},
            "validate.expectations.0.kwarg: unknown field",
        ),
        # wrong types
        ({"train": 5}, "train: Input should be a valid dictionary or instance of TrainSpec (got 5)"),
        ({"dataset": "data.csv"}, "dataset: Input should be a valid dictionary or instance of DatasetSpec"),
        ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer, unable to parse"),
        ({"train": {"epochs": 2.5}}, "train.epochs: Input should be a valid integer, got a number with a"),
        (
            {"generate": {"conditions": ["species"]}},
            "generate.conditions: Input should be a valid dictionary",
        ),
        (
            {"generate": {"conditions": {"species": ["Adelie", "Gentoo"]}}},
            "generate.conditions.species: expected one string, number or boolean",
        ),
        (
            {"generate": {"conditions": {"species": None}}},
            "generate.conditions.species: expected one string, number or boolean (got None)",
        ),
        ({"model": {"family": "vae", "hidden": "big"}}, "model.hidden: Input should be a valid tuple"),
        # YAML's yes/no/true/false where a number belongs (pydantic alone reads true as 1)
        ({"train": {"epochs": True}}, "train.epochs: expected a number, not true/false (got True)"),
        ({"validate": {"holdout": False}}, "validate.holdout: expected a number, not true/false (got False)"),
        ({"dataset": {"uri": "x.png", "channels": True}}, "dataset.channels: expected a number, not true"),
        # …in a family's own hyper-parameters too, and in lists and mappings of numbers
        ({"model": {"family": "vae", "latent_dim": True}}, "model.latent_dim: expected a number, not true"),
        ({"model": {"family": "vae", "hidden": [64, True]}}, "model.hidden: expected numbers, not true"),
        ({"generate": {"per_label": {"Adelie": True}}}, "generate.per_label: expected numbers, not true"),
        # zero and negative counts
        (
            {"generate": {"num_samples": 0}},
            "generate.num_samples: Input should be greater than or equal to 1",
        ),
        ({"generate": {"shards": 0}}, "generate.shards: Input should be greater than or equal to 1 (got 0)"),
        ({"generate": {"batch_size": -1}}, "generate.batch_size: Input should be greater than or equal to 1"),
        (
            {"train": {"batch_size": 0}},
            "train.batch_size: Input should be greater than or equal to 1 (got 0)",
        ),
        ({"train": {"checkpoint_every": 0}}, "train.checkpoint_every: Input should be greater than or equal"),
        ({"generate": {"per_label": 0}}, "generate.per_label: counts must be positive (got 0)"),
        # counts and samples with no upper bound
        ({"generate": {"per_label": 10**11}}, "generate.per_label: at most 10,000,000,000 samples in all"),
        (
            {"generate": {"per_label": {"Adelie": 6 * 10**9, "Gentoo": 6 * 10**9}}},
            "generate.per_label: at most",
        ),
        ({"validate": {"sample_rows": 10**9}}, "validate.sample_rows: Input should be less than or equal to"),
        ({"validate": {"max_pairs": 0}}, "validate.max_pairs: Input should be greater than or equal to 1"),
        ({"generate": {"per_label": {"Adelie": -1}}}, "generate.per_label: counts must be positive"),
        ({"generate": {"runner": {"workers": 0}}}, "generate.runner.workers: Input should be greater than"),
        ({"retries": {"count": -1}}, "retries.count: Input should be greater than or equal to 0 (got -1)"),
        (
            {"model": {"family": "vae", "hidden": [0]}},
            "model.hidden.0: Input should be greater than or equal",
        ),
        ({"model": {"family": "autoregressive", "hidden": [-2]}}, "model.hidden.0: Input should be greater"),
        ({"model": {"family": "gan", "generator_dims": [0]}}, "model.generator_dims.0: Input should be"),
        # unknown device and family, as people misspell them
        ({"train": {"device": "gpu"}}, "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
        (
            {"train": {"device": "cuda:0"}},
            "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'cuda:0')",
        ),
        ({"model": {"family": "VAE"}}, "model.family: no 'VAE' model for tabular data yet (available: auto"),
        ({"model": {"hidden": [8]}}, "model.family: Field required"),
    ],
)
def test_bad_job_values_fail_at_load_naming_the_field(
    tmp_path: Path, sections: dict[str, Any], expected: str
) -> None:
    path = _job_file(tmp_path, **sections)
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert _one_line(caught.value).startswith(f"{path}: ")
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"dataset": {"uri": "s3://AKIAEXAMPLE:hunter2@bucket/rows.csv"}}, "dataset: uri"),
        ({"export": {"output": "s3://AKIAEXAMPLE:hunter2@bucket/out"}}, "export: output"),
        ({"export": {"output": "http://admin:hunter2@minio:9000/out"}}, "export: output"),
        (
            {"generate": {"complete": {"uri": "s3://AKIAEXAMPLE:hunter2@bucket/seeds.csv"}}},
            "generate.complete: uri",
        ),
        (
            {"generate": {"runner": {"kind": "dask", "address": "tcp://u:hunter2@scheduler:8786"}}},
            "generate.runner: address",
        ),
        (
            {
                "export": {
                    "output": "s3://b",
                    "storage_options": {"endpoint_url": "http://u:hunter2@minio:9000"},
                }
            },
            "export: storage_options.endpoint_url",
        ),
    ],
)
def test_credentials_in_a_url_are_refused_without_repeating_them(
    tmp_path: Path, sections: dict[str, Any], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A secret in a URL reached the console, Prefect's logs and task states, the failed manifest,
    the artifact and the webhook: refused at load, and the error does not quote it."""
    path = _job_file(tmp_path, **sections)
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert f"{field}: a URL with credentials in it (user:secret@) is refused" in _one_line(caught.value)
    assert "hunter2" not in str(caught.value)
    assert main(["check", str(path)]) == 2
    assert "hunter2" not in "".join(capsys.readouterr())


def test_a_web_url_dataset_is_refused_at_load(tmp_path: Path) -> None:
    """http(s) sources failed at ingest with a raw client error that was retried as transient."""
    with pytest.raises(ConfigError, match="dataset.uri: web URLs are not read"):
        load_job(_job_file(tmp_path, dataset={"uri": "https://example.com/penguins.csv"}))


def test_a_label_too_long_for_a_folder_name_fails_at_ingest(tmp_path: Path) -> None:
    """An 80-character CJK label (720 bytes percent-encoded) failed after training with 'File name
    too long' and was retried; now a permanent DatasetError at ingest, naming the label."""

    def png(value: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (8, 8), value).save(buffer, format="PNG")
        return buffer.getvalue()

    long_label = "猫" * 80
    table = pa.table({"image": [png(i * 20) for i in range(8)], "label": [long_label, "short"] * 4})
    pq.write_table(table, tmp_path / "images.parquet")
    job = tiny_job(
        str(tmp_path / "images.parquet"),
        "gan",
        str(tmp_path / "out"),
        dataset={"format": "image_parquet", "label": "label"},
    )
    with pytest.raises(DatasetError, match=r"label '猫+…': 726 bytes as an image folder name .* at most 255"):
        stages.ingest(Run(job=job, run_date="2026-03-04"))
    assert not (tmp_path / "out" / "tiny" / "models").exists()


def test_a_section_given_twice_is_refused_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "twice.yaml"
    path.write_text(
        "name: twice\ndataset: {uri: builtin://penguins}\nmodel: {family: vae}\n"
        "train: {epochs: 3}\ngenerate: {num_samples: 10}\ntrain: {epochs: 5}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_job(path)
    assert _one_line(caught.value) == f"{path}: not valid YAML at line 6: duplicate key 'train'"


def test_an_empty_job_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: the job is empty \(expected name, dataset, model"):
        load_job(path)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "generate.runner.wokers=2"], "generate.runner.wokers: unknown field"),
        (["--set", "generate.shards=0"], "generate.shards: Input should be greater than or equal to 1"),
        (["--set", "generate.conditions.species=[a, b]"], "generate.conditions.species: expected one string"),
        (["--set", "train.device=gpu"], "train.device: Input should be 'auto', 'cpu' or 'cuda' (got 'gpu')"),
    ],
)
def test_check_reports_nested_fields_in_one_line(
    tmp_path: Path, args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(_job_file(tmp_path)), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_fails_before_anything_is_read_naming_the_field(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), train={"device": "cuda"})
    with pytest.raises(ConfigError) as caught:
        stages.ingest(Run(job=job, run_date=RUN_DATE))
    assert _one_line(caught.value) == "train.device: cuda was requested but no CUDA device is available"
    assert not (tmp_path / "tiny").exists()


@pytest.mark.parametrize(
    ("uri", "fmt", "expected"),
    [
        ("absent.csv", None, "absent.csv: dataset not found (dataset.uri)"),
        ("absent-folder", "imagefolder", "absent-folder: dataset not found (dataset.uri)"),
        ("absent/*.parquet", None, "absent/*.parquet: no .parquet/.pq/.parq files found (dataset.uri)"),
    ],
)
def test_a_missing_dataset_fails_at_ingest_naming_it_and_stages_nothing(
    tmp_path: Path, uri: str, fmt: str | None, expected: str
) -> None:
    out = tmp_path / "out"
    job = tiny_job(str(tmp_path / uri), "vae", str(out), dataset={"format": fmt} if fmt else {})
    with pytest.raises(DatasetError) as caught:
        stages.ingest(Run(job=job, run_date=RUN_DATE))
    assert _one_line(caught.value) == f"{tmp_path}/{expected}"
    assert _files(out) == []


UNICODE = pa.table(
    {
        "prix €": rng.normal(10, 2, ROWS).round(2),
        "naïve col": rng.choice(["oui", "non"], ROWS).tolist(),
        "名前": rng.choice(["太郎", "花子", "一郎"], ROWS).tolist(),
    }
)


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ({"prix": 3}, "generate.conditions.prix: no such column (columns: prix €, naïve col, 名前)"),
        ({"名前": "次郎"}, "generate.conditions.名前: '次郎' is not a known value (known: 一郎, 太郎, 花子)"),
        ({"prix €": "cheap"}, "generate.conditions.prix €: 'cheap' cannot be read as double"),
        (
            {"naïve col": "peut-être"},
            "generate.conditions.naïve col: 'peut-être' does not occur in the data (known: non, oui)",
        ),
    ],
)
def test_impossible_conditions_name_the_field_and_nothing_starts(
    tmp_path: Path, conditions: dict[str, Any], expected: str
) -> None:
    """Checked at ingest, before the snapshot and suite are staged: all a failed ingest leaves is the
    (complete) read cache of the source, and recording the failure adds only its manifest."""
    pq.write_table(UNICODE, tmp_path / "prices.parquet")
    out = tmp_path / "out"
    job = tiny_job(
        str(tmp_path / "prices.parquet"),
        "vae",
        str(out),
        dataset={"label": "naïve col"},
        generate={"conditions": conditions},
    )
    run = Run(job=job, run_date=RUN_DATE)
    with pytest.raises(ConfigError) as caught:
        stages.ingest(run)
    assert _one_line(caught.value) == expected
    assert not _files(out / "tiny")
    [cache] = _files(Path(workspace_for(str(out))) / "tiny")  # real data: in the private workspace
    assert cache.startswith("datasets/source-")
    record_failure(run, caught.value)
    assert set(_files(out / "tiny")) == {run.manifest}


# -- data that cannot be read ------------------------------------------------------------------------


def _parquet(path: Path, table: pa.Table = UNICODE) -> None:
    pq.write_table(table, path)


def _write(data: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(data)


def _cut_in_half(path: Path) -> None:
    _parquet(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _pages_overwritten(path: Path) -> None:
    """The footer is intact, the compressed column chunks are not."""
    pq.write_table(pa.table({"x": np.arange(5000), "s": [f"v{i % 97}" for i in range(5000)]}), path)
    data = bytearray(path.read_bytes())
    data[8 : len(data) // 2] = b"\xff" * (len(data) // 2 - 8)
    path.write_bytes(bytes(data))


def _column(name: str, array: pa.Array) -> Callable[[Path], None]:
    return lambda path: _parquet(path, pa.table({"x": np.arange(len(array)), name: array}))


_UNSUPPORTED = " which tabular models cannot learn (they take integers, floats, decimals, dates, timestamps"


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        (
            "random.parquet",
            _write(np.random.default_rng(1).bytes(3000)),
            "not a readable PARQUET file (Parquet magic bytes not found",
        ),
        (
            "half.parquet",
            _cut_in_half,
            "not a readable PARQUET file (Parquet magic bytes not found in footer",
        ),
        ("pages.parquet", _pages_overwritten, "not a readable PARQUET file ("),
        (
            "ragged.csv",
            _write(b"a,b,c\n1,2,3\n4,5\n"),
            "not a readable CSV file (CSV parse error: Expected 3",
        ),
        ("garbage.csv", _write(np.random.default_rng(2).bytes(3000)), "not a readable CSV file (CSV parse"),
        ("empty.csv", _write(b""), "not a readable CSV file (Empty CSV file)"),
        ("header-only.csv", _write(b"a,b,c\n"), "the table has no rows"),
        ("doubled.csv", _write(b"a,b,a\n1,2,3\n"), "column 'a' appears 2 times; names must be unique"),
        ("unnamed.csv", _write(b",b\n1,2\n"), "column 1 has no name; name it in the header"),
        (
            "latin1.csv",
            _write("ville\nSète\nAgde\n".encode("latin-1")),
            "column 'ville' has type binary (text",
        ),
        ("bytes.parquet", _column("blob", pa.array([b"\x00\x01"] * 3)), "column 'blob' has type binary,"),
        (
            "nested.parquet",
            _column("tags", pa.array([[1, 2]] * 3)),
            "column 'tags' has type list<",
        ),
        ("float16.parquet", _column("h", pa.array(np.ones(3, np.float16))), "column 'h' has type halffloat,"),
        ("time.parquet", _column("t", pa.array([1, 2, 3], pa.time32("s"))), "column 't' has type time32["),
        ("span.parquet", _column("d", pa.array([1, 2, 3], pa.duration("s"))), "column 'd' has type duration"),
    ],
)
def test_unreadable_tables_fail_in_one_line_naming_the_file(
    tmp_path: Path, name: str, make: Callable[[Path], None], expected: str
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(DatasetError) as caught:
        read_dataset(DatasetSpec(uri=str(path)))
    message = _one_line(caught.value)
    assert message.startswith(f"{path}: ") and expected in message
    if "has type" in expected:
        assert _UNSUPPORTED in message


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_truncated_image_fails_naming_it(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "ok.png").write_bytes(_png(Image.new("L", (16, 16), 9)))
    noise = Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))
    (tmp_path / "cat" / "cut.png").write_bytes(_png(noise)[:2000])
    with pytest.raises(DatasetError) as caught:
        read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))
    assert _one_line(caught.value).startswith(f"{tmp_path}/cat/cut.png: not a readable image (")


def test_a_decompression_bomb_fails_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses images over twice its pixel limit (~179M pixels): a few KB of PNG that would
    take gigabytes decoded. Here the limit is lowered, so a small image stands in for one."""
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "bomb.png").write_bytes(_png(Image.new("L", (64, 64))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DatasetError) as caught:
        read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))
    message = _one_line(caught.value)
    assert message.startswith(f"{tmp_path}/cat/bomb.png: not a readable image (Image size (4096 pixels)")


def test_junk_beside_images_is_skipped_and_other_files_are_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What tools leave in folders is skipped silently, even when it is named like an image and is
    not one (macOS ``._*`` forks, notebook checkpoints); other non-images are counted in a warning."""
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "a.png").write_bytes(_png(Image.new("L", (8, 8), 50)))
        for junk in (".DS_Store", "._a.png", "Thumbs.db", "desktop.ini"):
            (tmp_path / label / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    (tmp_path / "cat" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "cat" / ".ipynb_checkpoints" / "a-checkpoint.png").write_bytes(b"{}")
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "dog" / "notes.txt").write_text("taken on 2024-05-01")
    (tmp_path / "labels.csv").write_text("file,label\n")
    with caplog.at_level(logging.WARNING, logger="genai_pipeline.datasets.sources"):
        data = read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))
    assert data.labels.tolist() == ["cat", "dog"] and data.shape == (8, 8, 1)
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path}: skipped 2 files that are not images in a label folder"
    ]


def test_sixteen_bit_grey_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit PNG at 30000/65535 (46% grey) reads as 117/255, not as white."""
    (tmp_path / "x").mkdir()
    Image.fromarray(np.full((8, 8), 30000, np.uint16)).save(tmp_path / "x" / "a.png")
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(tmp_path / "x" / "b.png")
    data = read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))
    assert data.shape == (8, 8, 1)
    assert data.images[0].min() == data.images[0].max() == 117
    assert data.images[1].min() == 255


# -- odd but legitimate data: the whole path works --------------------------------------------------

_FAST = {
    "train": {"epochs": 1, "batch_size": 64},
    "generate": {"num_samples": 60, "batch_size": 30},
}


def _synthesize(uri: str, out: Path, **sections: Any) -> pa.Table:
    """Ingest, train a tiny VAE for a few steps, generate: the staged output table."""
    merged = {key: {**_FAST.get(key, {}), **sections.get(key, {})} for key in {*_FAST, *sections}}
    job = tiny_job(uri, "vae", str(out), **merged)
    run = Run(job=job, run_date=RUN_DATE)
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    table = pq.read_table(out / job.name / run.staged(run.data_file))
    assert table.num_rows == generated.num_samples == job.generate.num_samples
    return table


def _base(rows: int = ROWS) -> dict[str, Any]:
    return {"x": rng.normal(size=rows), "k": rng.choice(["a", "b", "c"], rows).tolist()}


def _values(table: pa.Table, name: str) -> set[Any]:
    return set(table.column(name).to_pylist())


#: ``name: (table, dataset section, check of the generated table)``
HANDLED: dict[str, tuple[pa.Table, dict[str, Any], Callable[[pa.Table], bool]]] = {
    "all-null float column": (
        pa.table({**_base(), "z": pa.nulls(ROWS, pa.float64())}),
        {},
        lambda out: out.column("z").null_count == out.num_rows,
    ),
    "all-null string column": (
        pa.table({**_base(), "z": pa.nulls(ROWS, pa.string())}),
        {},
        lambda out: out.column("z").null_count == out.num_rows,
    ),
    "column of null type": (
        pa.table({**_base(), "z": pa.nulls(ROWS)}),
        {},
        lambda out: out.column("z").null_count == out.num_rows,
    ),
    "only a null column": (
        pa.table({"z": pa.nulls(ROWS, pa.int64())}),
        {},
        lambda out: out.column("z").null_count == out.num_rows,
    ),
    "constant float column": (
        pa.table({**_base(), "z": [2.5] * ROWS}),
        {},
        lambda out: _values(out, "z") == {2.5},
    ),
    "constant string column": (
        pa.table({**_base(), "z": ["same"] * ROWS}),
        {},
        lambda out: _values(out, "z") == {"same"},
    ),
    "constant dictionary column": (
        pa.table({**_base(), "z": pa.array(["same"] * ROWS).dictionary_encode()}),
        {},
        lambda out: _values(out, "z") == {"same"},
    ),
    "float NaN (read as missing)": (
        pa.table({**_base(), "z": np.where(np.arange(ROWS) % 4 == 0, np.nan, rng.normal(size=ROWS))}),
        {},
        lambda out: (
            0 < out.column("z").null_count < out.num_rows  # missing values kept (a tiny model: roughly)
            and not np.isnan(out.column("z").drop_null().to_numpy()).any()
        ),
    ),
    "single-class label": (
        pa.table({**_base(), "y": ["only"] * ROWS}),
        {"label": "y"},
        lambda out: _values(out, "y") == {"only"},
    ),
    "5,000 distinct string ids in 6,000 rows": (  # an identifier: made fresh, in its format, never real
        pa.table({"x": rng.normal(size=6000), "id": [f"id-{i % 5000}" for i in range(6000)]}),
        {},
        lambda out: (
            not _values(out, "id") & {f"id-{i}" for i in range(5000)}
            and all(re.fullmatch(r"id-[0-9]+", value) for value in _values(out, "id"))
        ),
    ),
    "64-bit integer ids beyond 2**53": (
        pa.table({"x": rng.normal(size=ROWS), "id": 2**62 + np.arange(ROWS) * 2**40 + 1}),
        {},
        lambda out: (
            not _values(out, "id") & {2**62 + i * 2**40 + 1 for i in range(ROWS)}
            and all(len(str(value)) == 19 for value in out.column("id").to_pylist())  # as many digits
        ),
    ),
    "unicode and spaces in column names": (
        UNICODE,
        {"label": "名前"},
        lambda out: (
            out.column_names == ["prix €", "naïve col", "名前"]
            and _values(out, "名前") <= {"太郎", "花子", "一郎"}
        ),
    ),
}


#: a table of null columns only encodes to zero features: the network is built empty (and says so)
_EMPTY_NETWORK = pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")


@pytest.mark.parametrize(
    "case", [pytest.param(case, marks=_EMPTY_NETWORK) if "only" in case else case for case in HANDLED]
)
def test_odd_tables_train_and_generate_with_their_schema(tmp_path: Path, case: str) -> None:
    table, dataset, check = HANDLED[case]
    if case.startswith("unicode"):  # through CSV, whose header is where such names usually come from
        source = tmp_path / "source.csv"
        pacsv.write_csv(table, source)
    else:
        source = tmp_path / "source.parquet"
        pq.write_table(table, source)
    out = _synthesize(str(source), tmp_path / "out", dataset=dataset)
    assert out.schema.equals(table.schema, check_metadata=False), (out.schema, table.schema)
    assert check(out), out.slice(0, 5).to_pylist()


def test_images_of_mixed_sizes_and_modes_train_and_generate(tmp_path: Path) -> None:
    """L, LA, RGB, RGBA, palette and 16-bit grey PNGs in one folder, two sizes: read as the most
    common size, in colour since some are; the generated images all have that shape."""
    modes = {
        "L": lambda: Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)),
        "LA": lambda: Image.fromarray(rng.integers(0, 255, (8, 8, 2), dtype=np.uint8)),
        "RGB": lambda: Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
        "RGBA": lambda: Image.fromarray(rng.integers(0, 255, (12, 10, 4), dtype=np.uint8)),
        "P": lambda: Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).convert("P"),
        "I;16": lambda: Image.fromarray(rng.integers(0, 65535, (12, 10), dtype=np.uint16)),
    }
    for label in ("a", "b"):
        (tmp_path / "in" / label).mkdir(parents=True)
        for index in range(4):
            for mode, make in modes.items():
                image = make()
                assert image.mode == mode
                image.save(tmp_path / "in" / label / f"{mode.replace(';', '')}-{index}.png")
    manifest = _synthesize(
        str(tmp_path / "in"),
        tmp_path / "out",
        dataset={"format": "imagefolder"},
        generate={"num_samples": 10, "batch_size": 5},
    )
    staging = next((tmp_path / "out" / "tiny" / "_staging").iterdir())
    for path, label in zip(manifest.column("path").to_pylist(), manifest.column("label").to_pylist()):
        with Image.open(staging / path) as image:
            assert (image.mode, image.size, label in ("a", "b")) == ("RGB", (8, 8), True)


# -- out of disk space --------------------------------------------------------------------------------

#: The run's model and snapshots take ~70 KB; 500,000 generated rows ~3.2 MB: a 2 MB disk holds the
#: first, not the second.
DISK_SIZE = "2m"


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 2 MB tmpfs (needs root); skipped where it cannot be mounted, unless GENAI_REQUIRE_TMPFS=1
    (CI) makes that a failure."""
    mount = tmp_path_factory.mktemp("small-disk")
    reason = None
    if os.geteuid() != 0:
        reason = "mounting a tmpfs needs root"
    elif shutil.which("mount") is None:
        reason = "no mount command"
    else:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE}", "tmpfs", str(mount)],
            capture_output=True,
            text=True,
        )
        reason = f"mount -t tmpfs failed: {done.stderr.strip()}" if done.returncode else None
    if reason is not None:
        if os.environ.get("GENAI_REQUIRE_TMPFS") == "1":
            pytest.fail(f"GENAI_REQUIRE_TMPFS=1 but {reason}")
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@dataclass
class FullDiskRun:
    run: Run
    root: Path
    error: BaseException
    cleanup_error: BaseException | None
    left: list[str]


def _run_out_of_space(mount: Path, *, stay_full: bool) -> FullDiskRun:
    """Ingest, train and generate into the small disk until it is full, then record the failure as
    the flow does; ``stay_full``: with the disk still full while recording (another writer)."""
    job = tiny_job(
        "builtin://penguins",
        "vae",
        str(mount),
        train={"epochs": 1},
        generate={"num_samples": 500_000, "batch_size": 50_000},
    )
    run = Run(job=job, run_date=RUN_DATE)
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    with pytest.raises(Exception) as caught:
        stages.generate(run, model=model, dataset=dataset)
    filler = mount / "filler"
    if stay_full:
        descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            with pytest.raises(OSError, match="No space left on device"):
                while True:
                    os.write(descriptor, b"\0" * 65536)
        finally:
            os.close(descriptor)
    cleanup_error = None
    try:
        record_failure(run, caught.value)
    except Exception as exc:
        cleanup_error = exc
    filler.unlink(missing_ok=True)
    root = mount / job.name
    return FullDiskRun(run, root, caught.value, cleanup_error, _files(root))


@pytest.fixture(scope="module")
def full_disk_run(small_disk: Path) -> FullDiskRun:
    return _run_out_of_space(small_disk, stay_full=False)


@pytest.fixture(scope="module")
def still_full_disk_run(small_disk: Path, full_disk_run: FullDiskRun) -> FullDiskRun:
    return _run_out_of_space(small_disk, stay_full=True)


def test_out_of_space_fails_the_run_with_the_reason(full_disk_run: FullDiskRun) -> None:
    assert "No space left on device" in _one_line(full_disk_run.error)


def test_out_of_space_is_a_storage_error_naming_the_file(full_disk_run: FullDiskRun) -> None:
    assert isinstance(full_disk_run.error, StorageError)
    assert f"{full_disk_run.root}/{full_disk_run.run.staging}/" in str(full_disk_run.error)


def test_a_run_out_of_space_leaves_nothing_staged_or_published(full_disk_run: FullDiskRun) -> None:
    """The partial file is removed as the write fails (so the disk has room again), recording the
    failure drops the staging: what remains is the model, the kept suite and the failed manifest."""
    result = full_disk_run
    assert result.cleanup_error is None
    assert not any(rel.startswith(("_staging/", "data/", "images/", "quality/")) for rel in result.left)
    assert not any(Path(rel).name.startswith(".") for rel in result.left)  # no temporary files
    assert result.run.manifest in result.left


def test_recording_a_failure_on_a_full_disk_still_drops_the_staging(still_full_disk_run: FullDiskRun) -> None:
    result = still_full_disk_run
    assert not any(rel.startswith(f"{result.run.staging}/") for rel in result.left)
    assert result.cleanup_error is None or isinstance(result.cleanup_error, PipelineError)
