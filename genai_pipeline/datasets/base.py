"""In-memory datasets, their fingerprints and schemas, and the run's snapshot of them.

Between stages data travels as Arrow tables (tabular) or uint8 NHWC arrays plus string labels
(images). Ingest writes one Parquet snapshot of what it read into the run's staging area, so
training and validation see exactly the bytes that were fingerprinted even if the source changes
during the night.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genai_pipeline.parquet import write_table
from genai_pipeline.privacy.protection import Protection
from genai_pipeline.storage import Storage

if TYPE_CHECKING:
    from genai_pipeline.datasets.row_groups import ColumnFacts, RowGroups
    from genai_pipeline.privacy.roles import ColumnRole


@dataclass(frozen=True)
class TabularData:
    """A table, its optional label/target column, and how the table may be learned: the roles of its
    columns that are not simply learned (identifiers and personal data, made fresh; None: detect
    them), the value protection a model applies to the rest, and the real rows kept from training
    (``unseen``, the holdout: never learned, but the values made fresh avoid theirs too)."""

    table: pa.Table
    label: str | None = None
    roles: Mapping[str, ColumnRole] | None = None
    protection: Protection = field(default_factory=Protection)
    unseen: pa.Table | None = None
    #: columns every sampled row will be given (a child table's context: its parent's columns, its
    #: position): a model learns the others given them, revealing them in every training row
    given: tuple[str, ...] = ()
    #: the rules every generated row follows (``generate.constraints`` specs): a model fits them on
    #: these rows and learns the table as they rewrite it (:mod:`genai_pipeline.constraints`)
    constraints: tuple[Any, ...] = ()
    #: when set, ``table`` is a seeded sample of these rows, which training reads a few row groups
    #: at a time (``train.in_memory_rows``), and ``facts`` what one pass over them all told (the
    #: model makes that pass)
    stream: RowGroups | None = None
    facts: Mapping[str, ColumnFacts] | None = None

    modality = "tabular"

    @property
    def num_rows(self) -> int:
        return self.table.num_rows


@dataclass(frozen=True)
class ImageData:
    """Images as uint8 ``(N, H, W, C)`` with one string label each."""

    images: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...] = field(default=())

    modality = "image"

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 NHWC, got {self.images.dtype} {self.images.shape}")
        if len(self.labels) != len(self.images):
            raise ValueError("one label per image is required")
        labels = np.asarray(self.labels).astype(str)
        object.__setattr__(self, "labels", labels)
        if not self.label_names:
            object.__setattr__(self, "label_names", tuple(sorted(set(labels.tolist()))))

    @property
    def num_rows(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels)."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


Dataset = TabularData | ImageData


def fingerprint(data: Dataset) -> str:
    """A content hash that ignores chunking and file layout: same values → same fingerprint."""
    digest = hashlib.sha256()
    if isinstance(data, TabularData):
        table = data.table.combine_chunks()
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        digest.update(sink.getvalue())
    else:
        digest.update(json.dumps(data.images.shape).encode())
        digest.update(np.ascontiguousarray(data.images).tobytes())
        digest.update("\n".join(data.labels.tolist()).encode())
    return digest.hexdigest()[:16]


def content_key(value: Any) -> str:
    """A short stable key for JSON-able identity data (a model's, a classifier's, a source's)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def split_holdout(
    data: Dataset, fraction: float, max_rows: int, *, key: str
) -> tuple[Dataset, Dataset | None]:
    """``(training part, holdout part)``: real rows the model never sees, to judge privacy and utility.

    The split is drawn from ``key`` (the data's fingerprint), so the same data splits the same way
    every night and a cached model stays valid; ``None`` when the fraction leaves no row out.
    """
    count = min(int(data.num_rows * fraction), max_rows, data.num_rows - 1)
    if count < 1:
        return data, None
    order = np.random.default_rng(int(key, 16)).permutation(data.num_rows)
    return rows_of(data, np.sort(order[count:])), rows_of(data, np.sort(order[:count]))


def rows_of(data: Dataset, rows: np.ndarray) -> Dataset:
    """``data``'s rows (or images) at the indices ``rows``, with all else it holds."""
    if isinstance(data, TabularData):
        return replace(data, table=data.table.take(pa.array(rows, pa.int64())))
    return ImageData(data.images[rows], data.labels[rows], data.label_names)


def sampled(data: Dataset, max_rows: int | None, seed: int) -> Dataset:
    """At most ``max_rows`` of ``data``'s rows, drawn by ``seed`` and kept in their order
    (``train.max_rows``: a bound on training's time and memory); all of them when they are fewer."""
    if max_rows is None or data.num_rows <= max_rows:
        return data
    chosen = np.random.default_rng(seed).choice(data.num_rows, max_rows, replace=False)
    return rows_of(data, np.sort(chosen))


MAX_LABELS = 1000


