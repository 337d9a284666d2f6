"""Whole databases: a model per table, each child table generated per row of its context parent,
keys made fresh and every foreign key resolving.

**How a table is learned** (:func:`training_table`). Its key columns are not learned: the primary
key is declared an identifier, so the model makes it fresh (unique, in the real format, never a
real value), and foreign keys are set to the synthetic parents' keys. A table that is the context
parent of others learns with each row how many children it has (``__children__.<table>``), so the
count follows the parent's columns (a premium customer's many orders), and where the mean of each
of its children's numeric columns lies among the parents' (``__level__.<table>.<column>``, one of
:data:`LEVELS` equal shares): what the children share, drawn once per parent (a plane that is
often late). A child table learns each row given its parent row's learned columns and those
levels (``__parent__.<column>``), its position among its
siblings (``__position__``), how many they are (``__siblings__``: a busy plane's flights are
closer together) and, when ordered (``order_by``), the previous sibling's columns
(``__previous__.<column>``): these come first in the table, so the autoregressive family, which
models columns in order, conditions on them exactly (MOSTLY AI's TabularARGN does the same with
its context). The order column is learned as the first sibling's value (``__first__``) and each
later sibling's gap to the one before (``__gap__``, never below the smallest real gap), so the
events come out in order with gaps like the real ones.

**How it is sampled** (:meth:`RelationalModel.stream`). Tables without a context parent are sampled
as single tables (as many rows as the real one, times ``scale``), in batches. For each batch, its
child rows are made for slices of it, one position at a time: position 0 of every parent in the
slice that has a child, then position 1 of every parent that has two, each row given its parent's
columns and its previous sibling's, so a slice takes as many model calls as its longest sequence;
then their children, depth first. Memory stays flat however large a child table is (measured in
BENCHMARKS.md). A matched (non-context) foreign key points at a synthetic parent row drawn at
random, in proportion to a count the parent's model learns with each row (how many rows of the
child point at it: ``__matched__.<table>.<column>``), so the tables it points at are made first
and their keys and counts kept.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from genai_pipeline.columns import dense, is_numeric, quantum, schema_from_text, schema_to_text, to_float
from genai_pipeline.config import TrainSpec
from genai_pipeline.constraints import Constraints
from genai_pipeline.datasets.base import TabularData
from genai_pipeline.encoders.tabular import RowStream
from genai_pipeline.errors import ConfigError
from genai_pipeline.models import model_class
from genai_pipeline.models.base import load_model
from genai_pipeline.models.tabular import TabularSynthesizer
from genai_pipeline.privacy.protection import Protection, protect_numbers
from genai_pipeline.privacy.roles import ColumnRole, column_roles
from genai_pipeline.quality.relational import children_per_parent
from genai_pipeline.relational import ColumnSpec, Relations, TableSpec, declared, parent_rows
from genai_pipeline.storage import Storage
from genai_pipeline.training import CheckpointStore, resolve_device

PARENT, POSITION, PREVIOUS = "__parent__.", "__position__", "__previous__."
FIRST, GAP, CHILDREN = "__first__", "__gap__", "__children__."
MATCHED, SIBLINGS, LEVEL = "__matched__.", "__siblings__", "__level__."
_RESERVED = "__"
#: a parent's level of its children's column: which of this many equal shares of the parents its
#: children's mean is in. A level, not the mean: given the mean, a child of a parent with few
#: children copied it, from the parent's model, whose joint of those means is coarser than the
#: child's own (NYC flights: the flights' pair trends fell from 0.91 to 0.89; with levels they kept)
LEVELS = 5


@dataclass
class TableLayout:
    """What one table's model learns besides its own columns (see the module's doc)."""

    name: str
    schema: pa.Schema
    #: the context parent's columns a row is given (empty: not a child)
    parent_columns: list[str] = field(default_factory=list)
    #: the table's own columns a row is given from its previous sibling (ordered children only)
    previous_columns: list[str] = field(default_factory=list)
    #: the tables whose context parent this is, in order: a count column each
    children: list[str] = field(default_factory=list)
    #: per row, the level of these of its children's numeric columns (``child.column``): given to
    #: the children, so siblings share a level as the real ones do rather than each following only
    #: the one before (a chain drifts: its lag-1 autocorrelation came out above the real one)
    levels: list[str] = field(default_factory=list)
    #: the columns the model learns (not made fresh): what a child may be given
    learned: list[str] = field(default_factory=list)
    #: per matched (non-context) foreign key, the share of real rows without a parent (null)
    unmatched: dict[str, float] = field(default_factory=dict)
    #: the matched keys into this table (``child.column``): a count column each, how many rows of
    #: the child point at the row, by which the synthetic rows are drawn for that key
    matched: list[str] = field(default_factory=list)
    #: an ordered child's order values lie within these (protected: means of the ``min_rows``
    #: smallest and largest real values); gaps summed past the real window are clipped to it
    order_range: tuple[float, float] | None = None
    #: whether the real order column holds nulls (else a first value drawn null is redrawn)
    order_nulls: bool = True


@dataclass
class RelationalModel:
    """A trained model per table and how their rows join."""

    #: the schema with each entity a table of its own (:meth:`Relations.with_entities`)
    relations: Relations
    #: None for a table without rows
    models: dict[str, TabularSynthesizer | None]
    layouts: dict[str, TableLayout]
    #: real rows per table, held-out ones included: what ``stream``'s ``scale`` multiplies
    rows: dict[str, int]
    #: the tables sampled for the user, parents first (not the entity tables)
    published: list[str]
    #: how each table's training went (:class:`~genai_pipeline.training.FitReport` as a dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: each table's rules (``constraints``), fitted on its real rows: learned through the table's
    #: model as :meth:`Constraints.forward` rewrites them, drawn back once a row is whole
    constraints: dict[str, Constraints] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        real: Mapping[str, pa.Table],
        relations: Relations,
        *,
        family: str,
        params: Mapping[str, Any] | None = None,
        train: TrainSpec,
        protection: Protection | None = None,
        unseen: Mapping[str, pa.Table] | None = None,
        checkpoints: Callable[[str], CheckpointStore] | None = None,
    ) -> RelationalModel:
        """Fit a model of ``family`` to every table, parents first. ``real`` holds tables whose
        keys passed :func:`~genai_pipeline.relational.check_keys`; ``protection`` is the job's value
        protection, ``unseen`` real rows kept from training (a holdout) whose values the columns
        made fresh avoid too; ``checkpoints`` gives each table's model its checkpoint store, so a
        killed fit resumes (a table already trained finishes at once)."""
        if train.privacy is not None:
            raise ConfigError(
                "train.privacy: not for several tables yet: a parent's row reaches its children's "
                "training too, so a per-table budget would not bound what one entity reveals"
            )
        published = list(relations.order)
        relations, real = relations.with_entities(real)
        cls_ = model_class("tabular", family)
        models, layouts, reports = {}, {}, {}
        for name, table in real.items():
            _refuse_reserved(name, table)
        schemas = {name: table.schema for name, table in real.items()}
        rules = {
            name: table_rules(relations, name, table, protection or Protection())
            for name, table in real.items()
        }
        real = {name: rules[name].forward(table) if rules[name] else table for name, table in real.items()}
        shown = dict(real)  # a table trained on: its learned columns as its model may emit them
        for name in relations.order:
            table, spec = real[name], relations.tables[name]
            own = _own_columns(spec, table.column_names)
            context = relations.context[name]
            if context is not None and not cls_.completes_rows:
                raise ConfigError(
                    f"model.family: {family} cannot generate {name} per row of {context.references} "
                    "(the autoregressive, VAE and diffusion families can)"
                )
            parent = None if context is None else layouts[context.references]
            layout = TableLayout(
                name,
                schemas[name],
                parent_columns=[]
                if parent is None
                else parent.learned + [LEVEL + e for e in parent.levels if e.split(".", 1)[0] == name],
                previous_columns=own if spec.order_by else [],
                children=relations.children(name),
                levels=[
                    f"{child}.{column}"
                    for child in relations.children(name)
                    for column in _leveled(relations.tables[child], real[child], child)
                ],
                matched=[
                    f"{child}.{key.column}"
                    for child in relations.order
                    for key in relations.tables[child].foreign_keys
                    if key.references == name and key is not relations.context[child]
                ],
                unmatched={
                    key.column: table.column(key.column).null_count / max(table.num_rows, 1)
                    for key in spec.foreign_keys
                    if key is not context
                },
            )
            if spec.order_by is not None and context is not None:
                layout.order_range = _protected_range(table.column(spec.order_by), protection or Protection())
                layout.order_nulls = table.column(spec.order_by).null_count > 0
            training = training_table(shown, relations, layout)
            roles = _training_roles(training, spec, rules[name], name)
            text = {column for column in own if column in roles and roles[column].role == "text"}
            if text & set(layout.previous_columns):  # a row is not given its previous sibling's text
                layout.previous_columns = [c for c in layout.previous_columns if c not in text]
                training = training_table(shown, relations, layout)
                roles = _training_roles(training, spec, rules[name], name)
            # not learned value by value: fresh columns and text (written last), which a child is
            # not given of its parent either
            layout.learned = [column for column in own if not (column in roles and roles[column].unlearned)]
            model = None  # a table without rows has nothing to learn: it comes out empty
            if table.num_rows:
                model = cls_(
                    cls_.Config.model_validate(dict(params or {})), device=resolve_device(train.device)
                )
                given = tuple(
                    c
                    for c in training.column_names
                    if c.startswith((PARENT, PREVIOUS)) or c in (POSITION, SIBLINGS)
                )
                held = (unseen or {}).get(name)
                data = TabularData(
                    training,
                    None,
                    roles=roles,
                    given=given,
                    protection=protection or Protection(),
                    unseen=None
                    if held is None
                    else held.select([c for c in held.column_names if c in training.column_names]),
                )
                report = model.fit(data, train, checkpoints(name) if checkpoints else None)
                reports[name] = report.to_dict()
                # a child is given its parent's columns as the parent's model makes them: a type
                # that few planes have is protected in the planes, however many flights it has
                view = model.encoder.public_view(table.select(layout.learned))
                shown[name] = pa.table(
                    {
                        c: view.column(c) if c in view.column_names else table.column(c)
                        for c in table.column_names
                    }
                )
            models[name], layouts[name] = model, layout
        # as many rows as the real table, the rows held out of training included
        rows = {name: real[name].num_rows + len((unseen or {}).get(name, [])) for name in relations.order}
        return cls(
            relations, models, layouts, rows, published, reports, {n: r for n, r in rules.items() if r}
        )

    def save(self, storage: Storage, rel: str) -> None:
        """Each table's model in ``rel/<table>/`` (as any model is saved: JSON and safetensors), and
        the schema, layouts and row counts in ``rel/relational.json``, written last: a folder
        without it is no model. Schemas go as Arrow IPC bytes: nothing is pickled."""
        for name, model in self.models.items():
            if model is not None:
                model.save(storage, f"{rel}/{name}")
        layouts = {
            name: {
                **asdict(layout),
                "schema": schema_to_text(layout.schema),
            }
            for name, layout in self.layouts.items()
        }
        state = {
            "tables": {name: spec.model_dump(mode="json") for name, spec in self.relations.tables.items()},
            "layouts": layouts,
            "rows": self.rows,
            "published": self.published,
            "trained": [name for name, model in self.models.items() if model is not None],
            "constraints": {name: rules.to_state() for name, rules in self.constraints.items()},
        }
        storage.write_bytes(f"{rel}/relational.json", json.dumps(state).encode())

    @classmethod
    def load(cls, storage: Storage, rel: str, device: torch.device) -> RelationalModel:
        """A model :meth:`save` wrote."""
        state = json.loads(storage.read_bytes(f"{rel}/relational.json"))
        relations = Relations.of(
            {name: TableSpec.model_validate(spec) for name, spec in state["tables"].items()}
        )
        layouts = {}
        for name, layout in state["layouts"].items():
            schema = schema_from_text(layout["schema"])
            layouts[name] = TableLayout(**{**layout, "schema": schema})
        models: dict[str, TabularSynthesizer | None] = {name: None for name in relations.order}
        for name in state["trained"]:
            model = load_model(storage, f"{rel}/{name}", device)
            assert isinstance(model, TabularSynthesizer)
            models[name] = model
        constraints = {
            name: Constraints.from_state(rules) for name, rules in state.get("constraints", {}).items()
        }  # none in a model saved before tables had rules
        return cls(relations, models, layouts, state["rows"], state["published"], constraints=constraints)

    def sample(self, *, seed: int, scale: float = 1.0, batch_size: int = 65_536) -> dict[str, pa.Table]:
        """Every table whole: :meth:`stream`'s batches put together."""
        batches: dict[str, list[pa.Table]] = {name: [] for name in self.published}
        for name, batch in self.stream(seed=seed, scale=scale, batch_size=batch_size):
            batches[name].append(batch)
        return {
            name: pa.concat_tables(parts) if parts else self.layouts[name].schema.empty_table()
            for name, parts in batches.items()
        }

    def stream(
        self, *, seed: int, scale: float = 1.0, batch_size: int = 65_536
    ) -> Iterator[tuple[str, pa.Table]]:
        """Every table as ``(name, batch)`` pairs in the real schemas, each batch of a parent before
        its children's. Tables without a context parent come in batches of ``batch_size`` rows
        (``scale`` times their real rows in all); each batch's children are made for slices of it
        small enough that a child batch stays near ``batch_size`` rows, and theirs in turn, depth
        first: however large a child table, it is never held whole. Only the keys of tables that a
        matched key points at are kept, whole, so those tables come first."""
        walk = _Walk(self, seed, batch_size)
        for name in walk.roots():
            model = self.models[name]
            if model is None:
                continue
            rows = max(1, round(self.rows[name] * scale))
            walk.totals[name] = rows
            for batch in model.sample(rows, conditions=None, seed=walk.key(name), batch_size=batch_size):
                yield from walk.descend(name, batch)

    def children_of(self, name: str, parents: pa.Table, key: int, rows: RowStream) -> pa.Table:
        """The child rows ``name`` of synthetic ``parents``, one position at a time, as rows
        ``rows.first …`` of the run's ``rows.total`` (fresh keys)."""
        layout, model = self.layouts[name], self.models[name]
        assert model is not None
        # a parent drawn with a value that no real parent with children had (an inactive
        # customer, whose nulls only childless rows hold) gets none: the child's model never saw it
        inherited = pa.table({PARENT + column: parents.column(column) for column in layout.parent_columns})
        counts = _counts(parents, name)
        if inherited.num_columns:
            counts = np.where(model.encoder.known(inherited), counts, 0)
        pieces, alive_before, previous, offset = [], np.zeros(0, np.int64), None, rows.first
        for position in range(max(int(counts.max(initial=0)), 1)):  # position 0 even for none
            alive = np.flatnonzero(counts > position)
            given = {column: inherited.column(column).take(alive) for column in inherited.column_names}
            given[POSITION] = pa.array(np.full(len(alive), position, np.int64))
            given[SIBLINGS] = pa.array(counts[alive])
            if previous is not None:
                before = np.searchsorted(alive_before, alive)
                for column in layout.previous_columns:
                    given[PREVIOUS + column] = previous.column(column).take(before)
            stream = RowStream(rows.key, offset, rows.total)
            piece = model.complete(pa.table(given), seed=key * 1_000_003 + position, rows=stream)
            pieces.append(piece.append_column("__parent_row__", pa.array(alive)))
            previous, alive_before, offset = piece, alive, offset + len(alive)
        table = pa.concat_tables(pieces).sort_by([("__parent_row__", "ascending"), (POSITION, "ascending")])
        context = self.relations.context[name]
        assert context is not None
        order_by = self.relations.tables[name].order_by
        if order_by is not None:
            redraw = None if layout.order_nulls else np.random.default_rng(key)
            table = _with_order(
                table, order_by, layout.schema.field(order_by).type, layout.order_range, redraw
            )
        primary = self.relations.tables[context.references].primary_key or ""
        return table.append_column(
            context.column, parents.column(primary).take(table.column("__parent_row__"))
        )

    def most_children(self, parent: str, child: str) -> int:
        """The most children of ``child`` a row of ``parent`` can have: the largest count its
        model decodes (at least 1)."""
        model = self.models[parent]
        codecs = [] if model is None else [c for c in model.encoder.codecs if c.name == CHILDREN + child]
        if not codecs:
            return 1
        codec = codecs[0]
        if codec.kind == "continuous":
            values = list(codec.knots or [])
        else:
            values = [v for v in codec.categories or [] if isinstance(v, int | float)]
        return max(1, int(np.ceil(max(values or [1]))))


