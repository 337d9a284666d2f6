"""The contract every model honours; each model's test module subclasses :class:`ModelContract`.

A subclass sets ``modality``, ``family``, small ``params``, a ``condition`` (key, value) and a
``data`` fixture with a small dataset; the tests here are then run for that model.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import Dataset, TabularData
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import ImageBatch, Synthesizer, load_model, model_class
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
