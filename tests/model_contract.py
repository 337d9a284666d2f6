"""The contract every model honours; each model's test module subclasses :class:`TableContract`
or :class:`ImageContract` (both :class:`ModelContract`).

A subclass sets ``family`` and small ``params``; tables are tested on the penguins (conditioned on
their species), images on 300 digits (on label 3), and the tests here are then run for that model.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from orders_data import orders, rules

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS, Dataset, ImageData, TabularData
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import ImageBatch, Synthesizer, load_model, model_class
from genai_pipeline.models.tabular import TabularSynthesizer
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore

CPU = torch.device("cpu")


class ModelContract:
    """Subclasses set the model and a small dataset; the tests are shared."""

    modality: ClassVar[str]
    family: ClassVar[str]
    params: ClassVar[dict]
    condition: ClassVar[tuple[str, object]]

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        raise NotImplementedError

    @classmethod
    def make(cls) -> Synthesizer:
        model_cls = model_class(cls.modality, cls.family)
        return model_cls(model_cls.Config.model_validate(cls.params), device=CPU)

    @pytest.fixture(scope="class")
    @classmethod
    def fitted(cls, data: Dataset) -> Synthesizer:
        model = cls.make()
        report = model.fit(data, TrainSpec(epochs=2, batch_size=64, device="cpu", seed=1), None)
        assert report.steps > 0 and all(np.isfinite(v) for v in report.losses.values())
        return model

    def _collect(self, model: Synthesizer, n: int, seed: int, **conditions) -> list:
        return list(model.sample(n, conditions=conditions, seed=seed, batch_size=7))

    def _labels(self, batches: list) -> list:
        key = self.condition[0]
        if isinstance(batches[0], ImageBatch):
            return [label for batch in batches for label in batch.labels.tolist()]
        return [value for batch in batches for value in batch.column(key).to_pylist()]

    def _same(self, a: list, b: list) -> bool:
        if isinstance(a[0], ImageBatch):
            return all(np.array_equal(x.images, y.images) for x, y in zip(a, b, strict=True))
        return all(x.equals(y) for x, y in zip(a, b, strict=True))

    def test_samples_stream_in_batches(self, fitted: Synthesizer, data: Dataset) -> None:
        batches = self._collect(fitted, 20, seed=0)
        assert [len(b.images) if isinstance(b, ImageBatch) else b.num_rows for b in batches] == [7, 7, 6]
        if isinstance(data, TabularData):
            assert all(batch.schema.equals(data.table.schema) for batch in batches)
        else:
            assert all(
                batch.images.dtype == np.uint8 and batch.images.shape[1:] == data.shape for batch in batches
            )

    def test_same_seed_same_samples(self, fitted: Synthesizer) -> None:
        assert self._same(self._collect(fitted, 15, seed=4), self._collect(fitted, 15, seed=4))
        assert not self._same(self._collect(fitted, 15, seed=4), self._collect(fitted, 15, seed=5))

    def test_same_job_and_seed_train_the_same_model(self, fitted: Synthesizer, data: Dataset) -> None:
        again = self.make()
        again.fit(data, TrainSpec(epochs=2, batch_size=64, device="cpu", seed=1), None)
        assert self._same(self._collect(again, 15, seed=3), self._collect(fitted, 15, seed=3))

    def test_conditions_are_exact(self, fitted: Synthesizer) -> None:
        key, value = self.condition
        assert set(map(str, self._labels(self._collect(fitted, 30, seed=0, **{key: value})))) == {str(value)}

    def test_bad_conditions_name_the_field(self, fitted: Synthesizer) -> None:
        key, _ = self.condition
        with pytest.raises(
            ConfigError, match=f"generate.conditions.{key}: 'no-such-value' is not a known value"
        ):
            self._collect(fitted, 3, seed=0, **{key: "no-such-value"})
        with pytest.raises(ConfigError, match="generate.conditions.nope"):
            self._collect(fitted, 3, seed=0, nope=1)

    def test_an_impossible_plan_fails_before_training_as_the_model_would(
        self, fitted: Synthesizer, data: Dataset
    ) -> None:
        """``check_plan`` sees the data only, and refuses what the trained model refuses, in its words."""
        model_cls = model_class(self.modality, self.family)
        config = model_cls.Config.model_validate(self.params)
        key, value = self.condition
        model_cls.check_plan(data, config, [{}, {key: value}])  # a plan the model can meet
        for bad in ({key: "no-such-value"}, {"nope": 1}):
            with pytest.raises(ConfigError) as before:
                model_cls.check_plan(data, config, [{key: value}, bad])
            with pytest.raises(ConfigError) as after:
                self._collect(fitted, 3, seed=0, **bad)
            assert str(before.value) == str(after.value)

    def test_save_and_load_round_trip(self, fitted: Synthesizer, tmp_path: Path) -> None:
        storage = Storage(str(tmp_path))
        fitted.save(storage, "model")
        assert sorted(storage.list_files("model")) == ["model/model.json", "model/weights.safetensors"]
        loaded = load_model(storage, "model", CPU)
        assert type(loaded) is type(fitted)
        assert self._same(self._collect(loaded, 15, seed=2), self._collect(fitted, 15, seed=2))

    def test_training_resumes_from_its_checkpoint(self, data: Dataset, tmp_path: Path) -> None:
        store = CheckpointStore(Storage(str(tmp_path)), "ckpt")
        first = self.make().fit(
            data, TrainSpec(epochs=1, batch_size=64, device="cpu", seed=1, checkpoint_every=3), store
        )
        resumed = self.make().fit(
            data, TrainSpec(epochs=2, batch_size=64, device="cpu", seed=1, checkpoint_every=3), store
        )
        per_epoch = first.steps
        assert resumed.resumed_from_step == per_epoch - per_epoch % 3
        assert resumed.steps == 2 * per_epoch


class TableContract(ModelContract):
    """The contract for table models: every column type, and conditions on any columns."""

    modality = "tabular"
    condition = ("species", "Gentoo")

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        return TabularData(BUILTINS["penguins"].load(), label="species")

    @pytest.fixture(scope="class")
    @classmethod
    def mixed(cls) -> Synthesizer:
        """The model fitted on :func:`mixed_table`, labelled by its ``kind`` column."""
        model = cls.make()
        train = TrainSpec(epochs=2, batch_size=32, device="cpu")
        model.fit(TabularData(mixed_table(), label="kind"), train, None)
        return model

    @pytest.fixture(scope="class")
    @classmethod
    def constrained(cls) -> Synthesizer:
        """The model fitted on the orders table under one rule of each kind it enforces."""
        model = cls.make()
        model.fit(
            TabularData(orders(), constraints=rules()), TrainSpec(epochs=2, batch_size=64, device="cpu"), None
        )
        return model

    def test_constraints_hold_in_every_row_with_and_without_conditions(
        self, constrained: Synthesizer, tmp_path: Path
    ) -> None:
        assert isinstance(constrained, TabularSynthesizer)
        drawn = pa.concat_tables(constrained.sample(1500, conditions=None, seed=4, batch_size=500))
        assert drawn.schema.equals(orders().schema)
        assert not any(constrained.constraints.violations(drawn).values())
        asked = {"city": "Berlin", "ordered_at": "2024-05-01 08:00:00", "shipped_on": "2024-05-03"}
        drawn = pa.concat_tables(constrained.sample(200, conditions=asked, seed=4, batch_size=500))
        assert set(drawn.column("country").to_pylist()) == {"DE"}
        assert set(drawn.column("shipped_on").to_pylist()) == {dt.date(2024, 5, 3)}
        assert not any(constrained.constraints.violations(drawn).values())
        constrained.save(Storage(str(tmp_path)), "model")  # the rules come back with the model
        saved = load_model(Storage(str(tmp_path)), "model", CPU)
        again = pa.concat_tables(saved.sample(300, conditions=None, seed=5, batch_size=300))
        assert again.equals(
            pa.concat_tables(constrained.sample(300, conditions=None, seed=5, batch_size=300))
        )

    def test_imputed_columns_are_never_drawn_null(self, fitted: Synthesizer) -> None:
        drawn = pa.concat_tables(
            fitted.sample(
                600, conditions={"island": "Dream"}, seed=2, batch_size=250, impute=["sex", "bill_length_mm"]
            )
        )
        assert drawn.column("sex").null_count == drawn.column("bill_length_mm").null_count == 0
        assert set(drawn.column("island").to_pylist()) == {"Dream"}
        assert set(drawn.column("sex").to_pylist()) <= {"female", "male"}

    def test_seed_rows_are_completed_keeping_what_they_give(self, fitted: Synthesizer, data: Dataset) -> None:
        assert isinstance(fitted, TabularSynthesizer) and isinstance(data, TabularData)
        given = data.table.select(["species", "island", "bill_length_mm", "sex"]).slice(0, 60)
        rng = np.random.default_rng(0)
        hidden = {name: rng.random(60) < 0.4 for name in given.column_names}
        seeds = pa.table(
            {
                name: pc.if_else(
                    pa.array(hidden[name]), pa.scalar(None, given.column(name).type), given.column(name)
                )
                for name in given.column_names
            }
        )
        if not fitted.completes_rows:
            with pytest.raises(ConfigError, match="cannot complete rows"):
                fitted.check_seeds(fitted.encoder, seeds.column_names)
            return
        fitted.check_seeds(fitted.encoder, seeds.column_names)
        done = fitted.fill_in(seeds, seed=1, rows=RowStream(1, 0, 60))
        assert done.schema.equals(data.table.schema) and done.num_rows == 60
        for name in seeds.column_names:  # what a seed row gives comes back as it is, in its row
            for wanted, got in zip(
                seeds.column(name).to_pylist(), done.column(name).to_pylist(), strict=True
            ):
                assert wanted is None or wanted == got, name
        assert done.column("species").null_count == 0  # a label not given is drawn
        again = fitted.fill_in(seeds, seed=1, rows=RowStream(1, 0, 60))
        assert again.equals(done)  # seeded
        # a label not given is drawn given the row: Torgersen's penguins are all Adelie
        torgersen = pa.table({"island": ["Torgersen"] * 200})
        species = fitted.fill_in(torgersen, seed=2, rows=RowStream(2, 0, 200)).column("species").to_pylist()
        assert species.count("Adelie") > 180
        # generate.impute with seed rows: a column the rows leave to the model never comes out null
        kept = fitted.fill_in(torgersen, seed=3, rows=RowStream(3, 0, 200), impute=["sex", "bill_length_mm"])
        assert kept.column("sex").null_count == kept.column("bill_length_mm").null_count == 0

    def test_tables_keep_types_nulls_and_categories(self, mixed: Synthesizer) -> None:
        """Every column type a real table holds comes back with its type, nulls and categories."""
        table = mixed_table()
        (batch,) = mixed.sample(300, conditions=None, seed=0, batch_size=300)
        assert batch.schema.equals(table.schema)
        assert batch.column("empty").null_count == 300
        assert 0 < batch.column("score").null_count < 300  # the real column is 20% null
        for name in ("flag", "small", "day"):
            assert set(batch.column(name).to_pylist()) <= set(table.column(name).to_pylist()), name
        # the category one row holds is protected: it comes out as the token, never as itself
        assert set(batch.column("kind").to_pylist()) <= {"alpha", "beta", "gamma", "_RARE_"}
        low, high = pc.min_max(table.column("when")).values()
        assert pc.all(pc.greater_equal(batch.column("when").drop_null(), low)).as_py()
        assert pc.all(pc.less_equal(batch.column("when").drop_null(), high)).as_py()

    def test_any_columns_can_be_conditioned_on_exactly(self, mixed: Synthesizer) -> None:
        """Values of any type, given as a job spec gives them, come back exactly, in the column's type."""
        conditions = {"flag": True, "small": 2, "score": 55.5, "day": "2024-01-05", "kind": "beta"}
        batches = list(mixed.sample(20, conditions=conditions, seed=0, batch_size=8))
        assert all(batch.schema.equals(mixed_table().schema) for batch in batches)
        rows = pa.concat_tables(batches)
        assert rows.column("flag").to_pylist() == [True] * 20
        assert rows.column("small").to_pylist() == [2] * 20
        assert rows.column("score").to_pylist() == [55.5] * 20
        assert rows.column("day").to_pylist() == [dt.date(2024, 1, 5)] * 20
        assert rows.column("kind").to_pylist() == ["beta"] * 20
        (nulls,) = mixed.sample(5, conditions={"score": None}, seed=0, batch_size=5)
        assert nulls.column("score").null_count == 5

    @pytest.mark.parametrize(
        ("conditions", "message"),
        [
            ({"small": 9}, "generate.conditions.small: 9 is not a known value"),
            ({"score": 1e6}, "generate.conditions.score: 1000000.0 is outside the range the model saw"),
            ({"day": "soon"}, "generate.conditions.day: 'soon' cannot be read as date32"),
            ({"count": None}, "generate.conditions.count: the column has no nulls"),
        ],
    )
    def test_impossible_column_conditions_name_the_field(
        self, mixed: Synthesizer, conditions: dict, message: str
    ) -> None:
        with pytest.raises(ConfigError, match=message):
            list(mixed.sample(3, conditions=conditions, seed=0, batch_size=3))
        with pytest.raises(ConfigError, match=message):  # and before training, from the data alone
            type(mixed).check_plan(TabularData(mixed_table(), label="kind"), mixed.config, [conditions])

    def test_conditioned_columns_shift_the_others(self) -> None:
        """Fixing one column moves the columns that depend on it: learned, not only overwritten."""
        rng = np.random.default_rng(0)
        group = rng.random(600) < 0.5
        table = pa.table(
            {
                "group": np.where(group, "y", "x"),
                "tag": np.where(group ^ (rng.random(600) < 0.05), "Y", "X"),
                "value": rng.normal(size=600) + 4 * group,
            }
        )
        model_cls = model_class(self.modality, self.family)
        model = model_cls(
            model_cls.Config(), device=CPU
        )  # the defaults: the tiny test models learn too little
        model.fit(TabularData(table), TrainSpec(epochs=30, batch_size=64, device="cpu"), None)
        shares, means = [], []
        for tag in ("Y", "X"):
            (batch,) = model.sample(1000, conditions={"tag": tag}, seed=0, batch_size=1000)
            shares.append(np.mean(np.asarray(batch.column("group").to_pylist()) == "y"))
            means.append(np.mean(batch.column("value").to_numpy()))
        # in the real table: 95% against 5%, and 4 apart
        assert shares[0] - shares[1] > 0.3, shares
        assert means[0] - means[1] > 0.5, means


