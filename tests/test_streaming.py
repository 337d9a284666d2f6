"""Training on tables larger than memory: rows read a few row groups at a time (issue 19)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import S3_OPTIONS, run_stages, tiny_job

from genai_pipeline import parquet, stages, training
from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS
from genai_pipeline.datasets.row_groups import RowGroups
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.errors import ConfigError
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.runs import Run
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore, StreamedRows, fit_loop


class Crash(Exception):
    pass


class CountedGroups(RowGroups):
    """Row groups that count the groups read."""

    reads: list[int]

    def read(self, group: int) -> pa.Table:
        self.reads.append(group)
        return super().read(group)


def _staged(tmp_path: Path, rows: int = 400, group: int = 40) -> CountedGroups:
    rng = np.random.default_rng(0)
    table = pa.table({"i": np.arange(rows), "x": rng.normal(size=rows), "y": rng.normal(size=rows)})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=group)
    groups = RowGroups.of(Storage(str(tmp_path)), "rows.parquet")
    counted = CountedGroups(groups.storage, groups.rel, groups.sizes)
    object.__setattr__(counted, "reads", [])
    return counted


def _tensors(table: pa.Table) -> tuple[torch.Tensor, ...]:
    columns = [torch.from_numpy(table.column(name).to_numpy().copy()) for name in ("i", "x", "y")]
    return columns[0], torch.stack(columns[1:], dim=1).float()


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Buffers of two 40-row groups, so that an epoch of 400 rows has five."""
    monkeypatch.setattr(training, "STREAM_BUFFER_ROWS", 80)


def test_an_epoch_visits_every_training_row_once_in_a_seeded_shuffle(
    tmp_path: Path, small_buffers: None
) -> None:
    rows = StreamedRows(_staged(tmp_path), _tensors, seed=3, holdout=0.2)
    held = set(rows.validation()[0].tolist())
    assert 40 < len(held) < 120 and rows.rows == 400 - len(held)

    def epoch(generator: torch.Generator) -> list[int]:
        count, batches = rows.epoch(generator, 16, torch.device("cpu"))
        seen = [int(i) for batch in batches for i in batch[0]]
        assert count * 16 == len(seen)
        return seen

    generator = torch.Generator().manual_seed(1)
    first, second = epoch(generator), epoch(generator)
    for seen in (first, second):
        assert len(set(seen)) == len(seen) and not held & set(seen)  # once each, none held out
        assert len(seen) > rows.rows - 5 * 16  # at most a short batch left per buffer
    assert first != second  # another epoch, another order
    assert first == epoch(torch.Generator().manual_seed(1))  # the same seed, the same order
    assert first[:40] != sorted(first[:40])  # rows of a buffer shuffled, not in file order


