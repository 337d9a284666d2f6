"""The stages of a job whose dataset is several tables joined by keys (``dataset.tables``).

:mod:`genai_pipeline.stages` hands a run of several tables to these; each does what its
single-table stage does, table by table, plus what only related tables have:

- **ingest** reads every table (through the same sources and cache, one cache folder per table),
  checks the keys (:func:`~genai_pipeline.relational.check_keys`), sets a holdout aside by whole
  entities (a held-out parent row takes its children along, so no training row's parent is held
  out) and stages a suite per table. The suite leaves the key columns out: keys are made fresh and
  point at the synthetic parents, which the relations' integrity gate checks instead.
- **train** fits a :class:`~genai_pipeline.models.relational.RelationalModel`, each table's model
  checkpointed on its own.
- **generate** streams every table into its own file in one pass (parents before their
  children, depth first: memory does not grow with the child tables), committing the last table's
  file last, so that file marks the run's output whole.
- **validate** runs each table's suite and metrics (with a ``table`` in every metric row) on a
  sample of whole entities (sampled parent rows and all their descendants), and the relations'
  metrics (:mod:`genai_pipeline.quality.relational`): integrity and children per parent over every
  key of the output, trends and sequences on the sample, and the privacy metrics on each
  child's rows joined with their parent's. Integrity below ``validate.min_referential_integrity``
  (1.0) fails the run.

Export is the single-table one: it publishes whatever the run staged below ``data/``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from genai_pipeline.columns import dense
from genai_pipeline.constraints import Constraints
from genai_pipeline.datasets.base import (
    TabularData,
    content_key,
    describe_schema,
    fingerprint,
    read_snapshot,
    split_holdout,
    write_snapshot,
)
from genai_pipeline.datasets.sources import read_source
from genai_pipeline.encoders.tabular import TableEncoder
from genai_pipeline.errors import DatasetError
from genai_pipeline.generation import sample_rows
from genai_pipeline.models.relational import RelationalModel, declared_columns, table_rules
from genai_pipeline.parquet import write_parquet_files
from genai_pipeline.privacy.protection import Protection
from genai_pipeline.privacy.roles import ColumnRole, column_roles
from genai_pipeline.quality.expectations import SuiteResult, check_data, job_suite, load_suite
from genai_pipeline.quality.gate import MetricRows
from genai_pipeline.quality.privacy import privacy_scores
from genai_pipeline.quality.relational import (
    RelationScores,
    children_per_parent,
    count_shape,
    joined_rows,
    relation_scores,
)
from genai_pipeline.quality.report import TableSection, harden_pages
from genai_pipeline.quality.scoring import TablePrivacy, score_tables
from genai_pipeline.quality.tabular import overall_pair_trend
from genai_pipeline.refs import DatasetRef, GeneratedRef, ModelRef, QualityVerdict
from genai_pipeline.relational import (
    Relations,
    TableSpec,
    as_declared,
    check_keys,
    key_type,
    resolves,
    with_names,
)
from genai_pipeline.runs import RUN_ID_KEY, SOURCE_CACHE, Run
from genai_pipeline.stages import (
    _add_counts,
    _check_schema,
    _PublicView,
    _stage_suite,
    add_adherence,
    add_spent_budget,
    stage_verdict,
)
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore, resolve_device

log = logging.getLogger(__name__)


#: what of a table's spec says how the tables join (a change trains a new model)
KEY_FIELDS = {"primary_key", "foreign_keys", "order_by", "entity"}


def _relations(run: Run) -> Relations:
    relations = run.job.dataset.relations
    assert relations is not None, "a run of several tables (dataset.tables)"
    return relations


# -- ingest ---------------------------------------------------------------------------------------


def ingest_tables(run: Run) -> DatasetRef:
    """Read, check, split and snapshot every table; stage a suite per table (see the module doc)."""
    job, checks = run.job, run.job.validate_
    relations = _relations(run)
    resolve_device(job.train.device)
    started = time.monotonic()
    workspace = run.workspace()
    raw = {name: _read_table(run, name, workspace) for name in relations.order}
    tables, report = check_keys(raw, relations)
    for name, dropped in report.dropped.items():
        log.warning("dataset.tables.%s: %d rows left out (on_orphans: drop)", name, dropped)
    schemas = {name: describe_schema(TabularData(table, None), labels=[]) for name, table in tables.items()}
    keys = {name: spec.model_dump(mode="json", include=KEY_FIELDS) for name, spec in relations.tables.items()}
    _check_schema(run, {"tables": schemas, "keys": keys}, workspace)
    prints = {name: fingerprint(TabularData(tables[name], None)) for name in relations.order}
    key = content_key(prints)
    train, holdout = split_tables(tables, relations, checks.holdout, checks.holdout_max_rows, key=key)
    protection = Protection.from_spec(job.dataset.value_protection)
    refs = {}
    for name in relations.order:
        spec = relations.tables[name]
        table_rules(relations, name, train[name], protection)  # a rule the rows break fails here
        own, held = _own(train[name], spec), _own(holdout[name], spec)
        roles = column_roles(own, declared_columns(spec), None, where=f"dataset.tables.{name}.columns")
        keyless = [column for column in own.column_names if column != spec.primary_key]
        view = _PublicView.of(
            TabularData(
                own.select(keyless),
                None,
                roles={column: role for column, role in roles.items() if column != spec.primary_key},
                protection=protection,
                unseen=held.select(keyless),
            )
        )
        suite = run.staged(f"{run.quality}/{name}/suite.json")
        _stage_suite(
            run,
            TabularData(own.select(keyless), None),
            view,
            round(tables[name].num_rows * job.generate.scale),
            suite,
        )
        snapshot = run.private(f"input/{name}/dataset.parquet")
        held_snapshot = run.private(f"input/{name}/holdout.parquet")
        write_snapshot(TabularData(train[name], None), workspace, snapshot)
        write_snapshot(TabularData(holdout[name], None), workspace, held_snapshot)
        refs[name] = DatasetRef(
            source=spec.uri,
            snapshot=snapshot,
            modality="tabular",
            fingerprint=prints[name],
            num_rows=tables[name].num_rows,
            schema=schemas[name],
            label=None,
            suite=suite,
            holdout=held_snapshot,
            holdout_rows=holdout[name].num_rows,
            roles={column: role.to_dict() for column, role in roles.items()},
            protected=view.protected,
        )
    ref = DatasetRef(
        source=job.dataset.source,
        snapshot=run.private("input"),
        modality="tabular",
        fingerprint=key,
        num_rows=sum(table.num_rows for table in tables.values()),
        schema={"tables": schemas, "keys": keys},
        label=None,
        suite=run.staged(run.quality),
        holdout_rows=sum(table.num_rows for table in holdout.values()),
        roles={
            f"{name}.{column}": role for name, table in refs.items() for column, role in table.roles.items()
        },
        protected={
            f"{name}.{c}": count for name, table in refs.items() for c, count in table.protected.items()
        },
        tables=refs,
    )
    log.info(
        "ingested %s (fingerprint %s, %d rows held out) in %.1f s",
        ", ".join(f"{name}: {table.num_rows} rows" for name, table in tables.items()),
        key,
        ref.holdout_rows,
        time.monotonic() - started,
    )
    return ref


def _read_table(run: Run, name: str, workspace: Storage) -> pa.Table:
    data = read_source(run.job.dataset.table(name), workspace, f"{SOURCE_CACHE}/{name}")
    if not isinstance(data, TabularData):
        raise DatasetError(f"dataset.tables.{name}.uri: {data.modality} data, not a table")
    columns = (run.job.dataset.tables or {})[name].columns
    table = as_declared(data.table, columns, f"dataset.tables.{name}.columns")
    run.check_columns(table.column_names, f"dataset.tables.{name}", name)
    return table


def _own(table: pa.Table, spec: TableSpec) -> pa.Table:
    """A table without its foreign keys: the columns a suite and the per-table metrics compare
    (a foreign key holds the parent's key, made fresh: the relations' metrics judge it)."""
    return table.drop_columns([key.column for key in spec.foreign_keys])


def split_tables(
    tables: dict[str, pa.Table], relations: Relations, share: float, max_rows: int, *, key: str
) -> tuple[dict[str, pa.Table], dict[str, pa.Table]]:
    """``(training tables, holdout tables)`` split by whole entities: the rows of each table without
    a context parent (or, for a table with an ``entity``, its entities) are split as a single table
    is (:func:`~genai_pipeline.datasets.base.split_holdout`, drawn from ``key``), and every other
    row goes where its context parent went, so a model never learns a child of a held-out row."""
    expanded, data = relations.with_entities(tables)
    train: dict[str, pa.Table] = {}
    holdout: dict[str, pa.Table] = {}
    for name in expanded.order:
        table, context = data[name], expanded.context[name]
        if context is None:
            kept, held = split_holdout(
                TabularData(table, None), share, max_rows, key=content_key([key, name])
            )
            assert isinstance(kept, TabularData) and (held is None or isinstance(held, TabularData))
            train[name] = kept.table
            holdout[name] = held.table if held is not None else table.slice(0, 0)
            continue
        primary = expanded.tables[context.references].primary_key or ""
        trained = resolves(table.column(context.column), train[context.references].column(primary), False)
        train[name], holdout[name] = table.filter(trained), table.filter(pc.invert(trained))
    return {n: train[n] for n in relations.order}, {n: holdout[n] for n in relations.order}


def read_tables(workspace: Storage, dataset: DatasetRef, *, held: bool = False) -> dict[str, pa.Table]:
    """The training snapshots of every table (``held``: the holdouts)."""
    tables = {}
    for name, ref in dataset.tables.items():
        data = read_snapshot(workspace, (ref.holdout or "") if held else ref.snapshot, None)
        assert isinstance(data, TabularData)
        tables[name] = data.table
    return tables


# -- train ----------------------------------------------------------------------------------------


def fit_tables(run: Run, dataset: DatasetRef, checkpoints: str) -> tuple[RelationalModel, dict[str, object]]:
    """A model per table on the training snapshots, each checkpointed below ``checkpoints/<table>``
    in the workspace; the model and its fit report (the tables' steps and seconds added up, and
    each table's own report)."""
    job, workspace = run.job, run.workspace()
    model = RelationalModel.fit(
        read_tables(workspace, dataset),
        _relations(run),
        family=job.model.family,
        params=job.model.params,
        train=job.train,
        protection=Protection.from_spec(job.dataset.value_protection),
        unseen=read_tables(workspace, dataset, held=True),
        checkpoints=lambda name: CheckpointStore(workspace, f"{checkpoints}/{name}"),
    )
    reports = model.reports
    fit = {
        "steps": sum(report["steps"] for report in reports.values()),
        "seconds": sum(report["seconds"] for report in reports.values()),
        "device": str(resolve_device(job.train.device)),
        "tables": reports,
    }
    return model, fit


# -- generate -------------------------------------------------------------------------------------


def generate_tables(run: Run, *, model: ModelRef) -> GeneratedRef:
    """Every table into its staged file in one stream. The run's data file (the last table's) is
    committed last, so a retried task that finds it staged finds every table staged."""
    job, storage = run.job, run.storage()
    files = {name: run.staged(run.table_file(name)) for name in reversed(run.tables)}
    if storage.exists(run.staged(run.data_file)):
        counts = {}
        for name, rel in files.items():
            with storage.open_read(rel) as handle:
                counts[name] = pq.ParquetFile(handle).metadata.num_rows
        log.info("tables already staged (%s), not generated again", _rows(counts))
        return GeneratedRef(run.staged(run.data_file), sum(counts.values()), 0.0, tables=counts)
    synthesizer = RelationalModel.load(run.workspace(), model.uri, resolve_device(job.train.device))
    started = time.monotonic()
    batches = synthesizer.stream(
        seed=job.generate_seed, scale=job.generate.scale, batch_size=job.generate.batch_size
    )
    names = {name: run.published_names(name) for name in files}
    violations = {  # a rule no row breaks is reported too
        f"{name}: {rule.label()}": 0
        for name, rules in synthesizer.constraints.items()
        for rule in rules.rules
    }
    counted = (
        (name, _counted_rows(name, table, synthesizer.constraints, violations)) for name, table in batches
    )
    counts = write_parquet_files(
        ((name, with_names(table, names[name])) for name, table in counted),
        storage,
        {
            name: (rel, with_names(synthesizer.layouts[name].schema.empty_table(), names[name]).schema)
            for name, rel in files.items()
        },
        metadata={RUN_ID_KEY: run.run_id.encode()},
    )
    seconds = time.monotonic() - started
    counts = {name: counts[name] for name in run.tables}
    total = sum(counts.values())
    log.info("generated %s in %.1f s (%.0f rows/s)", _rows(counts), seconds, total / max(seconds, 1e-9))
    return GeneratedRef(run.staged(run.data_file), total, seconds, tables=counts, violations=violations)


def _counted_rows(
    name: str, table: pa.Table, rules: dict[str, Constraints], violations: dict[str, int]
) -> pa.Table:
    """``table`` (of table ``name``) as it is, its rows checked against the table's rules on the
    way to its file: ``violations`` adds up per ``<table>: <rule>``."""
    if name in rules:
        _add_counts(
            violations, {f"{name}: {label}": count for label, count in rules[name].violations(table).items()}
        )
    return table


def _rows(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {rows} rows" for name, rows in counts.items())


# -- validate -------------------------------------------------------------------------------------


def validate_tables(
    run: Run, *, dataset: DatasetRef, generated: GeneratedRef, model: ModelRef | None
) -> QualityVerdict:
    """Each table's suite and metrics, and the relations' metrics; the report and the verdict
    (see the module doc)."""
    job, spec, storage, workspace = run.job, run.job.validate_, run.storage(), run.workspace()
    relations = _relations(run)
    quality = run.staged(run.quality)
    real, held = read_tables(workspace, dataset), read_tables(workspace, dataset, held=True)
    files = {name: run.staged(run.table_file(name)) for name in run.tables}
    synthetic = sample_entities(storage, files, relations, spec.sample_rows, seed=job.generate_seed)
    synthetic = {name: with_names(table, run.job_names(name)) for name, table in synthetic.items()}
    protection = Protection.from_spec(job.dataset.value_protection)
    rows = MetricRows(run.run_id, spec)
    results: list[SuiteResult] = []
    sections: dict[str, TableSection] = {}
    for name in relations.order:
        ref, table_spec = dataset.tables[name], relations.tables[name]
        own_real, own_held, own_synthetic = (
            _own(tables[name], table_spec) for tables in (real, held, synthetic)
        )
        roles = {column: ColumnRole(**role) for column, role in ref.roles.items()}
        rules = table_rules(relations, name, real[name], protection)
        suite = job_suite(
            load_suite(storage.read_bytes(ref.suite), "suite.json"),
            spec,
            {},
            "tabular",
            constraints=rules.checks(),
        )
        with tempfile.TemporaryDirectory(prefix="data-docs-") as docs:
            keyless = [column for column in own_synthetic.column_names if column != table_spec.primary_key]
            result = check_data(suite, TabularData(own_synthetic.select(keyless), None), Path(docs))
            harden_pages(Path(docs))
            storage.put_folder(Path(docs), f"{quality}/{name}/data_docs")
        results.append(_named(result, name))
        encoder = TableEncoder.fit(own_real, condition=None, roles=roles, protection=protection)
        charts = score_tables(
            rows.of_table(name),
            own_real,
            own_held if own_held.num_rows else None,
            own_synthetic,
            target=None,
            conditions={},
            per_label=False,
            seed=job.generate_seed,
            max_pairs=spec.max_pairs,
            privacy=TablePrivacy(
                roles=roles, protection=protection, protected=ref.protected, public=encoder.public_view
            ),
        )
        sections[name] = TableSection(charts["real"], charts["synthetic"], result.payload)
        prefix = f"{name}: "
        mine = {k.removeprefix(prefix): v for k, v in generated.violations.items() if k.startswith(prefix)}
        add_adherence(rows.of_table(name), mine, (generated.tables or {}).get(name, 0))
    learned = {name: _learned(dataset.tables[name], relations.tables[name]) for name in relations.order}
    scores = relation_scores(
        {name: table.select(learned[name]) for name, table in real.items()},
        {name: table.select(learned[name]) for name, table in synthetic.items()},
        relations,
    )
    _whole_keys(scores, real, storage, files, relations)
    _add_relation_rows(rows, scores)
    _joined_privacy(
        rows,
        [{n: t.select(learned[n]) for n, t in side.items()} for side in (real, held, synthetic)],
        relations,
        job.generate_seed,
    )
    add_spent_budget(rows, model, spec, "table")
    combined = SuiteResult(
        failures=[failure for result in results for failure in result.failures],
        warnings=[warning for result in results for warning in result.warnings],
        payload={
            "results": {"expectations": [e for r in results for e in r.payload["results"]["expectations"]]}
        },
    )
    return stage_verdict(
        run,
        rows,
        combined,
        {name: section.expectations for name, section in sections.items()},
        dataset=dataset,
        generated=generated,
        model=model,
        what=f" over {len(sections)} tables",
        tables=sections,
    )


def _learned(ref: DatasetRef, spec: TableSpec) -> list[str]:
    """A table's keys and the columns its model learns value by value: what the relations'
    metrics compare (fresh personal data has no trend to keep; text is scored per table)."""
    fresh = {column for column, role in ref.roles.items() if role["role"] in ("id", "pii", "text")}
    columns = [field["name"] for field in ref.schema["columns"]]
    return [c for c in columns if c not in fresh or c == spec.primary_key]


def _named(result: SuiteResult, table: str) -> SuiteResult:
    """A table's suite result with its failures naming the table."""
    return SuiteResult(
        failures=[f"{table}: {failure}" for failure in result.failures],
        warnings=[f"{table}: {warning}" for warning in result.warnings],
        payload=result.payload,
    )


def sample_entities(
    storage: Storage, files: dict[str, str], relations: Relations, limit: int, *, seed: int
) -> dict[str, pa.Table]:
    """A sample of whole entities of the output: at most ``limit`` rows drawn (seeded) from each
    table without a context parent (:func:`~genai_pipeline.generation.sample_rows`: from row groups
    spread over the file, at a cost bounded by ``limit``), and every descendant of those rows,
    read in batches (only the sampled rows' keys are held)."""
    sample: dict[str, pa.Table] = {}
    for name in relations.order:
        with storage.open_read(files[name]) as handle:
            reader = pq.ParquetFile(handle)
            context = relations.context[name]
            if context is None:
                table = sample_rows(storage, [files[name]], limit, seed=seed)
            else:
                primary = relations.tables[context.references].primary_key or ""
                keys = sample[context.references].column(primary)
                parts = [
                    batch.filter(resolves(batch.column(context.column), keys, False))
                    for batch in (pa.Table.from_batches([b]) for b in reader.iter_batches(65_536))
                ]
                table = pa.concat_tables(parts) if parts else reader.schema_arrow.empty_table()
        sample[name] = table
    return sample


def _whole_keys(
    scores: list[RelationScores],
    real: dict[str, pa.Table],
    storage: Storage,
    files: dict[str, str],
    relations: Relations,
) -> None:
    """Integrity and children per parent over every key of the output, in place of the sample's
    (a matched key points at any parent row, sampled or not). The parent's keys are held, the
    child's are read in batches: a child table of any size is counted in bounded memory."""
    for score in scores:
        primary = relations.tables[score.parent].primary_key or ""
        context = relations.context[score.child]
        optional = context is None or context.column != score.column
        with storage.open_read(files[score.parent]) as handle:
            parents = dense(pq.ParquetFile(handle).read(columns=[primary]).column(0))
        common = key_type(parents.type)
        index = pd.Index(parents.cast(common).to_pandas())  # hashed once, looked up per batch
        counts = np.zeros(len(index), np.int64)
        resolved = total = 0
        with storage.open_read(files[score.child]) as handle:
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=1 << 20, columns=[score.column]):
                keys = batch.column(0).cast(common)
                position = index.get_indexer(keys.to_pandas())
                found = position >= 0
                counts += np.bincount(position[found], minlength=len(index))
                resolved += int(found.sum()) + (keys.null_count if optional else 0)
                total += len(keys)
        score.integrity = resolved / total if total else 1.0
        real_counts = children_per_parent(
            real[score.parent].column(primary), real[score.child].column(score.column)
        )
        score.cardinality = count_shape(real_counts, counts)


def _joined_privacy(
    rows: MetricRows, sides: list[dict[str, pa.Table]], relations: Relations, seed: int
) -> None:
    """DCR share and memorisation on each child's rows joined with their parent's (``sides``:
    training, holdout and synthetic tables), gated as a single table's are: a child row may be
    new on its own and still copy a real one together with its parent's columns."""
    for child in relations.order:
        key = relations.context[child]
        if key is None:
            continue
        train, holdout, synthetic = (joined_rows(tables, relations, child) for tables in sides)
        if not train.num_columns or min(train.num_rows, holdout.num_rows, synthetic.num_rows) == 0:
            continue
        scores = privacy_scores(train, holdout, synthetic, seed=seed)
        name = f"{child}.{key.column} → {key.references}"
        rows.add("relation", name, "dcr_share", scores.dcr_share)
        rows.add("relation", name, "memorised_share", scores.memorised_share)


def _add_relation_rows(rows: MetricRows, scores: list[RelationScores]) -> None:
    """The relations' metric rows, scope ``relation``, each naming its key (``child.column → parent``)."""
    for score in scores:
        values = {
            "referential_integrity": score.integrity,
            "cardinality_shape": score.cardinality,
            "parent_child_trends": overall_pair_trend(score.pair_trends) if score.pair_trends else None,
            "sequence_order": score.order,
            "gap_shape": score.gaps,
        }
        for metric, value in values.items():
            if value is not None:
                rows.add("relation", score.name, metric, value)
        for column, value in score.autocorrelation.items():
            rows.add("relation", f"{score.name}: {column}", "autocorrelation", value)
