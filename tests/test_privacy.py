"""Privacy by construction and by budget: column roles, the private workspace, differential privacy
through training, the spent ε in what a run publishes and gates on."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_job, workspace_for

from genai_pipeline import stages
from genai_pipeline.config import ColumnSpec, TrainSpec
from genai_pipeline.datasets import BUILTINS, ImageData, TabularData
from genai_pipeline.errors import DatasetError
from genai_pipeline.models import model_class
from genai_pipeline.models.tabular import LabelPrior, fit_encoder
from genai_pipeline.privacy.dp import StatisticsBudget
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.quality.tabular import new_row_share
from genai_pipeline.runs import Run
from genai_pipeline.storage import Storage
from genai_pipeline.summary import summary_markdown
from genai_pipeline.training import CheckpointStore

CPU = torch.device("cpu")


def _people(rows: int = 400) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "order_id": [f"C{i:06d}" for i in range(rows)],
            "customer_id": [f"K{i % 150:05d}" for i in range(rows)],  # repeated: a customer's orders
            "contact": [f"person{i}@mail.example" for i in range(rows)],
            "note": [f"the parcel number {i} arrived late and the box was open" for i in range(rows)],
            "store_id": rng.integers(1, 6, rows),  # named like an id, five values: a category
            "amount": rng.normal(100, 20, rows),
            "code": [f"X{i}" for i in rng.integers(0, 4, rows)],
        }
    )


def test_identifiers_personal_data_and_text_are_recognised_and_declarations_win() -> None:
    roles = column_roles(_people(), {}, label=None)
    assert {name: role.role for name, role in roles.items()} == {
        "order_id": "id",
        "customer_id": "id",
        "contact": "pii",
        "note": "text",
    }
    assert roles["contact"].kind == "email"
    declared = {"code": ColumnSpec(type="id"), "contact": ColumnSpec(type="category")}
    roles = column_roles(_people(), declared, label=None)
    assert roles["code"].role == "id" and roles["contact"].role == "category" and roles["contact"].declared
    assert "order_id" not in column_roles(_people(), {}, label="order_id")  # the label is learned
    with pytest.raises(DatasetError, match=r"dataset.columns.nope: no such column"):
        column_roles(_people(), {"nope": ColumnSpec(type="id")}, label=None)
    with pytest.raises(DatasetError, match=r"dataset.columns.amount: type pii takes a text column"):
        column_roles(_people(), {"amount": ColumnSpec(type="pii", kind="email")}, label=None)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"x": {"type": "id", "kind": "email"}}, "kind and locale are for type: pii"),
        ({"x": {"type": "pii", "kind": "shoe_size"}}, "'shoe_size' is not a kind of personal data"),
        ({"x": {"type": "pii", "locale": "xx_YY"}}, "'xx_YY' is not a Faker locale"),
        ({"species": {"type": "id"}}, "columns.species: the label column is learned, it cannot be id"),
    ],
)
def test_bad_column_declarations_name_the_field(columns: dict[str, Any], message: str) -> None:
    from conftest import spec_error

    error = spec_error(
        {
            "name": "j",
            "dataset": {"uri": "builtin://penguins", "columns": columns},
            "model": {"family": "vae"},
        }
    )
    assert message in error and error.startswith("job.yaml: dataset")


def test_new_row_share_sees_copies_whatever_the_nulls_did_to_integer_columns() -> None:
    """An integer column with nulls on one side went to float64 through pandas and int64 on the
    other, so copies hashed apart and a model that copied its training rows passed min_new_rows."""
    penguins = BUILTINS["penguins"].load()
    dream = penguins.filter(pc.equal(penguins.column("island"), "Dream"))  # no nulls in its masses
    assert dream.column("body_mass_g").null_count == 0 < penguins.column("body_mass_g").null_count
    assert new_row_share(penguins, dream) == 0.0


def test_a_job_of_the_previous_layout_has_its_real_data_removed_from_the_output(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Earlier versions kept the source cache and the models (whose files held real values) in the
    output readers are granted: the first publish removes them."""
    job = tiny_job("builtin://penguins", "vae", str(tmp_path))
    old = Storage(str(tmp_path / "tiny"))
    old.write_bytes("datasets/source-0123.parquet", b"real rows")
    old.write_bytes("models/abc/model.json", b'{"categories": ["a real value"]}')
    run = Run(job=job, run_date="2026-04-01")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    verdict = stages.validate(run, dataset=dataset, generated=generated, model=model)
    with caplog.at_level(logging.WARNING):
        stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    assert not (tmp_path / "tiny" / "datasets").exists() and not (tmp_path / "tiny" / "models").exists()
    assert "earlier versions kept real data there" in caplog.text
    assert (Path(workspace_for(str(tmp_path))) / "tiny" / model.uri / "model.json").exists()


