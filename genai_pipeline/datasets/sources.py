"""Reading users' datasets in the layouts the ecosystem already uses.

Tables: a Parquet or CSV file, a folder of them, or a glob. Images: a class-per-subfolder tree
(torchvision's ImageFolder convention) or a Parquet with an image column (a struct of
``bytes``/``path`` as Hugging Face datasets writes it, or plain encoded bytes) and a label column.
Every failure names the file it came from.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from genai_pipeline.columns import is_supported
from genai_pipeline.config import DatasetSpec
from genai_pipeline.datasets.base import (
    Dataset,
    ImageData,
    TabularData,
    content_key,
    read_snapshot,
    write_snapshot,
)
from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.errors import DatasetError
from genai_pipeline.storage import Storage, open_filesystem

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: the decoders Pillow may use, whatever a file's content claims: an EPS named .png would otherwise
#: be handed to Ghostscript, and a dozen rarer decoders would parse untrusted bytes
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF")
#: an image with more pixels than this is refused from its header, before it is decoded
MAX_SOURCE_PIXELS = 4096 * 4096
#: the largest side an inferred image size may have (``dataset.image_size`` has the same bound)
MAX_SIDE = 1024
_TABLE_SUFFIXES = {
    "parquet": (".parquet", ".pq", ".parq"),
    "csv": (".csv", ".csv.gz"),
    "jsonl": (".jsonl", ".ndjson", ".jsonl.gz"),
}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
#: files that tools leave in image folders (Windows thumbnails, folder settings): skipped silently
_JUNK_FILES = {"thumbs.db", "desktop.ini"}
#: at most this much of a reader's error is quoted: a parse error of a binary file quotes the bytes
_DETAIL_CHARS = 160


def read_source(spec: DatasetSpec, storage: Storage, cache: str) -> Dataset:
    """The job's dataset: read from its source, or from the copy kept below ``cache`` the last
    time, when the source's files are unchanged (same sizes and ETags/mtimes). One copy is kept per
    job: a new one replaces the old. Built-ins, and jobs with ``dataset.cache: false``, are read."""
    if spec.is_builtin or not spec.cache:
        return read_dataset(spec)
    cached = f"{cache}/source-{source_stamp(spec)}.parquet"
    if storage.exists(cached):
        log.info(
            "dataset: %s is unchanged since it was last read: using %s", spec.uri, storage.url_of(cached)
        )
        return read_snapshot(storage, cached, spec.label)
    data = read_dataset(spec)
    write_snapshot(data, storage, cached)
    storage.delete(rel for rel in storage.list_files(cache) if rel != cached)
    return data


def read_dataset(spec: DatasetSpec) -> Dataset:
    """Read the dataset a job names, whatever its layout, into memory."""
    if spec.is_builtin:
        loaded = BUILTINS[spec.builtin_name].load()
        if isinstance(loaded, pa.Table):
            return TabularData(
                table=_documents(loaded, spec) if spec.format == "text" else loaded, label=spec.label
            )
        images, labels = loaded
        return ImageData(images=images, labels=labels)
    fs, path = open_filesystem(spec.uri, spec.storage_options)
    if spec.format == "imagefolder":
        return _read_image_folder(fs, path, spec)
    if spec.format == "text" and _is_text_folder(fs, path):
        return TabularData(table=_read_text_folder(fs, path, spec), label=spec.label)
    table = _read_table(fs, path, spec)
    if spec.format == "text":
        table = _documents(table, spec)
    _check_column_names(table, spec.uri)
    if spec.format == "image_parquet":
        return _images_from_table(fs, path, table, spec)
    if spec.label is not None and spec.label not in table.column_names:
        raise DatasetError(f"{spec.uri}: label column {spec.label!r} not found (dataset.label)")
    _check_column_types(table, spec)
    return TabularData(table=_nan_as_null(table, spec.uri), label=spec.label)


def _nan_as_null(table: pa.Table, uri: str) -> pa.Table:
    """Float NaN as missing values (null), as pandas writes and reads them: left as NaN, a model
    learned them as an ordinary number and the output lost its missing values."""
    for index, field in enumerate(table.schema):
        if not pa.types.is_floating(field.type):
            continue
        column = table.column(index)
        is_nan = pc.is_nan(column)
        nans = pc.sum(is_nan).as_py() or 0
        if nans:
            log.info("%s: column %r: %d NaN values read as missing (null)", uri, field.name, nans)
            table = table.set_column(index, field, pc.if_else(is_nan, None, column))
    return table


def _check_column_names(table: pa.Table, uri: str) -> None:
    """Columns are addressed by name everywhere (conditions, the suite, the output's schema): a
    nameless or repeated one (a CSV header with an empty or a doubled cell) cannot be."""
    counts = Counter(table.column_names)
    for index, name in enumerate(table.column_names):
        if not name.strip():
            raise DatasetError(f"{uri}: column {index + 1} has no name; name it in the header")
        if counts[name] > 1:
            raise DatasetError(f"{uri}: column {name!r} appears {counts[name]} times; names must be unique")


def _check_column_types(table: pa.Table, spec: DatasetSpec) -> None:
    """Every column must be of a type the tabular models learn, so a table that cannot be trained
    on fails at ingest naming the column, not in the middle of training; one the job leaves out
    (``skip``, dropped at ingest) may be of any type."""
    for field in table.schema:
        if is_supported(field.type) or (field.name in spec.columns and spec.columns[field.name].skip):
            continue
        hint = (
            " (text that is not UTF-8? re-save the file as UTF-8)"
            if spec.format == "csv" and pa.types.is_binary(field.type)
            else ""
        )
        raise DatasetError(
            f"{spec.uri}: column {field.name!r} has type {field.type}{hint}, which tabular models cannot "
            "learn (they take integers, floats, decimals, dates, timestamps, strings and booleans)"
        )


def _error_detail(exc: BaseException) -> str:
    """A reader's error as a short printable phrase: its first line, control characters and
    undecodable bytes (quoted from a binary file) replaced, at most :data:`_DETAIL_CHARS` long."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    detail = "".join(char if char.isprintable() and char != "\ufffd" else "?" for char in lines[0])
    return detail if len(detail) <= _DETAIL_CHARS else detail[: _DETAIL_CHARS - 1] + "…"


def source_stamp(spec: DatasetSpec) -> str:
    """What identifies a (non-built-in) source's bytes without reading them: how it is read, and
    every file below it with its size and ETag (object stores) or modification time."""
    fs, path = open_filesystem(spec.uri, spec.storage_options)
    fs.invalidate_cache()  # s3fs keeps listings per process: a stale one would hide a change
    try:
        if any(char in path for char in "*?["):
            infos = fs.glob(path, detail=True)
        elif fs.isdir(path):
            infos = fs.find(path, detail=True)
        else:
            infos = {path: fs.info(path)}
    except FileNotFoundError:
        raise DatasetError(f"{spec.uri}: dataset not found (dataset.uri)") from None
    files = sorted(
        [name, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))]
        for name, info in infos.items()
        if info.get("type") != "directory"
    )
    how = spec.model_dump(mode="json", exclude={"storage_options", "cache"})
    return content_key([how, files])