class ImageContract(ModelContract):
    """The contract for image models, on 300 of scikit-learn's 8×8 digits."""

    modality = "image"
    condition = ("label", "3")
    #: an upper bound on the held-out loss after a few steps (None: the family has no held-out loss)
    held_out_bound: ClassVar[float | None] = math.inf

    @pytest.fixture(scope="class")
    @classmethod
    def data(cls) -> Dataset:
        images, labels = BUILTINS["digits"].load()
        return ImageData(images=images[:300], labels=labels[:300])

    def test_any_size_and_colour_images(self) -> None:
        rng = np.random.default_rng(0)
        data = ImageData(images=rng.integers(0, 256, (60, 10, 13, 3), dtype=np.uint8), labels=["a", "b"] * 30)
        model = self.make()
        report = model.fit(data, TrainSpec(epochs=1, batch_size=20, device="cpu"), None)
        assert report.steps == 3
        batches = list(model.sample(9, conditions={"label": "b"}, seed=0, batch_size=5))
        assert [b.images.shape for b in batches] == [(5, 10, 13, 3), (4, 10, 13, 3)]
        assert all(b.images.dtype == np.uint8 and set(b.labels) == {"b"} for b in batches)

    def test_early_stopping_reads_a_held_out_loss(self) -> None:
        if self.held_out_bound is None:
            pytest.skip("no held-out loss")
        images, labels = BUILTINS["digits"].load()
        train = TrainSpec(epochs=3, batch_size=50, device="cpu", early_stopping_patience=5)
        report = self.make().fit(ImageData(images=images[:200], labels=labels[:200]), train, None)
        # 10% held out: 180 training images give 3 steps an epoch
        assert report.steps == 9
        assert report.validation_loss is not None and 0 < report.validation_loss < self.held_out_bound