# -- differential privacy -------------------------------------------------------------------------

TABLE_FAMILIES = ["gan", "vae", "diffusion", "autoregressive"]


def _small(family: str) -> dict[str, Any]:
    from conftest import TINY_MODELS

    return TINY_MODELS[("tabular", family)]


def _adultish(rows: int = 3000) -> pa.Table:
    """A table big enough for DP statistics to keep something (categories of hundreds of rows)."""
    rng = np.random.default_rng(1)
    group = rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2])
    age = np.round(rng.normal(40, 10, rows)).astype(np.int64)
    income = np.where(age > 45, "high", "low")
    table = pa.table({"group": group, "age": age, "score": rng.normal(size=rows), "income": income})
    rare = table.slice(0, 3).set_column(0, "group", pa.array(["rare-group-zz"] * 3))
    return pa.concat_tables([table, rare])


@pytest.mark.parametrize("family", TABLE_FAMILIES)
def test_every_table_family_trains_within_its_budget_and_releases_no_rare_value(family: str) -> None:
    cls = model_class("tabular", family)
    model = cls(cls.Config.model_validate(_small(family)), device=CPU)
    train = TrainSpec(epochs=2, batch_size=256, device="cpu", seed=0, privacy={"epsilon": 4.0})
    report = model.fit(TabularData(_adultish(), "income"), train, None)
    privacy = report.privacy
    assert privacy is not None and privacy["epsilon"] <= 4.0 + 1e-6 and privacy["steps"] == report.steps
    assert privacy["noise_multiplier"] > 0 and privacy["statistics_sigma"] > 0
    assert 0 < privacy["statistics_histograms"] <= model.plan.statistics.histograms
    state = json.dumps(model.fitted_state())
    assert "rare-group-zz" not in state  # three rows: under min_rows, and far under DP's threshold
    batch = next(model.sample(200, conditions=None, seed=0, batch_size=200))
    assert (
        batch.schema.equals(_adultish().schema) and "rare-group-zz" not in batch.column("group").to_pylist()
    )


def test_dp_label_frequencies_draw_no_label_that_no_row_holds() -> None:
    # the protected label and null, which no row holds, drew up to 1.2% of the rows when their noisy
    # counts were kept: a label count under the noise floor is empty
    rng = np.random.default_rng(2)
    table = _adultish()
    for k in range(12):
        table = table.append_column(f"x{k}", pa.array(rng.choice(["p", "q"], table.num_rows)))
    data = TabularData(table, "income")
    budget = StatisticsBudget(15.0, histograms=100, selection_delta=1e-8, rng=np.random.default_rng(0))
    encoder, x, cond = fit_encoder(data, max_categories=50, model="test", dp=budget)
    prior = LabelPrior.fit(encoder, x, cond, budget)
    shares = dict(zip(map(str, encoder.condition_values), prior.probs))
    assert sum(p for value, p in shares.items() if value not in ("high", "low")) < 1e-6
    real = pc.mean(pc.equal(table.column("income"), "high")).as_py()
    assert shares["high"] == pytest.approx(real, abs=0.02)


@pytest.mark.parametrize("family", ["vae", "diffusion", "autoregressive"])
def test_image_families_train_with_privacy(family: str) -> None:
    from conftest import TINY_MODELS

    images, labels = BUILTINS["digits"].load()
    cls = model_class("image", family)
    model = cls(cls.Config.model_validate(TINY_MODELS[("image", family)]), device=CPU)
    train = TrainSpec(epochs=1, batch_size=64, device="cpu", privacy={"epsilon": 5.0})
    report = model.fit(ImageData(images[:400], labels[:400]), train, None)
    assert report.privacy is not None and report.privacy["epsilon"] <= 5.0 + 1e-6
    assert next(model.sample(4, conditions=None, seed=0, batch_size=4)).images.shape == (4, 8, 8, 1)