def _list_files(fs: fsspec.AbstractFileSystem, path: str, suffixes: Sequence[str], uri: str) -> list[str]:
    """A file, every matching file below a folder, or a glob's matches; sorted for stability."""
    try:
        if any(char in path for char in "*?["):
            files = [f for f in fs.glob(path) if fs.isfile(f)]
        elif fs.isdir(path):
            files = [
                f
                for f in fs.find(path)
                if f.lower().endswith(tuple(suffixes))
                and not any(part.startswith(("_", ".")) for part in f[len(path) :].split("/"))
            ]
        elif fs.isfile(path):
            files = [path]
        else:
            raise DatasetError(f"{uri}: dataset not found (dataset.uri)")
    except (PermissionError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DatasetError(f"{uri}: dataset not found (dataset.uri)") from None
        raise
    if not files:
        raise DatasetError(f"{uri}: no {'/'.join(suffixes)} files found (dataset.uri)")
    return sorted(files)


def _read_table(fs: fsspec.AbstractFileSystem, path: str, spec: DatasetSpec) -> pa.Table:
    """Every file of the table, read within ``dataset.max_mb``: a Parquet file's footer says how
    large it is before it is read, a CSV file is counted once read (one file past the limit)."""
    kind = spec.format if spec.format in ("csv", "jsonl") else "parquet"
    if spec.format == "text":  # a table of documents, in whichever format its name says
        lowered = path.lower()
        kind = next((k for k, suffixes in _TABLE_SUFFIXES.items() if lowered.endswith(suffixes)), "parquet")
    tables, used = [], 0

    def within(size: int, name: str) -> None:
        if size > spec.max_mb * 2**20:
            raise DatasetError(
                f"{name}: the table would take {size // 2**20:,} MiB in memory (with the files before it), "
                f"over dataset.max_mb ({spec.max_mb:,}): raise it, or give the job fewer rows"
            )

    for name in _list_files(fs, path, _TABLE_SUFFIXES[kind], spec.uri):
        try:
            with fs.open(name, "rb", compression="infer" if kind != "parquet" else None) as handle:
                if kind == "csv":
                    table = pacsv.read_csv(handle)
                elif kind == "jsonl":
                    table = pajson.read_json(handle)
                else:
                    reader = pq.ParquetFile(handle)
                    groups = range(reader.metadata.num_row_groups)
                    within(used + sum(reader.metadata.row_group(i).total_byte_size for i in groups), name)
                    table = reader.read()
        except (pa.ArrowException, OSError, EOFError) as exc:
            raise DatasetError(f"{name}: not a readable {kind.upper()} file ({_error_detail(exc)})") from None
        used += table.nbytes
        within(used, name)
        tables.append(table)
    try:
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowException as exc:
        raise DatasetError(f"{spec.uri}: files have incompatible schemas ({exc})") from None
    if table.num_rows == 0:
        raise DatasetError(f"{spec.uri}: the table has no rows")
    return table.combine_chunks()


def _decode_images(blobs: Sequence[bytes], names: Sequence[str], spec: DatasetSpec) -> np.ndarray:
    """Encoded images as one uint8 NHWC array: decoded in a thread pool (PIL releases the GIL
    while decoding) once their headers said they fit, each one and the dataset as a whole."""

    @contextmanager
    def readable(name: str) -> Iterator[None]:
        try:
            yield
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise DatasetError(f"{name}: not a readable image ({_error_detail(exc)})") from None

    def header(item: tuple[bytes, str]) -> Image.Image:
        blob, name = item
        with readable(name):
            image = Image.open(io.BytesIO(blob), formats=IMAGE_FORMATS)
        if image.width * image.height > MAX_SOURCE_PIXELS:
            raise DatasetError(
                f"{name}: {image.width}×{image.height} pixels, over {MAX_SOURCE_PIXELS:,}: too large for a "
                "training image (resize the source first)"
            )
        return image

    def decode(item: tuple[Image.Image, str]) -> Image.Image:
        image, name = item
        with readable(name):
            image.load()
        return image

    with ThreadPoolExecutor(max_workers=4) as pool:
        images = list(pool.map(header, zip(blobs, names)))
        shape = _target_shape(images, spec)  # refuses what would not fit, before anything is decoded
        return _to_array(list(pool.map(decode, zip(images, names))), shape, spec.uri)


def _target_shape(images: Sequence[Image.Image], spec: DatasetSpec) -> tuple[int, int, int]:
    """``(height, width, channels)`` for every image: the spec's, or what most images have; a size
    inferred over :data:`MAX_SIDE`, or a dataset over ``dataset.max_mb`` decoded, is refused."""
    if not images:
        raise DatasetError(f"{spec.uri}: no images found")
    sizes = Counter((image.height, image.width) for image in images)
    height, width = spec.image_size or sizes.most_common(1)[0][0]
    channels = spec.channels or (1 if all(image.mode in _GRAY_MODES for image in images) else 3)
    if max(height, width) > MAX_SIDE:
        raise DatasetError(
            f"{spec.uri}: most images are {height}×{width}, over {MAX_SIDE} pixels a side: set "
            f"dataset.image_size (at most {MAX_SIDE}×{MAX_SIDE}) to resize them"
        )
    if (needed := len(images) * height * width * channels) > spec.max_mb * 2**20:
        raise DatasetError(
            f"{spec.uri}: {len(images):,} images of {height}×{width}×{channels} take {needed // 2**20:,} MiB "
            f"decoded, over dataset.max_mb ({spec.max_mb:,}): raise it, or set a smaller dataset.image_size"
        )
    return height, width, channels


def _to_array(images: Sequence[Image.Image], shape: tuple[int, int, int], uri: str) -> np.ndarray:
    """The images in one size and colour mode, ``shape`` (from :func:`_target_shape`)."""
    height, width, channels = shape
    sizes = Counter((image.height, image.width) for image in images)
    mode = "L" if channels == 1 else "RGB"
    resized = sum(count for size, count in sizes.items() if size != (height, width))
    if resized:
        log.warning("%s: resized %d of %d images to %dx%d", uri, resized, len(images), height, width)
    out = np.empty((len(images), height, width, channels), dtype=np.uint8)
    for index, image in enumerate(images):
        if image.mode.startswith("I"):
            image = _eight_bit(image)
        if image.mode != mode:
            image = image.convert(mode)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        out[index] = np.asarray(image, dtype=np.uint8).reshape(height, width, channels)
    return out


def _eight_bit(image: Image.Image) -> Image.Image:
    """A 16-bit (``I;16*``) or 32-bit integer (``I``: how older Pillows open 16-bit PNGs) grey image
    as 8-bit ``L``, scaled from the 16-bit range: Pillow's own conversion clips at 255 instead, which
    turns every pixel brighter than 0.4% into white."""
    pixels = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(pixels / 257), 0, 255).astype(np.uint8), mode="L")


