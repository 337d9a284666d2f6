"""Streaming image output: PNGs encoded and uploaded in a bounded pipeline, the manifest last."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import peak_rss_after_generating, tiny_job
from PIL import Image

from genai_pipeline import generation, stages
from genai_pipeline.errors import ConfigError, StorageError
from genai_pipeline.generation import (
    PlanCounts,
    fair,
    image_batch_size,
    sample_rows,
    sampling_plan,
    shard_plan,
    submit_pngs,
    write_images,
)
from genai_pipeline.models.base import ImageBatch
from genai_pipeline.runs import Run
from genai_pipeline.storage import Storage


def _batches(count: int, size: int = 50) -> list[ImageBatch]:
    rng = np.random.default_rng(0)
    return [
        ImageBatch(
            images=rng.integers(0, 256, (size, 8, 8, 1), dtype=np.uint8),
            labels=np.array(["0", "1", "2"])[np.arange(size) % 3],
        )
        for _ in range(count)
    ]


def test_pngs_are_stored_chunk_by_chunk_on_every_core(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    images = _batches(1, 300)[0].images
    paths = [f"label={i % 4}/{i}.png" for i in range(300)]
    for future in submit_pngs(storage, paths, images, chunk=7):
        future.result()
    decoded = [np.asarray(Image.open(io.BytesIO(storage.read_bytes(path)))) for path in paths]
    assert np.array_equal(np.stack(decoded)[..., None], images)


def test_every_image_is_stored_before_its_manifest(tmp_path: Path) -> None:
    run = Run(job=tiny_job("builtin://digits", "vae", str(tmp_path)), run_date="2026-02-03")
    storage = run.storage()
    assert write_images(_batches(5), storage, run, model_name="test") == 250
    manifest = pq.read_table(tmp_path / "tiny" / run.staged(run.shard_part(0)))
    stored = [storage.read_bytes(run.staged(path)) for path in manifest.column("path").to_pylist()]
    first = np.asarray(Image.open(io.BytesIO(stored[0])))
    assert len(stored) == 250 and np.array_equal(first, _batches(1)[0].images[0, ..., 0])


def test_a_failed_upload_stops_the_shard_and_stages_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = Run(job=tiny_job("builtin://digits", "vae", str(tmp_path)), run_date="2026-02-03")
    uploads: list[int] = []
    real_put = Storage.put_many

    def flaky_put(self: Storage, files: dict[str, bytes]) -> None:
        uploads.append(len(files))
        if len(uploads) == 2:
            raise StorageError("s3://bucket/x: connection reset (simulated)")
        real_put(self, files)

    monkeypatch.setattr(Storage, "put_many", flaky_put)
    sampled: list[int] = []

    def batches():
        for index, batch in enumerate(_batches(20)):
            sampled.append(index)
            yield batch

    with pytest.raises(StorageError, match="connection reset"):
        write_images(batches(), run.storage(), run, model_name="test")
    assert not (tmp_path / "tiny" / run.staged(run.shard_part(0))).exists()
    assert len(sampled) <= 5  # sampling stops within the in-flight bound, not after all 20 batches


@pytest.mark.parametrize(
    ("uri", "batch", "warm", "more"),
    [("builtin://penguins", 4096, 300_000, 2_000_000), ("builtin://mnist", 500, 10_000, 60_000)],
)
def test_memory_stays_flat_for_far_more_samples_than_a_batch(
    tmp_path: Path, uri: str, batch: int, warm: int, more: int
) -> None:
    job = tiny_job(uri, "vae", str(tmp_path), generate={"batch_size": batch})
    first, then = peak_rss_after_generating(job, [warm, more])
    print(f"{uri}: peak RSS {first} MiB after {warm:,} samples, {then} MiB after {more:,} more")
    # as one table the 2M rows would be ~155 MiB; holding 120 small manifests grew RSS by ~500 MiB
    assert then - first < 40, f"peak memory grew {then - first} MiB for {more:,} samples"


def test_a_sampling_plan_is_one_part_or_one_per_label_and_names_known_labels(tmp_path: Path) -> None:
    labels = ["Adelie", "Chinstrap", "Gentoo"]
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"conditions": {"island": "Dream"}})
    assert sampling_plan(job, labels) == [({"island": "Dream"}, 120)]
    per_label = tiny_job(
        "builtin://penguins", "vae", str(tmp_path), generate={"per_label": {"Gentoo": 5, "Adelie": 0}}
    )
    assert sampling_plan(per_label, labels) == [({"species": "Gentoo"}, 5)]
    every = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"per_label": 2})
    assert [count for _, count in sampling_plan(every, labels)] == [2, 2, 2]
    with pytest.raises(ConfigError, match="generate.per_label.Dodo: 'Dodo' does not occur in the data"):
        sampling_plan(
            tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"per_label": {"Dodo": 1}}), labels
        )
    with pytest.raises(ConfigError, match="generate.per_label: the dataset has no label"):
        sampling_plan(every, [])
    with pytest.raises(ConfigError, match="generate.per_label: the label has over 1000 values"):
        sampling_plan(every, None)  # the schema lists no more than that


def test_a_rebalanced_plan_gives_each_value_named_its_share_and_the_rest_their_real_proportions(
    tmp_path: Path,
) -> None:
    real = {"Biscoe": 168, "Dream": 124, "Torgersen": 52}

    def plan(shares: dict, **generate: object) -> list:
        job = tiny_job(
            "builtin://penguins",
            "vae",
            str(tmp_path),
            generate={"num_samples": 1001, "rebalance": {"island": shares}, **generate},
        )
        return sampling_plan(job, ["Adelie"], PlanCounts({"island": real}))

    parts = plan({"Torgersen": 0.3}, conditions={"sex": "female"})
    assert parts == [
        ({"sex": "female", "island": "Torgersen"}, 300),
        ({"sex": "female", "island": "Biscoe"}, 403),  # 70% as 168 : 124
        ({"sex": "female", "island": "Dream"}, 298),
    ]
    assert sum(count for _, count in plan({"Dream": 0.25, "Biscoe": 0.75})) == 1001
    assert [part[0]["island"] for part in plan({"Dream": 0.25, "Biscoe": 0.75})] == ["Dream", "Biscoe"]
    with pytest.raises(ConfigError, match="generate.rebalance.island.Atlantis: 'Atlantis' does not occur"):
        plan({"Atlantis": 0.5})
    with pytest.raises(ConfigError, match="the shares leave 50% to other values, and there are none"):
        sampling_plan(
            tiny_job("builtin://penguins", "vae", "out", generate={"rebalance": {"island": {"Dream": 0.5}}}),
            [],
            PlanCounts({"island": {"Dream": 3}}),
        )
    years = tiny_job("builtin://penguins", "vae", "out", generate={"rebalance": {"year": {"2009": 0.5}}})
    assert sampling_plan(years, [], PlanCounts({"year": {2007: 10, 2008: 10, 2009: 10}}))[0] == (
        {"year": 2009},
        60,
    )  # as the column has it
    for generate, message in (
        (
            {"rebalance": {"island": {"Dream": 1.5}}},
            "rebalance: island.Dream: a share is above 0 and at most 1",
        ),
        ({"rebalance": {"island": {"Dream": 0.7, "Biscoe": 0.6}}}, "the shares add up to 1.3, more than 1"),
        ({"rebalance": {"island": {"Dream": 0.5}, "sex": {"male": 0.5}}}, "one column at a time"),
        (
            {"rebalance": {"island": {"Dream": 0.5}}, "conditions": {"island": "Dream"}},
            "fixed by generate.conditions",
        ),
        ({"rebalance": {"species": {"Adelie": 0.5}}, "per_label": 3}, "give shares (rebalance) or counts"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            tiny_job("builtin://penguins", "vae", "out", generate=generate)


def test_a_fair_plan_draws_every_group_with_the_targets_overall_distribution(tmp_path: Path) -> None:
    groups = [(("female", "A"), 300), (("male", "A"), 600), (("male", "B"), 100)]
    plan = fair({"island": "Dream"}, 1000, "income", ["sex", "race"], groups, {"low": 750, "high": 250})
    assert sum(count for _, count in plan) == 1000
    counts = {(part["sex"], part["race"], part["income"]): count for part, count in plan}
    assert counts == {
        ("female", "A", "low"): 225,
        ("female", "A", "high"): 75,
        ("male", "A", "low"): 450,
        ("male", "A", "high"): 150,
        ("male", "B", "low"): 75,
        ("male", "B", "high"): 25,
    }  # each group as in the real rows, a quarter "high" in each
    assert all(part["island"] == "Dream" for part, _ in plan)
    many = [((str(i),), 1) for i in range(5001)]
    with pytest.raises(ConfigError, match="more than 10,000 parts to draw"):
        fair({}, 10, "income", ["id"], many, {"low": 1, "high": 1})
    for generate, message in (
        ({"fairness": {"target": "sex", "sensitive": ["sex"]}}, "sensitive: sex is the target"),
        ({"fairness": {"target": "species", "sensitive": ["sex"]}, "per_label": 3}, "not with per_label"),
        (
            {"fairness": {"target": "species", "sensitive": ["sex"]}, "conditions": {"sex": "male"}},
            "sex is fixed",
        ),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            tiny_job("builtin://penguins", "vae", "out", generate=generate)


def test_images_are_conditioned_by_label_whatever_the_label_column_is_called(tmp_path: Path) -> None:
    job = tiny_job("builtin://digits", "gan", str(tmp_path), generate={"conditions": {"label": 7}})
    assert sampling_plan(job, [str(i) for i in range(10)]) == [({"label": 7}, 120)]
    with pytest.raises(ConfigError, match="generate.conditions.label: 12 does not occur in the data"):
        sampling_plan(
            job.model_copy(
                update={"generate": job.generate.model_copy(update={"conditions": {"label": 12}})}
            ),
            ["7"],
        )


def test_shards_split_every_part_of_the_plan_with_seeds_of_their_own(tmp_path: Path) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"per_label": 5, "shards": 2})
    labels = ["Adelie", "Gentoo"]
    first, second = shard_plan(job, labels, 0), shard_plan(job, labels, 1)
    assert [count for _, count, _, _ in first] == [3, 3] and [count for _, count, _, _ in second] == [2, 2]
    assert len({seed for _, _, seed, _ in first + second}) == 4
    assert shard_plan(job, labels, 0) == first  # reproducible on its own
    # each part is the run's rows 0-4 and 5-9, shard 0 taking the first three of each: the rows the
    # columns made fresh (identifiers) are made for, so that no two shards repeat one
    assert [(rows.first, rows.total) for *_, rows in first] == [(0, 10), (5, 10)]
    assert [(rows.first, rows.total) for *_, rows in second] == [(3, 10), (8, 10)]


def test_validation_samples_rows_from_the_whole_output_not_just_its_start(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    for shard, label in enumerate("ABC"):  # as a per-label plan writes them: one label after another
        table = pa.table({"label": [label] * 300, "n": range(shard * 300, shard * 300 + 300)})
        pq.write_table(table, tmp_path / f"part-{shard:05d}.parquet", row_group_size=100)
    parts = [f"part-{shard:05d}.parquet" for shard in range(3)]
    sample = sample_rows(storage, parts, limit=90, seed=1)
    assert sample.num_rows == 90 and set(sample.column("label").to_pylist()) == {"A", "B", "C"}
    numbers = sample.column("n").to_pylist()
    assert numbers == sorted(numbers) and len(set(numbers)) == 90  # output order, no repeats
    assert sample_rows(storage, parts, limit=90, seed=1).equals(sample)
    assert sample_rows(storage, parts, limit=5000, seed=1).num_rows == 900


def test_shards_in_one_process_share_one_loaded_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tiny_job("builtin://penguins", "vae", str(tmp_path), generate={"num_samples": 90, "shards": 3})
    run = Run(job=job, run_date="2026-02-03")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    loads: list[str] = []
    real_load = generation.load_model
    monkeypatch.setattr(generation, "load_model", lambda *args: loads.append(args[1]) or real_load(*args))
    assert stages.generate(run, model=model, dataset=dataset).num_samples == 90
    assert loads == [model.uri]  # once for the three shards (on a GPU: one copy in its memory)


def test_an_image_batch_too_large_for_memory_is_clipped_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert image_batch_size(500, (28, 28, 1), max_mb=1024) == 500  # digits: as asked
    with caplog.at_level("WARNING", logger="genai_pipeline.generation"):
        clipped = image_batch_size(100_000, (512, 512, 3), max_mb=1024)
    assert clipped == 273  # 1 GiB / (512·512·3 pixels × 5 bytes)
    assert "generate.batch_size: 100000 images of 512×512×3 would take 375000 MiB" in caplog.text
    with caplog.at_level("WARNING", logger="genai_pipeline.generation"):  # validation decodes its sample too
        assert image_batch_size(100_000, (512, 512, 3), max_mb=1024, field="validate.sample_rows") == 273
    assert "validate.sample_rows: 100000 images of 512×512×3" in caplog.text