class _Walk:
    """One :meth:`RelationalModel.stream`: its random draws, and per table the rows made so far,
    the rows it can have at most (the fresh keys' ``RowStream`` total) and, for a table a matched
    key points at, its keys."""

    def __init__(self, model: RelationalModel, seed: int, batch_size: int):
        self.model, self.seed, self.batch_size = model, seed, batch_size
        self.rng = np.random.default_rng(seed)
        self.made: dict[str, int] = dict.fromkeys(model.relations.order, 0)
        self.totals: dict[str, int] = {}
        self.calls = 0
        relations = model.relations
        self.matched = {
            key.references
            for name in relations.order
            for key in relations.tables[name].foreign_keys
            if key is not relations.context[name]
        }
        self.keys: dict[str, list[pa.Array]] = {name: [] for name in self.matched}
        #: per matched key (``child.column``), the synthetic rows' drawn counts: their weights
        self.weights: dict[str, list[np.ndarray]] = {}

    def key(self, name: str) -> int:
        return self.seed * 1_000_003 + self.model.relations.order.index(name)

    def roots(self) -> list[str]:
        """The tables without a context parent, each after the trees holding the tables its own
        tree's matched keys point at; refused when a tree's matched key points into itself or two
        trees need each other's (neither could be finished first)."""
        relations = self.model.relations
        roots = [name for name in relations.order if relations.context[name] is None]
        tree = {name: self._root_of(name) for name in relations.order}
        needs = {
            root: {
                tree[key.references]
                for name in relations.order
                if tree[name] == root
                for key in relations.tables[name].foreign_keys
                if key is not relations.context[name]
            }
            for root in roots
        }
        ordered: list[str] = []
        while len(ordered) < len(roots):
            waiting = [root for root in roots if root not in ordered]
            ready = [root for root in waiting if root not in needs[root] and needs[root] <= set(ordered)]
            if not ready:
                stuck = next((root for root in waiting if root in needs[root]), waiting[0])
                raise ConfigError(
                    f"dataset.tables: a matched key under {stuck} points at a table generated with it, "
                    "whose keys are not all known until it is done: make that key the context"
                )
            ordered.extend(ready)
        return ordered

    def _root_of(self, name: str) -> str:
        context = self.model.relations.context[name]
        return name if context is None else self._root_of(context.references)

    def descend(self, name: str, batch: pa.Table) -> Iterator[tuple[str, pa.Table]]:
        """``batch`` of table ``name`` (its internal columns too), then its children, depth first."""
        model, relations = self.model, self.model.relations
        for column, share in model.layouts[name].unmatched.items():
            batch = batch.append_column(column, self._matched(name, column, share, batch.num_rows))
        primary = relations.tables[name].primary_key
        if name in self.matched and primary is not None:
            self.keys[name].append(dense(batch.column(primary)))
            for entry in model.layouts[name].matched:
                counts = batch.column(MATCHED + entry) if MATCHED + entry in batch.column_names else None
                weight = np.ones(batch.num_rows) if counts is None else to_float(dense(counts))
                self.weights.setdefault(entry, []).append(np.clip(np.nan_to_num(weight), 0, None))
        self.made[name] += batch.num_rows
        if name in model.published:
            whole = model.constraints[name].inverse(batch) if name in model.constraints else batch
            yield name, _published(whole, model.layouts[name].schema)
        for child in model.layouts[name].children:
            if model.models[child] is None:
                continue
            most = model.most_children(name, child)
            self.totals.setdefault(child, self.totals[name] * most)
            step = max(1, self.batch_size // most)
            for start in range(0, batch.num_rows, step):
                self.calls += 1
                rows = RowStream(self.key(child), self.made[child], self.totals[child])
                children = model.children_of(
                    child, batch.slice(start, step), self.key(child) + self.calls, rows
                )
                yield from self.descend(child, children)

    def _matched(self, name: str, column: str, unmatched: float, rows: int) -> pa.Array:
        """A matched foreign key: a synthetic parent row drawn for each row in proportion to how
        many rows of this table its model gave it (so the children per parent keep their real
        shape: a few airlines fly most flights), none (null) for the real share of rows without
        one, or when the parent table is empty."""
        relations = self.model.relations
        foreign = next(key for key in relations.tables[name].foreign_keys if key.column == column)
        parts = self.keys[foreign.references]
        if len(parts) != 1:  # the table is done (roots()): its batches' keys joined once, kept so
            primary = relations.tables[foreign.references].primary_key or ""
            type_ = self.model.layouts[foreign.references].schema.field(primary).type
            parts[:] = [pa.concat_arrays(parts) if parts else pa.array([], type_)]
        keys = parts[0]
        if len(keys) == 0:
            return pa.nulls(rows, keys.type)
        weights = self.weights.setdefault(f"{name}.{column}", [])
        if len(weights) != 1:  # joined once too
            weights[:] = [np.concatenate(weights) if weights else np.zeros(0)]
        weight = weights[0]
        if weight.sum() > 0:
            picked = keys.take(self.rng.choice(len(keys), rows, p=weight / weight.sum()))
        else:  # every count drawn 0
            picked = keys.take(self.rng.integers(0, len(keys), rows))
        return pc.if_else(pa.array(self.rng.random(rows) < unmatched), pa.nulls(rows, keys.type), picked)


def _counts(parents: pa.Table, child: str) -> np.ndarray:
    """How many children of ``child`` each synthetic parent row asked for (0 without a count)."""
    if CHILDREN + child not in parents.column_names:  # an empty parent table
        return np.zeros(parents.num_rows, np.int64)
    return np.maximum(pc.fill_null(parents.column(CHILDREN + child), 0).to_numpy(), 0).astype(np.int64)


def training_table(real: Mapping[str, pa.Table], relations: Relations, layout: TableLayout) -> pa.Table:
    """The table a model of ``layout.name`` learns (see the module's doc): the given columns first,
    then its own (the primary key among them), then its children's counts."""
    name = layout.name
    spec = relations.tables[name]
    table = real[name]
    context = relations.context[name]
    given: dict[str, pa.Array] = {}
    if context is not None:
        order = [(context.column, "ascending")] + ([(spec.order_by, "ascending")] if spec.order_by else [])
        table = table.sort_by(order)  # a stable sort: ties keep the file's order
        parent = real[context.references]
        primary = relations.tables[context.references].primary_key or ""
        row = parent_rows(table.column(context.column), parent.column(primary))
        for column in layout.parent_columns:
            values = (
                _level(real, relations, context.references, column.removeprefix(LEVEL))
                if column.startswith(LEVEL)
                else dense(parent.column(column))
            )
            given[PARENT + column] = values.take(row)
        position = _positions(dense(table.column(context.column)))
        given[POSITION] = pa.array(position)
        given[SIBLINGS] = pa.array(
            np.bincount(row.to_numpy(zero_copy_only=False), minlength=parent.num_rows)[row]
        )
        for column in layout.previous_columns:
            given[PREVIOUS + column] = _shifted(dense(table.column(column)), position)
    own = {column: dense(table.column(column)) for column in _own_columns(spec, table.column_names)}
    if context is not None and spec.order_by is not None:
        values = dense(table.column(spec.order_by))
        first = position == 0
        own[FIRST] = pc.if_else(pa.array(first), values, pa.nulls(len(values), values.type))
        gaps = np.diff(to_float(values), prepend=np.nan)
        own[GAP] = pa.array(np.where(first, np.nan, gaps), mask=first)
    if spec.primary_key is not None:
        own = {spec.primary_key: dense(table.column(spec.primary_key)), **own}
    for child in layout.children:
        foreign = relations.context[child]
        assert foreign is not None
        own[CHILDREN + child] = pa.array(
            children_per_parent(table.column(spec.primary_key or ""), real[child].column(foreign.column))
        )
    for entry in layout.levels:
        own[LEVEL + entry] = _level(real, relations, name, entry)
    for entry in layout.matched:
        child, column = entry.split(".", 1)
        own[MATCHED + entry] = pa.array(
            children_per_parent(table.column(spec.primary_key or ""), real[child].column(column))
        )
    return pa.table({**given, **own})


def _level(real: Mapping[str, pa.Table], relations: Relations, parent: str, entry: str) -> pa.Array:
    """Per row of ``parent``, which of :data:`LEVELS` equal shares of the parents the mean of its
    children's ``entry`` (``child.column``) is in, 0 the lowest, and the middle one for a row
    without children or with nulls only: never null, since a child's model is given no null level
    to learn from, and the parent's model may still draw one with children. Only the levels are
    learned, never a real mean or cut."""
    child, column = entry.split(".", 1)
    foreign = relations.context[child]
    assert foreign is not None
    keys = real[parent].column(relations.tables[parent].primary_key or "")
    row = parent_rows(real[child].column(foreign.column), keys)
    values = to_float(dense(real[child].column(column)))
    known = row.is_valid().to_numpy(zero_copy_only=False) & ~np.isnan(values)
    index = row.fill_null(0).to_numpy(zero_copy_only=False)[known].astype(np.int64)
    count = np.bincount(index, minlength=len(keys))
    total = np.bincount(index, weights=values[known], minlength=len(keys))
    mean = total / np.maximum(count, 1)
    cuts = np.quantile(mean[count > 0], np.linspace(0, 1, LEVELS + 1)[1:-1]) if count.any() else []
    return pa.array(np.where(count > 0, np.searchsorted(cuts, mean), LEVELS // 2).astype(np.int64))


def _leveled(spec: TableSpec, table: pa.Table, name: str) -> list[str]:
    """A child table's columns whose level per parent the parent learns: the learned numeric ones
    (not made fresh, not declared categories)."""
    numeric = [c for c in _own_columns(spec, table.column_names) if is_numeric(table.schema.field(c).type)]
    if not table.num_rows or not numeric:
        return []
    types = {column: value for column, value in declared(spec.columns).items() if column in numeric}
    roles = column_roles(table.select(numeric), types, None, where=f"dataset.tables.{name}.columns")
    return [column for column in numeric if column not in roles or roles[column].role == "numeric"]


def table_rules(relations: Relations, name: str, table: pa.Table, protection: Protection) -> Constraints:
    """Table ``name``'s rules fitted on its real rows (a rule they break fails naming it). A rule
    is about the table's own columns: a key is made fresh or points at a parent, never learned,
    and the order column is built from first values and gaps, so a rule may read it, never
    rewrite it; a rule enforced by drawing rows again (a custom rule without a reverse transform)
    would redraw a parent's children: refused."""
    spec = relations.tables[name]
    rules = Constraints(spec.constraints, where=f"dataset.tables.{name}.constraints")
    if not rules:
        return rules
    keys = {key.column for key in spec.foreign_keys} | {spec.primary_key, spec.entity}
    for rule in rules.rules:
        if touched := [column for column in rule.columns if column in keys]:
            raise ConfigError(
                f"{rule.where}: {touched[0]} is a key, made fresh or a parent's: no rule is about it"
            )
        if (order := spec.order_by) in rule.removed:
            raise ConfigError(
                f"{rule.where}: {order} is order_by, built in order: a rule may read it, not rewrite it"
            )
    roles = column_roles(table, declared_columns(spec), None, where=f"dataset.tables.{name}.columns")
    rules.fit(table, roles, protection.threshold)
    if rules.rejecting:
        rule = rules.rejecting[0]
        raise ConfigError(
            f"{rule.where} ({rule.label()}): a table of several has no row drawn again; give the "
            "rule a reverse_transform that repairs rows"
        )
    return rules


def _training_roles(
    training: pa.Table, spec: TableSpec, rules: Constraints, name: str
) -> dict[str, ColumnRole]:
    """The roles of a table's training columns: the declared ones still there (a rule may have
    rewritten one: its rule says what it became)."""
    declared = {
        column: value for column, value in declared_columns(spec).items() if column in training.column_names
    }
    roles = column_roles(training, declared, None, where=f"dataset.tables.{name}.columns")
    return rules.roles(roles) if rules else roles


def declared_columns(spec: TableSpec) -> dict[str, ColumnSpec]:
    """A table's declared columns: its ``columns``, and its primary key an identifier (made fresh)."""
    key = {spec.primary_key: ColumnSpec(type="id")} if spec.primary_key is not None else {}
    return {**declared(spec.columns), **key}


def _own_columns(spec: TableSpec, columns: list[str]) -> list[str]:
    """A table's columns that its model learns as its own: not a key, not the order column."""
    keys = {key.column for key in spec.foreign_keys} | {spec.primary_key, spec.order_by}
    return [column for column in columns if column not in keys]


def _positions(keys: pa.Array) -> np.ndarray:
    """Each row's position among the rows before it with the same key (rows grouped by key)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    starts = np.r_[True, ~pc.equal(keys[1:], keys[:-1]).fill_null(False).to_numpy(zero_copy_only=False)]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    return np.arange(n) - group_start


def _shifted(values: pa.Array, position: np.ndarray) -> pa.Array:
    """Each row's previous sibling's value (null for the first)."""
    before = np.maximum(np.arange(len(values)) - 1, 0)
    return pc.if_else(pa.array(position == 0), pa.nulls(len(values), values.type), values.take(before))


def _protected_range(values: pa.ChunkedArray, protection: Protection) -> tuple[float, float] | None:
    """The protected range of a column's real values (as value protection clips a numeric
    column's tails, and the data's suite expects): no one real value sets it (None: too few)."""
    known = to_float(dense(values))
    protected = protect_numbers(
        known[~np.isnan(known)], protection.threshold, max_knots=2, quantum=quantum(values.type)
    )
    return None if protected is None else (protected.low, protected.high)


def _with_order(
    table: pa.Table,
    order_by: str,
    type_: pa.DataType,
    limits: tuple[float, float] | None = None,
    redraw: np.random.Generator | None = None,
) -> pa.Table:
    """The order column rebuilt from each parent's first value and the gaps after it (rows sorted
    by parent, then position); a gap drawn null counts as none. Within ``limits`` (the real
    window, protected): a sequence that runs past its end starts earlier (:func:`_within`). With
    ``redraw`` (the real column has no nulls), a first value drawn null is one of the others drawn."""
    first = table.column(POSITION).to_numpy() == 0
    steps = np.where(
        first, to_float(dense(table.column(FIRST))), np.nan_to_num(to_float(dense(table.column(GAP))))
    )
    starts = np.flatnonzero(first)
    missing = starts[np.isnan(steps[starts])]
    if redraw is not None and len(missing) and len(missing) < len(starts):
        steps[missing] = redraw.choice(steps[np.setdiff1d(starts, missing)], len(missing))
    total = np.cumsum(np.nan_to_num(steps))
    start = np.maximum.accumulate(np.where(first, np.arange(len(first)), 0))
    values = total - total[start] + steps[start]  # each group's running sum from its first value
    if limits is not None and len(values):
        values = _within(values, starts, *limits)
    unknown = np.isnan(steps[start])  # the first value drawn null: the whole sequence's is unknown
    storage = pa.int64() if pa.types.is_temporal(type_) or pa.types.is_integer(type_) else pa.float64()
    rounded = np.round(values) if storage == pa.int64() else values
    column = pa.array(np.where(unknown, 0, rounded).astype(storage.to_pandas_dtype()), mask=unknown)
    if pa.types.is_date32(type_):
        column = column.cast(pa.int32())
    return table.drop_columns([FIRST, GAP]).append_column(order_by, column.cast(type_))


def _within(values: np.ndarray, starts: np.ndarray, low: float, high: float) -> np.ndarray:
    """Sequences (each from its index in ``starts`` to the next) moved earlier as far as they run
    past ``high`` and their first value allows; one still too long has its gaps shrunk to end on
    ``high``, and a first value below ``low`` is raised to it: every sequence keeps its order and
    no gap becomes 0 (clipping alone piled the ends of long sequences on ``high``)."""
    lengths = np.diff(np.append(starts, len(values)))
    first = np.maximum(values[starts], low)
    latest = np.maximum.reduceat(values, starts) - values[starts] + first
    shift = np.clip(latest - high, 0, first - low)
    first, latest = first - shift, latest - shift
    span = latest - first
    scale = np.where(latest > high, (high - first) / np.where(span > 0, span, 1), 1.0)
    offsets = values - np.repeat(values[starts], lengths)
    return np.repeat(first, lengths) + offsets * np.repeat(scale, lengths)


def _published(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The table in the real schema: its columns in order and types, the internal ones dropped."""
    return pa.table({f.name: table.column(f.name).cast(f.type) for f in schema}, schema=schema)


def _refuse_reserved(name: str, table: pa.Table) -> None:
    for column in table.column_names:
        if column.startswith(_RESERVED):
            raise ConfigError(
                f"dataset.tables.{name}: column {column!r} starts with {_RESERVED}, which the "
                "relational models keep for their own columns"
            )