def test_training_stops_when_the_budget_is_spent() -> None:
    """With a noise multiplier given, the budget caps the steps: the run stops short of its epochs."""
    cls = model_class("tabular", "autoregressive")
    model = cls(cls.Config.model_validate(_small("autoregressive")), device=CPU)
    privacy = {"epsilon": 1.0, "noise_multiplier": 0.5, "accountant": "rdp"}
    train = TrainSpec(epochs=50, batch_size=256, device="cpu", privacy=privacy)
    report = model.fit(TabularData(_adultish(), "income"), train, None)
    assert report.stopped == "privacy budget" and report.epochs < 50
    assert report.privacy["epsilon"] <= 1.0 + 1e-6


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_a_resumed_private_training_goes_on_counting(
    family: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The accountant's state and the released statistics are checkpointed with the weights: a
    training killed half-way and resumed spends what an uninterrupted one does, never a fresh
    budget, and goes on with the statistics it released (released again, with fresh noise, they
    were a second release the accountant never counted, under weights trained on the first); the
    GAN's category counts, released when its training starts, too."""
    cls = model_class("tabular", family)
    data = TabularData(_adultish(), "income")
    train = TrainSpec(epochs=2, batch_size=256, device="cpu", checkpoint_every=5, privacy={"epsilon": 3.0})
    whole = cls(cls.Config.model_validate(_small(family)), device=CPU).fit(data, train, None).privacy
    store = CheckpointStore(Storage(str(tmp_path)), "checkpoints")
    saves = []
    real_save = CheckpointStore.save

    def save_then_fail(self: CheckpointStore, state: dict[str, Any]) -> None:
        real_save(self, state)
        saves.append(state["step"])
        if len(saves) in (2, 4):  # killed twice: the first resume's checkpoints carry them on too
            raise RuntimeError("killed")

    monkeypatch.setattr(CheckpointStore, "save", save_then_fail)
    with pytest.raises(RuntimeError, match="killed"):
        cls(cls.Config.model_validate(_small(family)), device=CPU).fit(data, train, store)
    first = store.load()
    released = json.loads(first["statistics"])
    with pytest.raises(RuntimeError, match="killed"):
        cls(cls.Config.model_validate(_small(family)), device=CPU).fit(data, train, store)
    monkeypatch.setattr(CheckpointStore, "save", real_save)
    reads = []
    real_read = Storage.read_bytes
    monkeypatch.setattr(Storage, "read_bytes", lambda self, rel: reads.append(rel) or real_read(self, rel))
    resumed = cls(cls.Config.model_validate(_small(family)), device=CPU)
    report = resumed.fit(data, train, store)
    assert reads == [store.rel]  # the statistics and the weights from one read of the checkpoint
    assert saves == [5, 10, 15, 20] and report.resumed_from_step == 20
    assert report.privacy["steps"] == whole["steps"]
    assert report.privacy["epsilon"] == pytest.approx(whole["epsilon"], rel=1e-6)
    assert resumed.fitted_state() == released
    if family == "gan":
        torch.testing.assert_close(resumed.sampler.counts, first["modules"]["conditions"]["counts"])


def test_privacy_refuses_what_it_cannot_cover() -> None:
    from conftest import spec_error

    base = {"name": "j", "dataset": {"uri": "builtin://penguins"}, "model": {"family": "vae"}}
    early = {**base, "train": {"privacy": {"epsilon": 3}, "early_stopping_patience": 5}}
    assert "train: early_stopping_patience: not with privacy" in spec_error(early)
    gan = {"name": "j", "dataset": {"uri": "builtin://digits"}, "model": {"family": "gan"}}
    assert "train.privacy: the gan model for images cannot train with differential privacy" in spec_error(
        {**gan, "train": {"privacy": {"epsilon": 3}}}
    )
    assert "train.privacy.epsilon: Field required" in spec_error({**base, "train": {"privacy": {}}})


def test_the_spent_epsilon_is_published_and_gated(tmp_path: Path) -> None:
    """ε goes into the model's fit record (the manifest), metrics.parquet, the report and the
    run summary; validate.max_epsilon fails a run that spent more, or trained without privacy."""
    source = tmp_path / "people.parquet"
    pq.write_table(_adultish(), source)
    job = tiny_job(
        str(source),
        "autoregressive",
        str(tmp_path / "out"),
        dataset={"label": "income"},
        train={"epochs": 1, "batch_size": 256, "privacy": {"epsilon": 2.0}},
        validate={"max_epsilon": 2.0},
    )
    run = Run(job=job, run_date="2026-04-02")
    dataset = stages.ingest(run)
    model = stages.train(run, dataset=dataset)
    generated = stages.generate(run, model=model, dataset=dataset)
    with pytest.raises(ValueError, match="the model is needed to judge the privacy budget"):
        stages.validate(run, dataset=dataset, generated=generated)
    tighter = job.model_copy(update={"validate_": job.validate_.model_copy(update={"max_epsilon": 0.5})})
    strict = stages.validate(
        Run(job=tighter, run_date=run.run_date, run_id=run.run_id),
        dataset=dataset,
        generated=generated,
        model=model,
    )
    assert not strict.passed and any(
        f.startswith("epsilon=") and f.endswith("> 0.5") for f in strict.failures
    )
    verdict = stages.validate(run, dataset=dataset, generated=generated, model=model)
    spent = model.fit["privacy"]["epsilon"]
    (row,) = [row for row in verdict.metrics if row["metric"] == "epsilon"]
    assert row["value"] == spent <= 2.0 and row["passed"] and row["threshold"] == 2.0
    published = stages.export(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
    manifest = published.manifest
    assert manifest["model"]["fit"]["privacy"]["epsilon"] == spent
    report = (tmp_path / "out" / "tiny" / run.quality / "report.html").read_text()
    assert "differential privacy" in report and f"{spent:.3f}" in report
    assert re.search(r"differential privacy: ε [0-9.]+ of 2 spent", summary_markdown(run, manifest))
    metrics = pq.read_table(tmp_path / "out" / "tiny" / run.quality / "metrics.parquet").to_pylist()
    assert any(m["metric"] == "epsilon" and m["value"] == spent for m in metrics)


def test_the_sensitive_column_must_be_one_the_model_learns(tmp_path: Path) -> None:
    source = tmp_path / "people.parquet"
    pq.write_table(_people(), source)
    for sensitive, message in [
        ("salary", "validate.sensitive: no column 'salary'"),
        ("contact", "validate.sensitive: 'contact' is pii, not learned"),
    ]:
        job = tiny_job(str(source), "vae", str(tmp_path / "out"), validate={"sensitive": sensitive})
        with pytest.raises(DatasetError, match=message):
            stages.ingest(Run(job=job, run_date="2026-04-05"))


def test_rare_values_and_copies_are_found_in_every_row_group_not_only_the_sample() -> None:
    """Issue 19: validation of a table streamed from row groups judges the metrics on a sample,
    but a rare real value or a copy of a real row is looked for in every row group."""
    from genai_pipeline.privacy.protection import Protection
    from genai_pipeline.privacy.roles import ColumnRole
    from genai_pipeline.quality.privacy import rare_real_values

    rows = 1000
    rng = np.random.default_rng(0)
    colour = np.array(["red", "blue"] * (rows // 2), dtype=object)
    colour[900] = "violet"  # held by one row, past the sample
    amount = rng.normal(100, 10, rows)
    amount[950] = 1e6  # beyond the protected tail, past the sample
    real = pa.table({"id": [f"u{i:04d}" for i in range(rows)], "colour": colour, "amount": amount})
    sample, groups = real.slice(0, 500), [real.slice(start, 100) for start in range(0, rows, 100)]
    drawn = pa.table(
        {
            "id": ["u0950", "n1", "n2", "n3"],
            "colour": ["violet", "red", "blue", "red"],
            "amount": [100.0, 1e6, 101.0, 99.0],
        }
    )
    copied = pa.concat_tables([drawn, real.slice(800, 1)])  # a copy of a row past the sample
    options: dict[str, Any] = {"protection": Protection(min_rows=5), "roles": {"id": ColumnRole("id")}}
    whole = rare_real_values(real, None, copied, **options)
    assert whole == ({"id": 2, "colour": 1, "amount": 1}, 0.6)
    assert rare_real_values(sample, None, copied, every=iter(groups), **options) == whole
    assert rare_real_values(sample, None, copied, **options)[0] == {"id": 0, "colour": 0, "amount": 0}
    assert new_row_share(sample, copied, every=iter(groups)) == new_row_share(real, copied) == 0.8
    assert new_row_share(sample, copied) == 1.0
