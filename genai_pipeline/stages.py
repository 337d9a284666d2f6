"""The five stages of a nightly job, top to bottom: ingest → train → generate → validate → export.

Each is a plain function with keyword-only arguments: it takes the :class:`~genai_pipeline.runs.Run`
and the references the stages before it returned (:mod:`genai_pipeline.refs`), reads and writes
large data through storage, and returns a small reference in turn. What a stage does is in the
library it calls (datasets, models, generation, quality, publishing); a stage says in what order
and where. Prefect tasks in ``flows/`` wrap exactly one of these each; tests and notebooks call
them directly.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import genai_pipeline
from genai_pipeline.columns import dense, value_type
from genai_pipeline.config import DatasetSpec, JobSpec, ValidateSpec
from genai_pipeline.constraints import Constraints, identifiers
from genai_pipeline.datasets.base import (
    Dataset,
    ImageData,
    TabularData,
    content_key,
    describe_schema,
    fingerprint,
    label_values,
    read_snapshot,
    sampled,
    schema_diff,
    split_holdout,
    write_snapshot,
)
from genai_pipeline.datasets.row_groups import FIT_SAMPLE_ROWS, RowGroups
from genai_pipeline.datasets.sources import read_dataset, read_source
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.errors import ConfigError, DatasetError, StorageError
from genai_pipeline.generation import (
    PlanCounts,
    check_label_folders,
    completed_batches,
    image_batch_size,
    joint_counts,
    model_conditions,
    read_images,
    sample_rows,
    sampling_plan,
    seed_shard,
    shard_plan,
    shared_model,
    value_counts,
    write_images,
)
from genai_pipeline.models import model_class, model_config_for
from genai_pipeline.models.base import sampling_precision
from genai_pipeline.parquet import concat_parquet, write_parquet, write_table
from genai_pipeline.privacy.protection import Protection
from genai_pipeline.privacy.roles import ColumnRole, column_roles
from genai_pipeline.publishing import publish, record_failure
from genai_pipeline.quality.expectations import (
    FreshCheck,
    SuiteResult,
    check_data,
    data_suite,
    empty_suite,
    job_suite,
    load_suite,
    suite_bytes,
)
from genai_pipeline.quality.gate import MetricRows, judge
from genai_pipeline.quality.images import LabelClassifier, cached_classifier
from genai_pipeline.quality.report import ReportInput, harden_pages, render_report
from genai_pipeline.quality.scoring import TablePrivacy, score_images, score_tables
from genai_pipeline.quality.tabular import parity_gap
from genai_pipeline.refs import DatasetRef, GeneratedRef, ModelRef, PublishedRun, QualityVerdict
from genai_pipeline.relational import ColumnSpec, as_declared, declared, with_names
from genai_pipeline.runs import LATEST_MODEL, PARTITION_KEY, RUN_ID_KEY, SAVED_SUITE, SOURCE_CACHE, Run
from genai_pipeline.storage import Storage
from genai_pipeline.summary import report_facts
from genai_pipeline.training import CheckpointStore, resolve_device

log = logging.getLogger(__name__)

__all__ = [
    "combine_shards",
    "export",
    "generate",
    "generate_shard",
    "ingest",
    "record_failure",
    "train",
    "validate",
]


# -- ingest ---------------------------------------------------------------------------------------


def ingest(run: Run) -> DatasetRef:
    """Read the dataset, check it and the job's request against each other, stage the suite the
    output will be checked against, fingerprint the data, set a holdout aside and snapshot both
    parts in the private workspace. Everything that can make the night fail for a reason in the
    data fails here, before training. What leaves the workspace (the suite, the schema's labels,
    the counts of protected values) is derived from the protected view of the training rows."""
    if run.tables:
        return _relational().ingest_tables(run)
    job, checks = run.job, run.job.validate_
    resolve_device(job.train.device)  # a GPU asked for and absent: fail before anything is read
    started = time.monotonic()
    workspace = run.workspace()
    data = read_source(job.dataset, workspace, SOURCE_CACHE)
    if isinstance(data, TabularData):
        data = replace(data, table=as_declared(data.table, job.dataset.columns, "dataset.columns"))
        run.check_columns(data.table.column_names, job.dataset.source)
    _check_schema(run, describe_schema(data), workspace)
    if isinstance(data, ImageData):
        check_label_folders(data.label_names)
    key = fingerprint(data)
    train_part, holdout = split_holdout(data, checks.holdout, checks.holdout_max_rows, key=key)
    rules = Constraints()
    if isinstance(train_part, TabularData):
        unique = {name: ColumnSpec(type="id") for name in identifiers(job.generate.constraints)}
        roles = column_roles(train_part.table, unique | declared(job.dataset.columns), job.dataset.label)
        _check_sensitive(checks.sensitive, train_part.table.column_names, roles)
        train_part = learnable(train_part, roles, job, holdout)
        rules = fitted_constraints(train_part, job)  # a rule the rows break fails here
    view = _PublicView.of(train_part)
    labels = label_values(view.shown)
    schema = describe_schema(data, labels=labels)
    plan = sampling_plan(job, labels, _plan_counts(run, view))
    _check_imputed(job.generate.impute, view)
    model_class(data.modality, job.model.family).check_plan(
        train_part, model_config_for(job), [conditions for conditions, _ in plan]
    )
    if job.generate.complete is not None:  # the seed rows say how many rows are drawn
        plan = [({}, _stage_seeds(run, view, rules) * job.generate.complete.rows_per_seed)]
    suite = run.staged(run.suite_file)
    _stage_suite(run, data, view, sum(count for _, count in plan), suite, rules.computed)
    snapshot, holdout_snapshot = run.private("input/dataset.parquet"), run.private("input/holdout.parquet")
    write_snapshot(train_part, workspace, snapshot)
    if holdout is not None:
        write_snapshot(holdout, workspace, holdout_snapshot)
    ref = DatasetRef(
        source=job.dataset.uri,
        snapshot=snapshot,
        modality=data.modality,
        fingerprint=key,
        num_rows=data.num_rows,
        schema=schema,
        label=job.dataset.label,
        suite=suite,
        holdout=None if holdout is None else holdout_snapshot,
        holdout_rows=0 if holdout is None else holdout.num_rows,
        roles={name: role.to_dict() for name, role in (getattr(train_part, "roles", None) or {}).items()},
        protected=view.protected,
    )
    log.info(
        "ingested %d %s from %s (fingerprint %s, %d held out%s) in %.1f s",
        ref.num_rows,
        "rows" if ref.modality == "tabular" else "images",
        job.dataset.uri,
        ref.fingerprint,
        ref.holdout_rows,
        "".join(f", {name}: {role['role']}" for name, role in ref.roles.items()),
        time.monotonic() - started,
    )
    return ref


#: the real counts a rebalanced or fair plan is made from, kept in the run's private area for its shards
PLAN_COUNTS = "input/plan_counts.json"
#: the seed rows (``generate.complete``), as read and checked, in the run's private area
SEED_ROWS = "input/seeds.parquet"


def _stage_seeds(run: Run, view: _PublicView, rules: Constraints) -> int:
    """Read the seed rows, check them against the data, the family and the job's ``rules``, give
    each the job's conditions, and keep them in the run's private area for the shards (seed rows
    may be real ones: they are published only as the columns of the rows completed from them,
    which the privacy checks then see). Their number."""
    spec, job = run.job.generate.complete, run.job
    assert spec is not None and view.encoder is not None, "seed rows complete a table"
    family = model_class("tabular", job.model.family)
    family.check_seeds(view.encoder, [])  # a family that cannot fails before the seeds are read
    source = DatasetSpec(uri=spec.uri, format=spec.format, storage_options=job.dataset.storage_options)
    seeds = read_dataset(source)
    assert isinstance(seeds, TabularData), "the formats seed rows may have hold tables"
    family.check_seeds(view.encoder, seeds.table.column_names)
    schema = view.encoder.schema
    columns = {}
    for name in seeds.table.column_names:
        wanted, given = value_type(schema.field(name).type), dense(seeds.table.column(name))
        if pa.types.is_string(given.type) or pa.types.is_large_string(given.type):  # a blank cell: not given
            given = pc.if_else(pc.equal(given, ""), pa.scalar(None, given.type), given)
        try:
            columns[name] = given.cast(wanted)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise DatasetError(
                f"generate.complete: {spec.uri}: column {name!r} cannot be read as {wanted}"
            ) from None
    table = _conditioned_seeds(pa.table(columns), job.generate.conditions, schema, spec.uri)
    _check_seed_rules(table, rules, spec.uri)
    write_snapshot(TabularData(table), run.workspace(), run.private(SEED_ROWS))
    log.info("generate.complete: %d seed rows from %s", seeds.num_rows, spec.uri)
    return seeds.num_rows


def _conditioned_seeds(
    seeds: pa.Table, conditions: Mapping[str, Any], schema: pa.Schema, uri: str
) -> pa.Table:
    """The seed rows with each conditioned column given its value: a row that gives another fails,
    naming the column and counting the rows (never showing them)."""
    for name, value in conditions.items():
        wanted = pa.array([value] * seeds.num_rows).cast(value_type(schema.field(name).type))
        if name in seeds.column_names:
            given = seeds.column(name)
            if other := pc.sum(pc.and_(given.is_valid(), pc.not_equal(given, wanted))).as_py():
                raise DatasetError(
                    f"generate.complete: {uri}: {other} seed row(s) give {name} other than "
                    f"generate.conditions.{name}"
                )
            seeds = seeds.set_column(seeds.schema.get_field_index(name), name, wanted)
        else:
            seeds = seeds.append_column(name, wanted)
    return seeds


def _check_seed_rules(seeds: pa.Table, rules: Constraints, uri: str) -> None:
    """Seed rows give what the model learns as it is: not a column a rule draws from others (a
    ship date learned as its gap, a formula's total); and a row that gives every column of a rule
    follows it. Each refused naming the rule (and counting rows)."""
    for rule in rules.rules:
        if drawn := [name for name in rule.removed if name in seeds.column_names]:
            raise DatasetError(
                f"generate.complete: the seed rows' column {drawn[0]} is drawn by {rule.where} "
                f"({rule.label()}) from its other columns: leave it to the model"
            )
        if all(name in seeds.column_names for name in rule.columns) and (broken := rule.broken(seeds)):
            raise DatasetError(
                f"generate.complete: {uri}: {broken} seed row(s) break {rule.where} ({rule.label()})"
            )


def _check_imputed(columns: list[str], view: _PublicView) -> None:
    """``generate.impute`` names learned columns (those made fresh keep their real share of nulls,
    text is written by its own model, and a column of nulls has no value to draw)."""
    kinds = view.kinds
    for name in columns:
        if name not in kinds:
            raise ConfigError(f"generate.impute: no column {name!r} (columns: {', '.join(kinds)})")
        if kinds[name] not in ("continuous", "categorical"):
            what = {"fresh": "made fresh", "text": "text", "null": "all null"}[kinds[name]]
            raise ConfigError(f"generate.impute.{name}: the column is {what}: no value of it is drawn")


def _plan_counts(run: Run, view: _PublicView) -> PlanCounts | None:
    """The real counts a rebalanced or fair plan is made from, as a model may be asked for the
    values (the protected view: values fewer rows hold are not there): the rebalanced column's,
    the fairness target's, and the fairness groups'. Kept for the generate stage in the run's
    private area (they are the real data's: never in what is published)."""
    generate = run.job.generate
    columns = {f"generate.rebalance.{name}": name for name in generate.rebalance}
    if generate.fairness is not None:
        columns |= {"generate.fairness.target": generate.fairness.target}
        columns |= {f"generate.fairness.sensitive.{name}": name for name in generate.fairness.sensitive}
    if not columns:
        return None
    kinds = view.kinds
    for where, name in columns.items():
        if name not in kinds:
            raise ConfigError(
                f"{where}: no such column (columns: {', '.join(view.shown.table.column_names)})"
            )
        if kinds[name] != "categorical":
            learned = "a number" if kinds[name] == "continuous" else kinds[name]
            raise ConfigError(
                f"{where}: the column is learned as {learned}, not a category "
                f"(declare it dataset.columns: {{{name}: {{type: category}}}})"
            )
    table = view.shown.table
    counts = PlanCounts({name: value_counts(table.column(name), 1) for name in columns.values()})
    if generate.fairness is not None:  # a group fewer than min_rows rows hold is not drawn
        threshold = Protection.from_spec(run.job.dataset.value_protection).threshold
        groups = joint_counts(table, generate.fairness.sensitive)
        counts.groups = [(group, count) for group, count in groups if count >= threshold]
    run.workspace().write_bytes(run.private(PLAN_COUNTS), counts.to_json())
    return counts


def _stored_counts(run: Run) -> PlanCounts | None:
    """What :func:`_plan_counts` kept."""
    if not (run.job.generate.rebalance or run.job.generate.fairness):
        return None
    return PlanCounts.from_json(run.workspace().read_bytes(run.private(PLAN_COUNTS)))


def _check_sensitive(sensitive: str | None, columns: list[str], roles: Mapping[str, ColumnRole]) -> None:
    """``validate.sensitive`` must be a learned column: an attacker guesses values the model learned."""
    if sensitive is None:
        return
    if sensitive not in columns:
        raise DatasetError(f"validate.sensitive: no column {sensitive!r} (columns: {', '.join(columns)})")
    if sensitive in roles and roles[sensitive].unlearned:
        raise DatasetError(
            f"validate.sensitive: {sensitive!r} is {roles[sensitive].role}, not learned: there is nothing "
            "of it to infer from the output"
        )


@dataclass(frozen=True)
class _PublicView:
    """The training rows as far as what leaves the workspace may show them: a table through its
    encoder's protected view (images: as they are, their labels being their folders)."""

    shown: Dataset
    encoder: TableEncoder | None = None
    #: per text column, its share of nulls in the training rows (what the suite expects of it)
    text_nulls: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, data: Dataset) -> _PublicView:
        if not isinstance(data, TabularData):
            return cls(data)
        encoder = TableEncoder.fit(
            data.table, condition=data.label, roles=data.roles, protection=data.protection, unseen=data.unseen
        )
        text = [codec.name for codec in encoder.codecs if codec.kind == "text"]
        nulls = {name: data.table.column(name).null_count / max(data.num_rows, 1) for name in text}
        return cls(TabularData(encoder.public_view(data.table), data.label), encoder, nulls)

    @property
    def kinds(self) -> dict[str, str]:
        """Per column, how a model learns it (its codec's kind: continuous, categorical, fresh…)."""
        return {codec.name: codec.kind for codec in self.encoder.codecs} if self.encoder is not None else {}

    @property
    def protected(self) -> dict[str, int]:
        """Per column, how many values protection kept from the model (counts only)."""
        codecs = self.encoder.codecs if self.encoder is not None else []
        return {codec.name: codec.protected for codec in codecs if codec.protected}

    def fresh(self, total: int) -> dict[str, FreshCheck]:
        """What the suite checks of the columns not learned value by value, in a run of ``total``
        rows: those made fresh, and text (its share of nulls and its type only)."""
        columns = self.encoder.fresh_columns if self.encoder is not None else {}
        checks = {
            name: FreshCheck(column.null_share, column.unique, column.pattern(total))
            for name, column in columns.items()
        }
        return checks | {name: FreshCheck(share, False, None) for name, share in self.text_nulls.items()}

    def protect(self, rows: Dataset) -> Dataset:
        """Other real rows (the whole input) with the same protection, fresh columns as they are."""
        if self.encoder is None or not isinstance(rows, TabularData):
            return rows
        return TabularData(self.encoder.public_view(rows.table, keep_fresh=True), rows.label)


def learnable(
    data: TabularData, roles: Mapping[str, ColumnRole], job: JobSpec, holdout: Dataset | None
) -> TabularData:
    """The training rows as a model may learn them: the columns' roles, the job's protection, and
    the holdout's rows, whose values the columns made fresh avoid too."""
    protection = Protection.from_spec(job.dataset.value_protection)
    unseen = holdout.table if isinstance(holdout, TabularData) else None
    return TabularData(
        data.table,
        data.label,
        roles=roles,
        protection=protection,
        unseen=unseen,
        constraints=tuple(job.generate.constraints),
    )


def fitted_constraints(data: TabularData, job: JobSpec) -> Constraints:
    """The job's constraints fitted on the training rows as its model fits them: what the output
    is checked against."""
    constraints = Constraints(data.constraints)
    if constraints:
        constraints.fit(
            data.table,
            data.roles or {},
            data.protection.threshold,
            data.label,
            private=job.train.privacy is not None,
            every=data.stream.each if data.stream is not None else None,
        )
    return constraints


def _roles(dataset: DatasetRef) -> dict[str, ColumnRole]:
    return {name: ColumnRole(**role) for name, role in dataset.roles.items()}


def _read_training_rows(run: Run, dataset: DatasetRef, workspace: Storage) -> Dataset:
    """The training snapshot, with the roles and protection ingest decided for it."""
    data = read_snapshot(workspace, dataset.snapshot, dataset.label)
    if not isinstance(data, TabularData):
        return data
    return learnable(data, _roles(dataset), run.job, _holdout_rows(dataset, workspace))


def _holdout_rows(dataset: DatasetRef, workspace: Storage) -> Dataset | None:
    return read_snapshot(workspace, dataset.holdout, dataset.label) if dataset.holdout else None


def _streamed_rows(run: Run, dataset: DatasetRef, workspace: Storage, streams: bool) -> TabularData | None:
    """The training rows read a few row groups at a time when the table has more than
    ``train.in_memory_rows`` and the model can (``streams``): a seeded sample to fit the encoder
    and the constraints on, and the row groups for the passes over all of them that complete it
    (:mod:`genai_pipeline.datasets.row_groups`); None to read them whole. ``train.max_rows`` and
    ``train.privacy`` hold their rows in memory."""
    train = run.job.train
    if dataset.modality != "tabular" or train.max_rows is not None or train.privacy is not None:
        return None
    groups = RowGroups.of(workspace, dataset.snapshot)
    if groups.rows <= train.in_memory_rows:
        return None
    if not streams:
        log.warning(
            "train.in_memory_rows: the %s family holds its %d rows in memory (set train.max_rows to "
            "train on a sample)",
            run.job.model.family,
            groups.rows,
        )
        return None
    log.info(
        "training on %d rows streamed from %d row groups, the encoder fitted on a sample of %d",
        groups.rows,
        len(groups.sizes),
        min(FIT_SAMPLE_ROWS, groups.rows),
    )
    return _sample_of(run, dataset, workspace, groups)


def _sample_of(run: Run, dataset: DatasetRef, workspace: Storage, groups: RowGroups) -> TabularData:
    """The seeded sample of a streamed table's rows (``train.seed``: training's and validation's
    are the same rows), with its row groups (``stream``) for the passes over every row."""
    sample = TabularData(groups.sample(FIT_SAMPLE_ROWS, run.job.train.seed), dataset.label)
    return replace(
        learnable(sample, _roles(dataset), run.job, _holdout_rows(dataset, workspace)), stream=groups
    )


def _validation_rows(run: Run, dataset: DatasetRef, workspace: Storage, model: ModelRef | None) -> Dataset:
    """The training rows the output is judged against: all of them, or where the model trained
    on them streamed (``model.fit.streamed``), the sample it was fitted on with their row groups:
    the metrics are the sample's, and exact copies, rare values and the constraints' checks are
    looked for in every row group, so that validation's memory is as flat in the rows as training's."""
    if model is not None and model.fit.get("streamed"):
        return _sample_of(run, dataset, workspace, RowGroups.of(workspace, dataset.snapshot))
    return _read_training_rows(run, dataset, workspace)


def _check_schema(run: Run, schema: dict[str, Any], workspace: Storage) -> None:
    """The data's schema against the last published run's: a change fails the run naming it, or,
    with ``dataset.on_schema_change: adapt``, is logged and accepted (the model key follows the
    data, so a model for the new schema is trained)."""
    if not workspace.exists(LATEST_MODEL):
        return  # the job's first run
    latest = json.loads(workspace.read_bytes(LATEST_MODEL))
    changes = schema_diff(latest["dataset"]["schema"], schema)
    if not changes:
        return
    since = f"since run {latest['run_id']} ({PARTITION_KEY} {latest['run_date']})"
    if run.job.dataset.on_schema_change == "adapt":
        log.warning("dataset: the schema changed %s: %s; adapting", since, "; ".join(changes))
        return
    raise DatasetError(
        f"{run.job.dataset.source}: the schema changed {since}: {'; '.join(changes)} "
        "(set dataset.on_schema_change: adapt to accept it)"
    )


def _stage_suite(
    run: Run,
    data: Dataset,
    view: _PublicView,
    total: int,
    staged: str,
    computed: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Stage the run's data suite at ``staged``: the job's saved one or one derived from the
    protected view of the training rows (so it names no value fewer than ``min_rows`` rows hold),
    with the columns made fresh checked for uniqueness and format (in a run of ``total`` rows)
    rather than values, and those a constraint computes without their real range.

    The real input is checked first, so a broken upstream dataset fails here rather than after
    training: against a saved suite (reviewed, so there is something to learn from it) as far as
    a model may learn it (tonight's rows with the protection the suite was derived under), and
    against the job's own expectations as it is. The results name real values and stay in the
    workspace; the failure's message gives counts only (it reaches the manifest)."""
    spec, storage, workspace = run.job.validate_, run.storage(), run.workspace()
    saved = spec.suite == "saved" and workspace.exists(SAVED_SUITE)
    if saved:
        base = load_suite(workspace.read_bytes(SAVED_SUITE), workspace.url_of(SAVED_SUITE))
    else:
        base = data_suite(
            view.shown,
            spec,
            run.job.name,
            fresh=view.fresh(total),
            schema=_schema_of(data),
            private=run.job.train.privacy is not None,
            token=run.job.dataset.value_protection.rare_token,
            computed=frozenset(computed),
        )
        if spec.suite == "saved":
            workspace.write_bytes(SAVED_SUITE, suite_bytes(base))
            log.info(
                "validate.suite: saved: wrote the data's suite to %s for review",
                workspace.url_of(SAVED_SUITE),
            )
    storage.write_bytes(staged, suite_bytes(base))
    extras = [extra for extra in spec.expectations if extra.check_input]
    checks = []
    if saved:
        reviewed = job_suite(base, spec.model_copy(update={"expectations": []}), {}, data.modality)
        checks.append(check_data(reviewed, view.protect(data), observed=False))
    if extras:
        own = job_suite(
            empty_suite(base), spec.model_copy(update={"expectations": extras}), {}, data.modality
        )
        checks.append(check_data(own, data, observed=False))
    if not checks:
        return
    payloads = [result.payload for result in checks]
    workspace.write_bytes(run.private("input_expectations.json"), json.dumps(payloads, indent=1).encode())
    for warning in (warning for result in checks for warning in result.warnings):
        log.warning("dataset: %s", warning)
    if failures := [failure for result in checks for failure in result.failures]:
        raise DatasetError(
            f"dataset: {run.job.dataset.source} fails {len(failures)} expectation(s) of the job's "
            f"suite: {'; '.join(failures)}"
        )


def _schema_of(data: Dataset) -> pa.Schema | None:
    return data.table.schema if isinstance(data, TabularData) else None


# -- train ----------------------------------------------------------------------------------------


def train(run: Run, *, dataset: DatasetRef) -> ModelRef:
    """Fit the job's model on the snapshot, or reuse one when the job asks to (the model of the same
    data, config and code: ``cached``; the last published one: ``latest``). Checkpoints live with
    the model's key, not the run: a retried task, or a new run after the process was killed, of
    the same data, config and code resumes where training stopped; they go once the model is saved."""
    job = run.job
    workspace = run.workspace()
    reused = _reusable_model(run, dataset, workspace)
    if reused is not None:
        return reused
    cls = model_class(job.dataset.modality, job.model.family)
    key = model_key(run, dataset)
    uri = f"models/{key}"
    if job.train.reuse == "cached" and workspace.exists(f"{uri}/fit.json"):
        log.info("train.reuse: cached: same data, model config and code as %s: not training", uri)
        fit = {**json.loads(workspace.read_bytes(f"{uri}/fit.json")), "cached": True}
        return ModelRef(uri=uri, family=cls.family, modality=cls.modality, key=key, fit=fit)
    if run.tables:
        model, fit = _relational().fit_tables(run, dataset, f"{uri}/checkpoints")
    else:
        streamed = _streamed_rows(run, dataset, workspace, cls.streams)
        data = streamed or _read_training_rows(run, dataset, workspace)
        rows = data.stream.rows if isinstance(data, TabularData) and data.stream else data.num_rows
        data = sampled(data, job.train.max_rows, job.train.seed)
        trained = rows if streamed is not None else data.num_rows
        if trained < rows:
            log.info("train.max_rows: training on %d of the %d rows, drawn by train.seed", trained, rows)
        model = cls(model_config_for(job), device=resolve_device(job.train.device))
        fit = model.fit(data, job.train, CheckpointStore(workspace, f"{uri}/checkpoints")).to_dict()
        fit.update(trained_rows=trained, training_rows=rows, streamed=streamed is not None)
    model.save(workspace, uri)
    workspace.write_bytes(f"{uri}/fit.json", json.dumps(fit).encode())  # last: the model is whole
    workspace.delete_tree(f"{uri}/checkpoints")
    return ModelRef(uri=uri, family=cls.family, modality=cls.modality, key=key, fit=fit)


def _relational() -> Any:
    """The stages of several tables (imported when needed: they import this module's helpers)."""
    from genai_pipeline import relational_stages

    return relational_stages


def model_key(run: Run, dataset: DatasetRef) -> str:
    """Dataset content + model config + training settings + code version → where the model lives."""
    job = run.job
    identity = {
        "dataset": dataset.fingerprint,
        "model": job.model.model_dump(mode="json"),
        "train": job.train.model_dump(mode="json", exclude={"reuse"}),  # how, not what, is trained
        "holdout": [job.validate_.holdout, job.validate_.holdout_max_rows],
        "privacy": [dataset.roles, job.dataset.value_protection.model_dump(mode="json")],
        "version": genai_pipeline.__version__,
    }
    if "keys" in dataset.schema:  # several tables: how they join is part of what is learned
        identity["keys"] = dataset.schema["keys"]
    if job.generate.constraints:  # the model learns the table as its constraints rewrite it
        identity["constraints"] = [rule.model_dump(mode="json") for rule in job.generate.constraints]
    tables = job.dataset.tables or {}
    if ruled := {
        n: [r.model_dump(mode="json") for r in t.constraints] for n, t in tables.items() if t.constraints
    }:
        identity["table_constraints"] = ruled  # each table's model learns it as its rules rewrite it
    return content_key(identity)


def _signature(dataset: dict[str, Any]) -> Any:
    """What a model depends on in a dataset (a ``DatasetRef`` as a dict): column names, types and
    roles, or image shape and labels."""
    schema = dataset["schema"]
    if "tables" in schema:
        tables = {name: _signature(table) for name, table in (dataset.get("tables") or {}).items()}
        return tables, schema.get("keys")
    if "columns" in schema:
        return [(column["name"], column["type"]) for column in schema["columns"]], dataset.get("roles", {})
    return [schema["height"], schema["width"], schema["channels"], schema["labels"]]


def _reusable_model(run: Run, dataset: DatasetRef, workspace: Storage) -> ModelRef | None:
    """The last published model when the job asks for it and it still fits the data."""
    job = run.job
    if job.train.reuse != "latest":
        return None
    if not workspace.exists(LATEST_MODEL):
        log.warning("train.reuse: latest, but no model was published yet: training one")
        return None
    latest = json.loads(workspace.read_bytes(LATEST_MODEL))
    model = ModelRef(**latest["model"])
    if (model.modality, model.family) != (job.dataset.modality, job.model.family):
        log.warning(
            "train.reuse: the latest model is a %s %s, the job wants %s: training one",
            model.modality,
            model.family,
            job.model.family,
        )
        return None
    if _signature(latest["dataset"]) != _signature(asdict(dataset)):
        log.warning(
            "train.reuse: the dataset's schema changed since run %s: training a new model", latest["run_id"]
        )
        return None
    log.info("train.reuse: generating from the model of run %s (%s)", latest["run_id"], model.uri)
    return ModelRef(**{**asdict(model), "fit": {**model.fit, "reused_from": latest["run_id"]}})


# -- generate -------------------------------------------------------------------------------------


def generate_shard(run: Run, *, model: ModelRef, dataset: DatasetRef, shard: int) -> GeneratedRef:
    """Stream one shard's samples into its own part file. A shard whose part file is already
    staged (a retried task) is not generated again: part files are written atomically, last."""
    if run.tables:
        return _relational().generate_tables(run, model=model)
    job = run.job
    storage = run.storage()
    part = run.staged(run.shard_part(shard))
    image_root = run.staging if model.modality == "image" else None
    constrained = model.modality == "tabular" and bool(job.generate.constraints)
    if storage.exists(part):
        with storage.open_read(part) as handle:
            rows = pq.ParquetFile(handle).metadata.num_rows
        log.info("shard %d: already staged (%d samples), not generated again", shard, rows)
        violations = {}
        if constrained:  # its rows are checked again: the verdict counts every row
            rules = shared_model(run.workspace(), model, resolve_device(job.train.device)).constraints
            batches = (with_names(batch, run.job_names()) for batch in _staged_batches(storage, part))
            violations = _violations(batches, rules)
        return GeneratedRef(
            data_file=part, num_samples=rows, seconds=0.0, image_root=image_root, violations=violations
        )
    synthesizer = shared_model(run.workspace(), model, resolve_device(job.train.device))
    tally: dict[str, int] = {}
    batches = _shard_batches(run, synthesizer, dataset, shard, tally if constrained else None)
    if batches is None:  # more shards than samples
        return GeneratedRef(data_file=None, num_samples=0, seconds=0.0, image_root=image_root)
    started = time.monotonic()
    violations: dict[str, int] = {}
    if constrained:
        batches = _counted(batches, synthesizer.constraints, violations)
    if names := run.published_names():
        batches = (with_names(batch, names) for batch in batches)
    with sampling_precision(synthesizer, job.generate.precision):  # the batches are drawn in here
        if model.modality == "tabular":
            count = write_parquet(batches, storage, part, metadata={RUN_ID_KEY: run.run_id.encode()})
        else:
            count = write_images(batches, storage, run, model_name=f"{model.family}:{model.key}", shard=shard)
    seconds = time.monotonic() - started
    return GeneratedRef(
        data_file=part,
        num_samples=count,
        seconds=seconds,
        image_root=image_root,
        violations=violations,
        drawn=tally.get("drawn", 0),
    )


def _shard_batches(
    run: Run, synthesizer: Any, dataset: DatasetRef, shard: int, tally: dict[str, int] | None
) -> Iterator[Any] | None:
    """One shard's batches, drawn as they are written: its share of the sampling plan, or of the
    seed rows to complete (``generate.complete``); None when it has nothing to draw. ``tally``
    counts rows drawn again for a constraint (:meth:`TabularSynthesizer.sample`)."""
    job = run.job
    if job.generate.complete is not None:
        seeds = read_snapshot(run.workspace(), run.private(SEED_ROWS), None)
        assert isinstance(seeds, TabularData), "seed rows are a table"
        if seed_shard(seeds.num_rows, 1, job.generate.shards, shard)[1] == 0:
            return None
        return completed_batches(synthesizer, seeds.table, job, shard)
    plan = shard_plan(job, dataset.schema["labels"], shard, _stored_counts(run))
    if not plan:
        return None
    batch_size = job.generate.batch_size
    if dataset.modality == "image":
        batch_size = image_batch_size(batch_size, synthesizer.shape, job.generate.max_batch_mb)
    extra: dict[str, Any] = {"tally": tally} if tally is not None else {}
    if job.generate.impute:
        extra["impute"] = job.generate.impute
    return itertools.chain.from_iterable(
        synthesizer.sample(count, conditions=conditions, seed=seed, batch_size=batch_size, rows=rows, **extra)
        for conditions, count, seed, rows in plan
    )


def _counted(
    batches: Iterable[pa.Table], constraints: Constraints, violations: dict[str, int]
) -> Iterator[pa.Table]:
    """The batches as they are, each checked against every constraint on its way to the file:
    ``violations`` adds up, per rule, the rows that break it."""
    for batch in batches:
        _add_counts(violations, constraints.violations(batch))
        yield batch


def _add_counts(total: dict[str, int], counts: Mapping[str, int]) -> None:
    """``counts`` added into ``total``, a key of none too (a rule no row broke is reported)."""
    for key, count in counts.items():
        total[key] = total.get(key, 0) + count


def _violations(batches: Iterable[pa.Table], constraints: Constraints) -> dict[str, int]:
    violations: dict[str, int] = {}
    for _ in _counted(batches, constraints, violations):
        pass
    return violations


def _staged_batches(storage: Storage, part: str) -> Iterator[pa.Table]:
    """A staged part file's row groups, one at a time."""
    with storage.open_read(part) as handle:
        parquet = pq.ParquetFile(handle)
        for index in range(parquet.num_row_groups):
            yield parquet.read_row_group(index)


def combine_shards(run: Run, shards: list[GeneratedRef]) -> GeneratedRef:
    """The shards' part files as the run's one data file, then the run's generation (the shards'
    seconds add up: the work, not the wall time). One file because it is published in one atomic
    step; one part is moved, several are streamed into one (``concat_parquet``). Safe to repeat:
    the data file is written atomically before the parts are removed."""
    if run.tables:  # one stream wrote every table's file
        return shards[0]
    storage = run.storage()
    data_file = run.staged(run.data_file)
    parts = [ref.data_file for ref in shards if ref.data_file is not None and ref.num_samples > 0]
    present = [part for part in parts if storage.exists(part)]
    if not storage.exists(data_file):
        if missing := [part for part in parts if part not in present]:  # never publish part of a run
            raise StorageError(f"{storage.url_of(missing[0])}: a shard's data is missing from staging")
        if len(present) == 1:
            storage.move([(present[0], data_file)])
        else:
            started = time.monotonic()
            rows = concat_parquet(storage, present, data_file)
            log.info("combined %d shards' %d rows in %.1f s", len(present), rows, time.monotonic() - started)
    storage.delete(part for part in present if storage.exists(part))
    count = sum(ref.num_samples for ref in shards)
    seconds = sum(ref.seconds for ref in shards)
    violations: dict[str, int] = {}
    for ref in shards:
        _add_counts(violations, ref.violations)
    log.info(
        "generated %d samples in %d shard(s), %.1f s of work (%.0f/s)",
        count,
        len(shards),
        seconds,
        count / max(seconds, 1e-9),
    )
    image_root = next((ref.image_root for ref in shards if ref.image_root), None)
    return GeneratedRef(
        data_file=data_file,
        num_samples=count,
        seconds=seconds,
        shards=len(shards),
        image_root=image_root,
        violations=violations,
        drawn=sum(ref.drawn for ref in shards),
    )


def generate(run: Run, *, model: ModelRef, dataset: DatasetRef) -> GeneratedRef:
    """Every shard, one after another (the flow maps shards over its task runner instead)."""
    shards = range(run.job.generate.shards)
    return combine_shards(run, [generate_shard(run, model=model, dataset=dataset, shard=i) for i in shards])


# -- validate -------------------------------------------------------------------------------------


def validate(
    run: Run, *, dataset: DatasetRef, generated: GeneratedRef, model: ModelRef | None = None
) -> QualityVerdict:
    """Run the job's GX suite and the metrics on a sample of the staged output; stage the results,
    Data Docs and the HTML report beside it, and return the verdict. ``model`` says what privacy
    budget training spent (needed when the job trains with privacy or gates on it)."""
    if run.tables:
        return _relational().validate_tables(run, dataset=dataset, generated=generated, model=model)
    job, spec, storage, workspace = run.job, run.job.validate_, run.storage(), run.workspace()
    if model is None and (job.train.privacy is not None or spec.max_epsilon is not None):
        raise ValueError("validate: the model is needed to judge the privacy budget it spent (model=)")
    quality = run.staged(run.quality)
    conditions = model_conditions(job)
    real = _validation_rows(run, dataset, workspace, model)  # a table's holdout comes with it (unseen)
    holdout = (
        read_snapshot(workspace, dataset.holdout, dataset.label)
        if dataset.holdout and isinstance(real, ImageData)
        else None
    )
    rules = fitted_constraints(real, job) if isinstance(real, TabularData) else Constraints()
    suite = job_suite(
        load_suite(storage.read_bytes(dataset.suite), "suite.json"),
        spec,
        conditions,
        real.modality,
        constraints=rules.checks(),
        imputed=job.generate.impute,
    )
    assert generated.data_file is not None, (
        "validate takes the run's data file (combine_shards), not a shard's"
    )
    limit = spec.sample_rows
    if real.modality == "image":  # the sample's images are decoded at once
        shape = (dataset.schema["height"], dataset.schema["width"], dataset.schema["channels"])
        limit = image_batch_size(limit, shape, job.generate.max_batch_mb, field="validate.sample_rows")
    sample = sample_rows(storage, [generated.data_file], limit, seed=job.generate_seed)
    if real.modality == "tabular":  # judged by the names the job gives its columns
        sample = with_names(sample, run.job_names())
    rows = MetricRows(run.run_id, spec)
    with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
        if isinstance(real, TabularData):
            held = real.unseen
            gx_result = check_data(suite, TabularData(sample, dataset.label), Path(docs))
            encoder = TableEncoder.fit(
                real.table, condition=real.label, roles=real.roles, protection=real.protection
            )
            charts = score_tables(
                rows,
                real.table,
                held,
                sample,
                target=dataset.label,
                conditions=conditions,
                per_label=job.generate.per_label is not None,
                seed=job.generate_seed,
                max_pairs=spec.max_pairs,
                rebalance=job.generate.rebalance,
                every=real.stream.each if real.stream is not None else None,
                privacy=TablePrivacy(
                    roles=real.roles or {},
                    protection=real.protection,
                    protected=dataset.protected,
                    public=encoder.public_view,
                    sensitive=spec.sensitive,
                    private=job.train.privacy is not None,
                    computed=frozenset(rules.formulas),
                ),
            )
        else:
            assert generated.image_root is not None, "an image run's images are below its image_root"
            synthetic = read_images(storage, generated.image_root, sample)
            gx_result = check_data(suite, synthetic, Path(docs))
            charts = score_images(
                rows,
                real,
                holdout if isinstance(holdout, ImageData) else None,
                synthetic,
                classifier=lambda: _label_classifier(run, dataset, real, workspace),
                min_rows=Protection.from_spec(job.dataset.value_protection).threshold,
                conditioned=bool(conditions),
                seed=job.generate_seed,
                cas_seed=job.train.seed,
                cas_steps=spec.classifier_steps,
            )
        harden_pages(Path(docs))  # GX renders names from the data raw: no script may run there
        storage.put_folder(Path(docs), f"{quality}/data_docs")
    add_spent_budget(rows, model, spec, "table" if real.modality == "tabular" else "images")
    add_adherence(rows, generated.violations, generated.num_samples, generated.drawn)
    if isinstance(real, TabularData):
        add_shares(rows, job.generate.rebalance, sample)
        if (fairness := job.generate.fairness) is not None:
            gaps = {"parity_gap_real": real.table, "parity_gap": sample}
            for metric, table in gaps.items():
                rows.add(
                    "fairness",
                    fairness.target,
                    metric,
                    parity_gap(table, fairness.target, fairness.sensitive),
                )
    if job.generate.complete is not None:
        per_seed = job.generate.complete.rows_per_seed
        rows.add("seed", None, "seed_rows_completed", generated.num_samples // per_seed)
        rows.add("seed", None, "rows_per_seed", per_seed)
    return stage_verdict(
        run,
        rows,
        gx_result,
        gx_result.payload,
        dataset=dataset,
        generated=generated,
        model=model,
        expectations=gx_result.payload,
        **charts,
    )


def add_shares(rows: MetricRows, rebalance: dict[str, dict[Any, float]], sample: pa.Table) -> None:
    """Per value ``generate.rebalance`` names, its share of the validated rows and the share asked."""
    for column, shares in rebalance.items():
        values = [str(value) for value in dense(sample.column(column)).to_pylist()]
        for value, share in shares.items():
            rows.add(
                "rebalance", f"{column}={value}", "share", values.count(str(value)) / max(len(values), 1)
            )
            rows.add("rebalance", f"{column}={value}", "share_asked", share)


def add_adherence(rows: MetricRows, violations: Mapping[str, int], generated: int, drawn: int = 0) -> None:
    """Per constraint, the share of the ``generated`` rows that follows it (``violations``: the
    rows that break each; gated by ``validate.min_constraint_adherence``), and the share of the
    rows ``drawn`` that a rule refused."""
    for label, broken in violations.items():
        rows.add("constraint", label, "constraint_adherence", 1 - broken / max(generated, 1))
    if drawn:
        rows.add("constraint", None, "rejected_share", 1 - generated / drawn)


def add_spent_budget(rows: MetricRows, model: ModelRef | None, spec: ValidateSpec, scope: str) -> None:
    """The privacy budget training spent, as a metric row (gated by ``validate.max_epsilon``):
    infinite for a model trained without one, which no guarantee covers."""
    if model is not None and (model.fit.get("privacy") or spec.max_epsilon is not None):
        rows.add(scope, None, "epsilon", (model.fit.get("privacy") or {}).get("epsilon", float("inf")))


def stage_verdict(
    run: Run,
    rows: MetricRows,
    checks: SuiteResult,
    results: Any,
    *,
    dataset: DatasetRef,
    generated: GeneratedRef,
    model: ModelRef | None,
    what: str = "",
    **report: Any,
) -> QualityVerdict:
    """The run's verdict from its metric rows and suite results, staged with them beside the
    data: ``expectations.json`` (``results``), ``metrics.parquet`` and the HTML report
    (``report``: the parts of :class:`ReportInput` the run has); logged, ``what`` saying over
    what the expectations ran."""
    storage, quality = run.storage(), run.staged(run.quality)
    verdict = judge(rows, checks, report_file=run.staged(run.report_file))
    storage.write_bytes(f"{quality}/expectations.json", json.dumps(results, indent=1, default=str).encode())
    write_table(rows.table(), storage, f"{quality}/metrics.parquet")
    content = ReportInput(
        title=f"{run.job.name} — {run.run_date}",
        status=verdict.status,
        summary=report_facts(run, dataset, generated, model),
        metrics=rows.rows,
        **report,
    )
    storage.write_bytes(verdict.report_file, render_report(content).encode())
    log.info(
        "validation %s: %d expectations%s, %d failed; %s",
        verdict.status,
        verdict.expectations_evaluated,
        what,
        verdict.expectations_failed,
        "; ".join(verdict.failures + verdict.warnings) or "all metrics within thresholds",
    )
    for warning in verdict.warnings:
        log.warning("quality warning (the run publishes, flagged): %s", warning)
    return verdict


def _label_classifier(run: Run, dataset: DatasetRef, real: ImageData, workspace: Storage) -> LabelClassifier:
    """The real-data label classifier behind the image metrics, kept in the workspace per dataset
    fingerprint, holdout and recipe (a nightly job on unchanged data trains it once)."""
    spec = run.job.validate_
    identity = [dataset.fingerprint, spec.holdout, spec.holdout_max_rows, spec.classifier_steps]
    folder = f"models/classifier-{content_key([*identity, genai_pipeline.__version__])}"
    return cached_classifier(
        workspace, folder, real, min_steps=spec.classifier_steps, seed=run.job.train.seed
    )


# -- export ---------------------------------------------------------------------------------------


def export(
    run: Run, *, dataset: DatasetRef, model: ModelRef, generated: GeneratedRef, verdict: QualityVerdict
) -> PublishedRun:
    """Publish the validated run (or refuse, naming the failed checks)."""
    return publish(run, dataset=dataset, model=model, generated=generated, verdict=verdict)