def _fit(
    rows: StreamedRows, checkpoints: CheckpointStore | None, crash_at: int | None = None
) -> torch.nn.Module:
    torch.manual_seed(0)
    net = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    calls = {"n": 0}

    def step(batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash()
        xy = batch[1]
        loss = torch.nn.functional.mse_loss(net(xy[:, :1]) + 0.01 * torch.randn(len(xy), 1), xy[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    fit_loop(
        name="toy",
        modules={"net": net},
        optimizers={"sgd": optimizer},
        step=step,
        data=rows,
        train=TrainSpec(epochs=3, batch_size=16, device="cpu", seed=5, checkpoint_every=7),
        device=torch.device("cpu"),
        checkpoints=checkpoints,
    )
    return net


def test_a_streamed_training_resumes_mid_epoch_without_reading_what_it_skips(
    tmp_path: Path, small_buffers: None
) -> None:
    reference = _fit(StreamedRows(_staged(tmp_path), _tensors, seed=3), None)
    store = CheckpointStore(Storage(str(tmp_path)), "ckpt")
    with pytest.raises(Crash):
        _fit(StreamedRows(_staged(tmp_path), _tensors, seed=3), store, crash_at=33)  # epoch 2: 25 a epoch
    groups = _staged(tmp_path)
    resumed = _fit(StreamedRows(groups, _tensors, seed=3), store)
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    # resumed at step 28 (batch 3 of epoch 2): the first buffer of that epoch (2 groups, 4 batches)
    # is read again, none before it; then the rest of that epoch and the third
    assert len(groups.reads) == 10 + 10


def test_the_encoder_of_a_sample_knows_the_categories_nulls_and_identifiers_of_every_row(
    tmp_path: Path,
) -> None:
    rows = 3000
    colour = ["red", "blue"] * (rows // 2)
    colour[2500:2600] = ["green"] * 100  # frequent enough to learn, absent from the sample below
    size = pa.array(np.arange(rows, dtype=float), mask=np.arange(rows) == 2700)  # the only null
    table = pa.table({"id": [f"u{i:05d}" for i in range(rows)], "colour": colour, "size": size})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=500)
    groups = RowGroups.of(Storage(str(tmp_path)), "rows.parquet")
    roles = column_roles(table, {}, None)
    assert roles["id"].fresh
    sample = table.slice(0, 2000)
    alone = TableEncoder.fit(sample, roles=roles)
    with pytest.raises(ValueError, match="colour"):
        alone.encode(table)
    encoder = TableEncoder.fit(sample, roles=roles, facts=groups.facts(roles))
    x, _ = encoder.encode(table)  # every row encodes: green is a category, size may be null
    assert x.shape[0] == rows
    assert "green" in (encoder.codecs[1].categories or []) and encoder.codecs[2].has_nulls
    # the identifiers made fresh avoid every real one, not only the sample's
    assert alone.codecs[0].fresh["filter"]["count"] == 2000  # type: ignore[index]
    assert encoder.codecs[0].fresh["filter"]["count"] == rows  # type: ignore[index]


def _job(tmp_path: Path, family: str, generate: dict[str, object] | None = None, **train: object) -> Run:
    job = tiny_job(
        "builtin://penguins",
        family,
        str(tmp_path / "out"),
        train={"in_memory_rows": 100, "early_stopping_patience": 3, **train},
        validate={"max_memorised_share": 1.0},
        generate=generate or {},
    )
    return Run(job=job, run_date="2026-02-03")


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots in row groups of 64 rows, and a streamed table's encoder fitted on 150 of them."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 64)
    monkeypatch.setattr(stages, "FIT_SAMPLE_ROWS", 150)
    monkeypatch.setattr(training, "STREAM_BUFFER_ROWS", 128)


@pytest.mark.parametrize("family", ["autoregressive", "diffusion", "vae"])
def test_a_table_of_more_rows_than_in_memory_rows_trains_streamed_through_the_stages(
    tmp_path: Path, small_groups: None, family: str
) -> None:
    model = run_stages(_job(tmp_path, family))
    fit = model.fit
    assert fit["streamed"] and fit["trained_rows"] == fit["training_rows"] == 276  # a fifth held out
    assert fit["validation_loss"] is not None  # early stopping watched streamed validation rows
    published = list((tmp_path / "out" / "tiny").rglob("*.parquet"))
    assert published and pq.read_table(published[0]).num_rows > 0


def test_a_streamed_training_reads_its_row_groups_from_an_s3_workspace(
    tmp_path: Path, small_groups: None, s3_env: dict[str, str]
) -> None:
    """Each buffer is read from the private workspace by range requests, as production's S3."""
    bucket = s3_env["bucket"]
    export = {
        "output": f"s3://{bucket}/streamed",
        "workspace": f"s3://{bucket}/streamed-private",
        "storage_options": S3_OPTIONS,
    }
    job = tiny_job(
        "builtin://penguins",
        "vae",
        export["output"],
        train={"in_memory_rows": 100, "early_stopping_patience": 3},
        validate={"max_memorised_share": 1.0},
        export=export,
    )
    model = run_stages(Run(job=job, run_date="2026-02-03"))
    assert model.fit["streamed"] and model.fit["trained_rows"] == 276


def test_the_gan_trains_streamed_on_every_row_drawing_real_rows_from_each_batch(
    tmp_path: Path, small_groups: None
) -> None:
    model = run_stages(_job(tmp_path, "gan"))
    fit = model.fit
    assert fit["streamed"] and fit["trained_rows"] == fit["training_rows"] == 276
    assert fit["validation_loss"] is None  # the GAN has none: early stopping holds no row out
    published = list((tmp_path / "out" / "tiny").rglob("*.parquet"))
    assert published and pq.read_table(published[0]).num_rows > 0


def test_the_streamed_gan_counts_the_categories_of_every_row_not_the_samples(tmp_path: Path) -> None:
    from genai_pipeline.datasets.base import TabularData
    from genai_pipeline.models.tabular_gan import TabularGAN

    rows = 3000
    colour = ["red", "blue"] * (rows // 2)
    colour[2500:2600] = ["green"] * 100  # past the sample the encoder is fitted on
    table = pa.table({"colour": colour, "size": np.arange(rows, dtype=float)})
    pq.write_table(table, tmp_path / "rows.parquet", row_group_size=500)
    groups = RowGroups.of(Storage(str(tmp_path)), "rows.parquet")
    model = TabularGAN(TabularGAN.Config(pac=1), device=torch.device("cpu"))
    model.fit(
        TabularData(table.slice(0, 2000), None, stream=groups), TrainSpec(epochs=1, batch_size=250), None
    )
    categories = model.encoder.codecs[0].categories or []
    counts = dict(zip(categories, model.sampler.counts[0].tolist(), strict=False))
    assert counts == {"blue": 1450, "green": 100, "red": 1450}


def test_private_training_holds_its_rows_in_memory(tmp_path: Path, small_groups: None) -> None:
    private = _job(tmp_path, "vae", early_stopping_patience=None, privacy={"epsilon": 5.0}, epochs=1)
    model = stages.train(private, dataset=stages.ingest(private))
    assert not model.fit["streamed"] and model.fit["trained_rows"] == 276


@pytest.mark.parametrize("family", ["autoregressive", "gan"])
def test_a_job_with_constraints_trains_streamed_and_every_published_row_follows_them(
    tmp_path: Path, small_groups: None, family: str
) -> None:
    """The rules are fitted on the sample and every row group (``Constraints.fit(every=...)``), and
    rewrite every row group the model reads: the combination learned as one column, the bill's
    length as its distance above its depth."""
    rules = [
        {"kind": "fixed_combinations", "columns": ["island", "sex"]},
        {"kind": "inequality", "low": "bill_depth_mm", "high": "bill_length_mm"},
    ]
    model = run_stages(_job(tmp_path, family, generate={"constraints": rules}))
    assert model.fit["streamed"] and model.fit["trained_rows"] == 276
    files = (tmp_path / "out" / "tiny" / "data").rglob("*.parquet")
    published = pa.concat_tables(pq.read_table(path) for path in files)
    assert published.num_rows > 0
    depth, length = (
        published.column(name).to_numpy(zero_copy_only=False) for name in ("bill_depth_mm", "bill_length_mm")
    )
    assert bool(np.all(np.isnan(depth) | np.isnan(length) | (length >= depth)))
    real = BUILTINS["penguins"].load().select(["island", "sex"]).to_pylist()
    combinations = published.select(["island", "sex"]).to_pylist()
    assert {tuple(row.values()) for row in combinations} <= {tuple(row.values()) for row in real}


def test_a_family_that_cannot_stream_is_refused_rather_than_given_a_sample(tmp_path: Path) -> None:
    from genai_pipeline.datasets.base import TabularData
    from genai_pipeline.models.tabular_gan import TabularGAN

    class HeldGAN(TabularGAN):  # a family (a user's, say) that does not stream
        streams = False

    groups = _staged(tmp_path)
    data = TabularData(groups.read(0), None, stream=groups)
    model = HeldGAN(TabularGAN.Config(), device=torch.device("cpu"))
    with pytest.raises(
        ConfigError, match="train.in_memory_rows: the tabular GAN trains on rows held in memory here"
    ):
        model.fit(data, TrainSpec(epochs=1), None)


def test_validating_a_streamed_run_finds_copies_of_rows_its_sample_does_not_hold(
    tmp_path: Path, small_groups: None
) -> None:
    """Validation judges a streamed run's metrics on the training sample (150 of 276 rows here),
    but copies of real rows are looked for in every row group: an output of real rows from past
    the sample is all copies, and the gate fails."""
    run = _job(tmp_path, "autoregressive")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    workspace = run.workspace()
    groups = RowGroups.of(workspace, dataset.snapshot)
    sample = {json.dumps(row) for row in groups.sample(150, run.job.train.seed).to_pylist()}
    every = pa.concat_tables(groups.each())
    beyond = every.filter(pa.array([json.dumps(row) not in sample for row in every.to_pylist()]))
    storage = run.storage()
    schema = pq.read_schema(storage.path(generated.data_file))
    copies = beyond.select(schema.names).cast(schema).slice(0, 100)
    pq.write_table(copies, storage.path(generated.data_file))
    verdict = stages.validate(
        run, dataset=dataset, generated=replace(generated, num_samples=100), model=model
    )
    shares = {row["metric"]: row["value"] for row in verdict.metrics if row["scope"] == "table"}
    assert shares["new_row_share"] == 0.0  # every row a copy of a real one outside the sample
    assert not verdict.passed