def _documents(table: pa.Table, spec: DatasetSpec) -> pa.Table:
    """A text dataset's columns: the label (if any) and the documents, as strings."""
    if spec.text_column not in table.column_names:
        raise DatasetError(
            f"{spec.uri}: no column {spec.text_column!r} of documents (dataset.text_column; columns: "
            f"{', '.join(table.column_names)})"
        )
    if spec.label is not None and spec.label not in table.column_names:
        raise DatasetError(f"{spec.uri}: label column {spec.label!r} not found (dataset.label)")
    keep = [name for name in (spec.label, spec.text_column) if name is not None]
    text = table.column(spec.text_column)
    if not (pa.types.is_string(text.type) or pa.types.is_large_string(text.type)):
        raise DatasetError(
            f"{spec.uri}: column {spec.text_column!r} holds {text.type}, not text (dataset.text_column)"
        )
    return table.select(keep)


def _is_text_folder(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    return fs.isdir(path) and any(name.lower().endswith(".txt") for name in fs.find(path))


def _read_text_folder(fs: fsspec.AbstractFileSystem, root: str, spec: DatasetSpec) -> pa.Table:
    """``root/<label>/**/*.txt``: one document per file, its first folder its label (``label``, or
    the job's ``dataset.label`` name); ``root/*.txt`` documents without a label."""
    files = [
        name
        for name in sorted(fs.find(root))
        if name.lower().endswith(".txt") and not any(p.startswith(".") for p in name[len(root) :].split("/"))
    ]
    parts = [name[len(root) :].strip("/").split("/") for name in files]
    blobs = fs.cat(files)
    texts = []
    for name in files:
        try:
            texts.append(blobs[name].decode("utf-8"))
        except UnicodeDecodeError:
            raise DatasetError(f"{name}: not UTF-8 text (dataset.uri)") from None
    used = sum(len(blob) for blob in blobs.values())
    if used > spec.max_mb * 2**20:
        raise DatasetError(
            f"{spec.uri}: the documents take {used // 2**20:,} MiB, over dataset.max_mb ({spec.max_mb:,})"
        )
    columns = {spec.text_column: pa.array(texts, pa.string())}
    if all(len(p) >= 2 for p in parts):
        columns = {spec.label or "label": pa.array([p[0] for p in parts], pa.string()), **columns}
    elif spec.label is not None:
        raise DatasetError(
            f"{spec.uri}: documents at the folder's root have no label (expected ROOT/<label>/*.txt)"
        )
    return pa.table(columns)


def _read_image_folder(fs: fsspec.AbstractFileSystem, root: str, spec: DatasetSpec) -> ImageData:
    """``root/<label>/**/<image>``: the first folder below the root is the label, as is.

    What is not an image is skipped: hidden files and folders (``.DS_Store``, macOS ``._*`` forks,
    ``.ipynb_checkpoints/``) and Windows' ``Thumbs.db``/``desktop.ini`` silently, other files (notes,
    CSVs, files at the root) with a warning that counts them. A file named like an image is an image:
    one that cannot be decoded fails the read naming it, since dropping it would silently change the
    data a model learns from.
    """
    if not fs.isdir(root):
        raise DatasetError(f"{spec.uri}: image folder not found (dataset.uri)")
    files, skipped = [], 0
    for name in sorted(fs.find(root)):
        parts = name[len(root) :].strip("/").split("/")
        if any(part.startswith(".") for part in parts) or parts[-1].lower() in _JUNK_FILES:
            continue
        if len(parts) >= 2 and name.lower().endswith(IMAGE_SUFFIXES):
            files.append((name, parts[0]))
        else:
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d files that are not images in a label folder", spec.uri, skipped)
    if not files:
        raise DatasetError(f"{spec.uri}: no images in class subfolders (expected ROOT/<label>/<image>.png)")
    blobs = fs.cat([name for name, _ in files])
    images = _decode_images([blobs[name] for name, _ in files], [name for name, _ in files], spec)
    labels = np.asarray([label for _, label in files], dtype=str)
    return ImageData(images=images, labels=labels)


def _below(base: str, rel: str, name: str) -> str:
    """An image's ``path`` from a table, resolved under the table's folder: an absolute path, a URL
    or a ``..`` would read any file the process (on S3: the credentials) can reach."""
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith(("/", "~")) or "://" in rel or ".." in parts:
        raise DatasetError(f"{name}: image path {rel!r} leaves the dataset's folder (dataset.image_column)")
    return posixpath.join(base, rel)


def _label_names(table: pa.Table, column: str) -> list[str] | None:
    """Hugging Face stores ClassLabel columns as integers with their names in schema metadata."""
    raw = (table.schema.metadata or {}).get(b"huggingface")
    if not raw:
        return None
    try:
        feature = json.loads(raw)["info"]["features"][column]
    except (KeyError, TypeError, ValueError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return list(names) if names else None


def _images_from_table(
    fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, spec: DatasetSpec
) -> ImageData:
    for column, field_name in ((spec.image_column, "dataset.image_column"), (spec.label, "dataset.label")):
        if column not in table.column_names:
            raise DatasetError(f"{spec.uri}: column {column!r} not found ({field_name})")
    images = table.column(spec.image_column)
    base = path if fs.isdir(path) else posixpath.dirname(path)
    if pa.types.is_struct(images.type):
        rows = images.to_pylist()
        blobs = [
            row.get("bytes") or fs.cat_file(_below(base, row["path"], f"{spec.uri} row {index}"))
            if row and (row.get("bytes") or row.get("path"))
            else None
            for index, row in enumerate(rows)
        ]
    elif pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type):
        blobs = images.to_pylist()
    else:
        raise DatasetError(
            f"{spec.uri}: column {spec.image_column!r} holds {images.type}, expected encoded image "
            "bytes or a struct of bytes/path (dataset.image_column)"
        )
    missing = [index for index, blob in enumerate(blobs) if not blob]
    if missing:
        raise DatasetError(f"{spec.uri}: row {missing[0]} has no image ({len(missing)} rows in all)")
    labels = table.column(spec.label).to_pylist()
    names = _label_names(table, spec.label)
    if names is not None:
        labels = [names[value] if isinstance(value, int) else value for value in labels]
    if any(label is None for label in labels):
        raise DatasetError(f"{spec.uri}: label column {spec.label!r} has nulls")
    images = _decode_images(blobs, [f"{spec.uri} row {index}" for index in range(len(blobs))], spec)
    return ImageData(images=images, labels=np.asarray(labels, dtype=str))