def label_values(data: Dataset) -> list[Any]:
    """The label's distinct values: image label names, or the table's label column values (sorted)."""
    if isinstance(data, ImageData):
        return list(data.label_names)
    if data.label is None:
        return []
    column = data.table.column(data.label).combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    return sorted(column.unique().drop_null().to_pylist(), key=str)


def describe_schema(data: Dataset, labels: list[Any] | None = None) -> dict[str, Any]:
    """A JSON-able schema for manifests, drift checks and per-label generation. ``labels``: the
    label's values as they may be shown (a table's, protected: see ``TableEncoder.public_view``);
    default: the data's own."""
    labels = label_values(data) if labels is None else labels
    labels = labels if len(labels) <= MAX_LABELS else None
    if isinstance(data, TabularData):
        return {
            "columns": [
                {"name": f.name, "type": str(f.type), "nulls": data.table.column(f.name).null_count}
                for f in data.table.schema
            ],
            "label": data.label,
            "labels": labels,
        }
    height, width, channels = data.shape
    return {"height": height, "width": width, "channels": channels, "labels": labels}


def schema_diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """How a dataset's schema (:func:`describe_schema`) changed, one phrase per change; empty when
    the columns and their types (images: size, channels and label set) are the same. Null counts
    and a table's label values vary from one day's data to the next and are not schema. Several
    tables (``{"tables": {name: schema}}``) are compared table by table."""
    if "tables" in before or "tables" in after:
        old, new = before.get("tables"), after.get("tables")
        if old is None or new is None:
            return ["one dataset became several tables" if new is not None else "several tables became one"]
        changes = [f"table {name!r} added" for name in new if name not in old]
        changes += [f"table {name!r} removed" for name in old if name not in new]
        keys = before.get("keys", {}), after.get("keys", {})
        changes += [
            f"{name}: its keys changed"
            for name in new
            if name in old and keys[0].get(name) != keys[1].get(name)
        ]
        return changes + [
            f"{name}: {change}" for name in new if name in old for change in schema_diff(old[name], new[name])
        ]
    if ("columns" in before) != ("columns" in after):
        return ["tables became images" if "columns" in before else "images became a table"]
    if "columns" in after:
        old = {column["name"]: column["type"] for column in before["columns"]}
        new = {column["name"]: column["type"] for column in after["columns"]}
        changes = [f"column {name!r} ({kind}) added" for name, kind in new.items() if name not in old]
        changes += [f"column {name!r} ({kind}) removed" for name, kind in old.items() if name not in new]
        changes += [
            f"column {name!r} changed type {old[name]} → {kind}"
            for name, kind in new.items()
            if name in old and old[name] != kind
        ]
        if before.get("label") != after.get("label"):
            changes.append(f"label column {before.get('label')!r} → {after.get('label')!r}")
        return changes
    changes = [
        f"{key} {before[key]} → {after[key]}"
        for key in ("height", "width", "channels")
        if before[key] != after[key]
    ]
    if before["labels"] is not None and after["labels"] is not None:
        added = sorted(set(after["labels"]) - set(before["labels"]), key=str)
        removed = sorted(set(before["labels"]) - set(after["labels"]), key=str)
        changes += [f"labels added: {', '.join(map(str, added))}"] if added else []
        changes += [f"labels removed: {', '.join(map(str, removed))}"] if removed else []
    return changes


_IMAGE_META = b"genai_pipeline.image"


def write_snapshot(data: Dataset, storage: Storage, rel: str) -> None:
    """Write a dataset as one Parquet file (images as raw pixel bytes plus their shape)."""
    if isinstance(data, TabularData):
        table = data.table
    else:
        height, width, channels = data.shape
        width_bytes = height * width * channels
        pixels = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width_bytes),
            len(data.images),
            [None, pa.py_buffer(np.ascontiguousarray(data.images).tobytes())],
        )
        table = pa.table({"label": pa.array(data.labels.tolist(), pa.string()), "pixels": pixels})
        meta = {"shape": [height, width, channels], "label_names": list(data.label_names)}
        table = table.replace_schema_metadata({_IMAGE_META: json.dumps(meta).encode()})
    write_table(table, storage, rel)


def read_snapshot(storage: Storage, rel: str, label: str | None) -> Dataset:
    """Read back what :func:`write_snapshot` wrote."""
    with storage.open_read(rel) as handle:
        table = pq.read_table(handle)
    meta = (table.schema.metadata or {}).get(_IMAGE_META)
    if meta is None:
        return TabularData(table=table, label=label)
    info = json.loads(meta)
    pixels = table.column("pixels").combine_chunks()
    size = int(np.prod(info["shape"]))
    flat = np.frombuffer(
        pixels.buffers()[1], dtype=np.uint8, count=len(pixels) * size, offset=pixels.offset * size
    )
    images = flat.reshape(table.num_rows, *info["shape"])
    labels = np.asarray(table.column("label").to_pylist(), dtype=str)
    return ImageData(images=images.copy(), labels=labels, label_names=tuple(info["label_names"]))