def mixed_table(rows: int = 240) -> pa.Table:
    """Integers, floats with nulls, strings (dictionary-encoded), booleans with nulls, a rare
    category, dates, time stamps with a zone, decimals and an all-null column."""
    rng = np.random.default_rng(0)
    kinds = rng.choice(["alpha", "beta", "gamma"], size=rows, p=[0.5, 0.3, 0.2]).tolist()
    kinds[0] = "rare one"
    score = rng.normal(50, 10, size=rows)
    return pa.table(
        {
            "kind": pa.array(kinds).dictionary_encode(),
            "score": pa.array(score, mask=rng.random(rows) < 0.2),
            "count": pa.array(rng.poisson(30, size=rows), pa.int32()),
            "small": pa.array(rng.integers(0, 4, size=rows), pa.int8()),
            "flag": pa.array(rng.random(rows) < 0.3, mask=rng.random(rows) < 0.1),
            "day": pa.array([dt.date(2024, 1, 1 + i % 28) for i in range(rows)]),
            "when": pa.array(
                [
                    dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(hours=int(h))
                    for h in rng.integers(0, 24 * 90, size=rows)
                ],
                pa.timestamp("us", tz="UTC"),
            ),
            "price": pa.array(
                [decimal.Decimal(f"{v:.2f}") for v in rng.uniform(1, 99, size=rows)], pa.decimal128(6, 2)
            ),
            "empty": pa.nulls(rows, pa.float64()),
        }
    )
