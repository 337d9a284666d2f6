"""The tabular GAN against the shared model contract, and its training-by-sampling parts."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest
import torch
from model_contract import CPU, TableContract

from genai_pipeline.config import TrainSpec
from genai_pipeline.datasets import BUILTINS, TabularData
from genai_pipeline.encoders.tabular import Span, TableEncoder
from genai_pipeline.errors import ConfigError
from genai_pipeline.models.tabular_gan import CategorySampler, RowIndex, TabularGAN, TabularGANConfig

TINY: dict = {"noise_dim": 8, "generator_dims": [16], "critic_dims": [16], "pac": 4}


class TestTabularGAN(TableContract):
    family = "gan"
    params: ClassVar[dict] = TINY


def labelled_sampler() -> tuple[CategorySampler, torch.Tensor, torch.Tensor, TableEncoder]:
    """Label "a" rows are colour red or blue, label "b" rows always green; green is rare."""
    table = pa.table(
        {
            "label": ["a"] * 90 + ["b"] * 10,
            "colour": ["red"] * 60 + ["blue"] * 30 + ["green"] * 10,
            "x": np.linspace(0, 1, 100),
        }
    )
    encoder = TableEncoder.fit(table, condition="label")
    x, labels = (torch.from_numpy(array) for array in encoder.encode(table))
    sampler = CategorySampler(encoder.spans, len(encoder.condition_values))
    sampler.fit([(x, labels)])
    return sampler, x, labels, encoder


def test_training_conditions_favour_rare_categories_and_meet_real_rows() -> None:
    sampler, x, _, _ = labelled_sampler()
    assert sampler.counts.tolist() == [[30, 0, 60], [0, 10, 0]]  # rows: labels; columns: blue, green, red
    torch.manual_seed(0)
    drawn = sampler.draw_for_training(30_000)
    share = torch.bincount(drawn, minlength=3).float() / len(drawn)
    expected = torch.log1p(torch.tensor([30.0, 10.0, 60.0]))
    assert torch.allclose(share, expected / expected.sum(), atol=0.01)  # log-frequency, not 10 %
    rows = RowIndex(sampler, x, None).draw(drawn, len(drawn))
    assert torch.equal(x[rows][torch.arange(len(drawn)), sampler.columns[drawn]], torch.ones(len(drawn)))
    assert len(torch.unique(rows)) == 100  # every row that has its condition is drawn


def test_a_batch_gives_training_by_sampling_only_conditions_its_rows_hold() -> None:
    """Where rows are streamed, a step draws its real rows from its batch (issue 19)."""
    sampler = CategorySampler([Span("a", "softmax", 3), Span("b", "softmax", 2)], num_labels=0)
    every = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.float32)
    sampler.fit([(every, None)])
    batch = every[[0, 0, 1]]  # the third category of the first span is not in it
    rows = RowIndex(sampler, batch, None)
    assert rows.present.tolist() == [True, True, False, True, True]
    torch.manual_seed(0)
    condition = sampler.draw_for_training(2000, rows.present)
    assert condition is not None and set(condition.tolist()) == {0, 1, 3, 4}
    picked = rows.draw(condition, 2000)
    assert bool((sampler.categories(batch[picked]) == condition[:, None]).any(dim=1).all())
    unmasked = sampler.draw_for_training(2000)  # all the rows': every category
    assert unmasked is not None and set(unmasked.tolist()) == {0, 1, 2, 3, 4}


def test_sampling_conditions_never_ask_for_a_banned_category() -> None:
    # generate.impute bans a column's null; the sampler's condition must not ask the generator for
    # it (here: banning red, the most frequent of label "a")
    sampler, _, _, encoder = labelled_sampler()
    banned = torch.zeros(encoder.width, dtype=torch.bool)
    banned[sampler.columns[2]] = True  # red
    drawn = sampler.draw(torch.zeros(2000, dtype=torch.long), 2000, torch.Generator().manual_seed(0), banned)
    assert set(drawn.tolist()) == {0}  # blue only: label "a" rows are red or blue


def test_sampling_conditions_follow_the_label() -> None:
    sampler, *_ = labelled_sampler()
    generator = torch.Generator().manual_seed(0)
    for_b = sampler.draw(torch.ones(500, dtype=torch.long), 500, generator)
    assert set(for_b.tolist()) == {1}  # label "b" rows are all green
    for_a = sampler.draw(torch.zeros(3000, dtype=torch.long), 3000, generator)
    assert set(for_a.tolist()) == {0, 2} and 0.6 < (for_a == 2).float().mean() < 0.73


def test_unconditioned_without_label_or_categories() -> None:
    """A table of numbers only: no label, no discrete spans, so rows are drawn uniformly."""
    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.normal(size=200), "y": rng.exponential(size=200)})
    model = TabularGAN(TabularGANConfig.model_validate(TINY), device=CPU)
    model.fit(TabularData(table), TrainSpec(epochs=1, batch_size=40, device="cpu"), None)
    assert model.sampler.width == 0
    (batch,) = model.sample(10, conditions=None, seed=0, batch_size=10)
    assert batch.schema.equals(table.schema) and batch.column("x").null_count == 0


def test_batches_smaller_than_pac_are_a_config_error() -> None:
    model = TabularGAN(TabularGANConfig.model_validate(TINY | {"pac": 10}), device=CPU)
    data = TabularData(BUILTINS["penguins"].load(), label="species")
    with pytest.raises(ConfigError, match="train.batch_size: .* pac=10"):
        model.fit(data, TrainSpec(epochs=1, batch_size=8, device="cpu"), None)
