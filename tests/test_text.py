"""Text columns: the language model writes each row's text given its other columns, never a rare
real sentence; the text metrics; the report shows synthetic examples escaped."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from genai_pipeline.config import TrainSpec, ValidateSpec
from genai_pipeline.datasets.base import TabularData
from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import model_class
from genai_pipeline.models.base import load_model
from genai_pipeline.privacy.memorisation import holds_rare, memorised_share, rare_runs, runs
from genai_pipeline.privacy.protection import Protection
from genai_pipeline.privacy.roles import column_roles
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.quality.report import ReportInput, render_report
from genai_pipeline.quality.scoring import TablePrivacy, TextSample, score_tables
from genai_pipeline.quality.text import CharNgram, score_text
from genai_pipeline.relational import ColumnSpec
from genai_pipeline.storage import Storage

GOOD = ["great product and it works well", "love it and would buy again", "excellent quality, fast delivery"]
BAD = ["broke after two days of use", "terrible and do not buy it", "arrived damaged and very late"]
CANARY = "my secret name is ozymandias and my pin is four four one nine"


def reviews(rows: int = 600, seed: int = 0, canary: bool = False) -> pa.Table:
    """Stars and a price, and a review whose words follow the stars (good from 4 up)."""
    rng = np.random.default_rng(seed)
    stars = rng.integers(1, 6, rows)
    endings = ["really", "truly", "so much", "overall", "for sure", "indeed"]
    texts = [
        f"{(GOOD if s >= 4 else BAD)[rng.integers(3)]} {endings[rng.integers(len(endings))]}" for s in stars
    ]
    if canary:
        texts[7] = CANARY
    rating = ["good" if s >= 4 else "bad" for s in stars]
    return pa.table({"rating": rating, "price": rng.normal(20, 5, rows).round(2), "review": texts})


def _fit(table: pa.Table, family: str = "autoregressive", epochs: int = 12, **text: object):  # noqa: ANN202
    cls = model_class("tabular", family)
    roles = column_roles(table, {"review": ColumnSpec(type="text")}, None)
    model = cls(cls.Config.model_validate({"text": {"epochs": epochs, **text}}), device=torch.device("cpu"))
    report = model.fit(
        TabularData(table, None, roles=roles), TrainSpec(epochs=3, batch_size=64, device="cpu"), None
    )
    return model, report, roles


@pytest.fixture(scope="module")
def trained():  # noqa: ANN201
    return _fit(reviews(canary=True), epochs=25, width=64)


def test_the_text_follows_the_rows_other_columns(trained) -> None:  # noqa: ANN001
    model, report, _ = trained
    record = report.text["review"]
    assert record["validation_perplexity"] < 10
    assert len(record["curve"]) == record["epochs"]  # a perplexity per epoch, the reported one among them
    assert any(p == pytest.approx(record["validation_perplexity"]) for _, p in record["curve"])
    table = pa.concat_tables(model.sample(400, conditions=None, seed=5, batch_size=200))
    rows = table.to_pylist()
    good_words, bad_words = {"great", "love", "excellent"}, {"broke", "terrible", "arrived"}

    def agrees(row: dict) -> bool:
        first = (row["review"] or "").split(" ")[0]
        return first in (good_words if row["rating"] == "good" else bad_words)

    assert np.mean([agrees(row) for row in rows]) > 0.9  # a good rating gets a good review
    conditioned = pa.concat_tables(model.sample(100, conditions={"rating": "bad"}, seed=6, batch_size=100))
    assert np.mean([agrees(row) for row in conditioned.to_pylist()]) > 0.9


def test_no_rare_real_sentence_comes_out_even_from_a_model_that_learned_it(trained) -> None:  # noqa: ANN001
    model, _, _ = trained
    real = reviews(canary=True).column("review").to_pylist()
    written = [
        t
        for b in model.sample(3000, conditions=None, seed=9, batch_size=1000)
        for t in b.column("review").to_pylist()
    ]
    assert CANARY not in written and not [t for t in written if "ozymandias" in (t or "")]
    assert memorised_share(real, written, 5) == 0
    assert model.text.redrawn["review"] >= 0


def test_a_saved_text_model_loads_without_pickle_and_samples_the_same(trained, tmp_path) -> None:  # noqa: ANN001
    model, _, _ = trained
    storage = Storage(str(tmp_path))
    model.save(storage, "model")
    loaded = load_model(storage, "model", torch.device("cpu"))
    first = next(model.sample(50, conditions=None, seed=3, batch_size=50))
    again = next(loaded.sample(50, conditions=None, seed=3, batch_size=50))
    assert first.equals(again)


def test_texts_are_written_in_float32_on_a_cpu_whatever_the_precision(trained) -> None:  # noqa: ANN001
    # bfloat16 autocast made a text model's small products slower on a CPU, not faster
    model, _, _ = trained
    rows = reviews(rows=40, seed=5)
    x, cond = model.encoder.encode(rows)
    plain = model.text.fill(rows, x, cond, seed=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.text.fill(rows, x, cond, seed=2).equals(plain)


@pytest.mark.parametrize("family", ["vae", "diffusion", "gan"])
def test_every_table_family_writes_text_columns(family: str) -> None:
    model, report, _ = _fit(reviews(300), family, epochs=3, width=32)
    table = next(model.sample(60, conditions=None, seed=1, batch_size=60))
    assert report.text["review"]["steps"] > 0
    assert table.column("review").null_count == 0 and all(
        isinstance(t, str) for t in table.column("review").to_pylist()
    )


def test_nulls_unicode_and_any_script_round_trip() -> None:
    rng = np.random.default_rng(2)
    phrases = ["naïve café au lait ☕", "東京の天気は晴れです", "привет, как дела?", "emoji party 🎉🎉"]
    texts = [None if rng.random() < 0.3 else phrases[rng.integers(4)] for _ in range(300)]
    table = pa.table({"kind": [str(rng.integers(3)) for _ in range(300)], "review": texts})
    model, _, _ = _fit(table, epochs=15, width=32)
    written = pa.concat_tables(model.sample(300, conditions=None, seed=2, batch_size=300)).column("review")
    assert 0.15 < written.null_count / 300 < 0.45
    assert set(written.drop_null().to_pylist()) & set(phrases)  # common phrases may come out as they are


def test_text_columns_refuse_differential_privacy_clearly() -> None:
    from genai_pipeline.config import PrivacySpec

    table = reviews(200)
    cls = model_class("tabular", "vae")
    roles = column_roles(table, {"review": ColumnSpec(type="text")}, None)
    model = cls(cls.Config(), device=torch.device("cpu"))
    train = TrainSpec(epochs=1, device="cpu", privacy=PrivacySpec(epsilon=3))
    with pytest.raises(ConfigError, match="train.privacy: text columns \\(review\\)"):
        model.fit(TabularData(table, None, roles=roles), train, None)


def test_runs_catch_a_rare_sentence_however_cased_and_a_rare_exact_text() -> None:
    training = ["The quick brown fox jumps over the lazy dog today"] + ["hello there"] * 5 + ["Hello there"]
    rare = rare_runs(training, 5)
    assert holds_rare("the QUICK brown fox jumps over the lazy   dog", rare)
    assert not holds_rare("hello there", rare)  # five texts hold it
    assert holds_rare("Hello there", rare)  # exactly as written, one text holds it
    assert len(runs("one two three")) == 2  # the whole (shorter than a run) and the exact text


def test_text_scores_and_the_character_model() -> None:
    real = [f"{a} {b}" for a in ("good", "bad", "fine") for b in ("day", "night", "morning")] * 40
    same = score_text(real, real[:100], real, columns={}, min_rows=5, seed=0)
    assert same.length == pytest.approx(1.0) and same.vocabulary == pytest.approx(1.0)
    assert same.memorised_share == 0 and same.copied_share == 1.0
    model = CharNgram(real)
    assert model.perplexity(real[:20]) < model.perplexity(["zzzz qqqq", "xyxy"])
    assert all(isinstance(text, str) for text in model.sample(3, seed=0))


def test_scoring_gates_text_memorisation_and_the_report_escapes_texts() -> None:
    unique = "<script>alert(1)</script> a review nobody else wrote about this odd kettle"
    real = reviews(400)
    real = real.set_column(2, "review", pa.array([unique, *real.column("review").to_pylist()[1:]]))
    roles = column_roles(real, {"review": ColumnSpec(type="text")}, None)
    leaked = real.set_column(2, "review", pa.array([unique] * 400))  # a model that replays one review
    rows = MetricRows("r", ValidateSpec())
    charts = score_tables(
        rows, real.slice(0, 300), real.slice(300), leaked, target="rating", conditions={}, per_label=False,
        seed=0, privacy=TablePrivacy(roles=roles, protection=Protection()),
    )  # fmt: skip
    memorised = next(r for r in rows.rows if r["metric"] == "text_memorised")
    assert memorised["value"] == 1.0 and not memorised["passed"] and memorised["threshold"] == 0.01
    sample = charts["texts"]["review"]
    assert isinstance(sample, TextSample) and sample.real == []  # protection on: no real text shown
    page = render_report(ReportInput("t", "failed", {}, rows.rows, texts=charts["texts"]))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_builtin_text_corpus_ships_in_a_package() -> None:
    table = BUILTINS["chatterbot/english"].load()
    assert table.column_names == ["topic", "turn", "text"] and table.num_rows > 4000
    assert column_roles(table, {"text": ColumnSpec(type="text")}, "topic")["text"].role == "text"


def _write_jsonl(path, table: pa.Table) -> None:  # noqa: ANN001
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()), encoding="utf-8")


@pytest.mark.e2e
def test_a_text_dataset_runs_through_the_flow_publishes_and_is_gated_on_text(tmp_path) -> None:  # noqa: ANN001
    """A JSONL of labelled documents (``format: text``) through Prefect: the output holds the label
    and new documents, metrics.parquet the text metrics, the gate the memorised share."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
    from conftest import tiny_job

    from flows.synthesize import synthesize

    source = tmp_path / "reviews.jsonl"
    real = reviews(300, canary=True).select(["rating", "review"])
    _write_jsonl(source, real)
    sections = {
        "dataset": {"format": "text", "text_column": "review", "label": "rating"},
        "model": {"text": {"epochs": 4, "width": 32}},
        "generate": {"per_label": {"good": 60, "bad": 40}},
        "validate": {"max_text_memorised": 0.0},
    }
    job = tiny_job(str(source), "autoregressive", str(tmp_path / "out"), **sections)
    result = synthesize(job=job, run_date="2026-01-02")
    root = tmp_path / "out" / "tiny"
    table = pads.dataset(root / "data", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 100 and set(table.column_names) == {"rating", "review", "run_date"}
    texts = table.column("review").to_pylist()
    assert CANARY not in texts and memorised_share(real.column("review").to_pylist(), texts, 5) == 0
    quality = f"quality/run_date=2026-01-02/run={result['run_id']}"
    metrics = pq.read_table(root / quality / "metrics.parquet").to_pylist()
    gated = [m for m in metrics if m["metric"] == "text_memorised"]
    assert gated and gated[0]["threshold"] == 0.0 and gated[0]["passed"]
    assert {"text_length", "text_vocabulary", "text_perplexity_ratio"} <= {m["metric"] for m in metrics}
    page = (root / quality / "report.html").read_text()
    assert "Text columns: synthetic examples" in page


def test_a_folder_of_text_files_per_label_is_a_text_dataset(tmp_path) -> None:  # noqa: ANN001
    from genai_pipeline.config import DatasetSpec
    from genai_pipeline.datasets.sources import read_dataset
    from genai_pipeline.errors import DatasetError

    for label, texts in (("good", GOOD), ("bad", BAD)):
        (tmp_path / label).mkdir()
        for number, text in enumerate(texts):
            (tmp_path / label / f"{number}.txt").write_text(text, encoding="utf-8")
    data = read_dataset(DatasetSpec(uri=str(tmp_path), format="text", label="sentiment"))
    assert data.table.column_names == ["sentiment", "text"] and data.table.num_rows == 6
    assert DatasetSpec(uri=str(tmp_path), format="text").columns["text"].type == "text"
    (tmp_path / "bad" / "broken.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match=r"broken.txt: not UTF-8 text"):
        read_dataset(DatasetSpec(uri=str(tmp_path), format="text"))
    with pytest.raises(DatasetError, match=r"no column 'body' of documents \(dataset.text_column"):
        source = tmp_path / "docs.jsonl"
        _write_jsonl(source, pa.table({"text": ["a b c"]}))
        read_dataset(DatasetSpec(uri=str(source), format="text", text_column="body"))


def test_a_killed_text_training_resumes_from_its_own_checkpoint(tmp_path) -> None:  # noqa: ANN001
    from genai_pipeline.training import CheckpointStore

    store = CheckpointStore(Storage(str(tmp_path)), "ckpt")
    table = reviews(500)
    roles = column_roles(table, {"review": ColumnSpec(type="text")}, None)
    cls = model_class("tabular", "vae")

    def fit(text_epochs: int) -> dict:
        model = cls(
            cls.Config.model_validate({"text": {"epochs": text_epochs, "width": 32}}),
            device=torch.device("cpu"),
        )
        train = TrainSpec(epochs=1, batch_size=64, device="cpu", seed=1, checkpoint_every=2)
        return model.fit(TabularData(table, None, roles=roles), train, store).text["review"]

    first = fit(1)
    resumed = fit(2)
    assert first["steps"] > 2 and resumed["resumed_from_step"] == first["steps"] - first["steps"] % 2
    assert resumed["steps"] == 2 * first["steps"]
    assert Storage(str(tmp_path)).exists("ckpt/text-0/latest.pt")  # named by position, never by column name
