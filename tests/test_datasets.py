"""Reading datasets in the ecosystem's layouts, locally and from S3; fingerprints; snapshots."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from genai_pipeline.config import DatasetSpec
from genai_pipeline.datasets import (
    BUILTINS,
    ImageData,
    TabularData,
    fingerprint,
    read_snapshot,
    write_snapshot,
)
from genai_pipeline.datasets.sources import read_dataset, source_stamp
from genai_pipeline.errors import DatasetError
from genai_pipeline.storage import Storage

TABLE = pa.table({"id": [1, 2, 3, 4], "kind": ["a", "b", None, "a"], "x": [0.5, None, 2.5, 3.0]})


def _png(value: int, size: tuple[int, int] = (6, 5), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_builtins_load_from_installed_packages() -> None:
    penguins = BUILTINS["penguins"].load()
    assert penguins.num_rows == 344 and penguins.column("sex").null_count == 11
    assert penguins.schema.field("body_mass_g").type == pa.int64()
    digits, labels = BUILTINS["digits"].load()
    assert digits.shape == (1797, 8, 8, 1) and digits.dtype == np.uint8 and digits.max() == 255
    mnist, labels = BUILTINS["mnist"].load()
    assert mnist.shape == (5000, 28, 28, 1) and set(labels) == {str(i) for i in range(10)}


def test_parquet_file_folder_and_glob(tmp_path: Path) -> None:
    pq.write_table(TABLE.slice(0, 2), tmp_path / "a.parquet")
    pq.write_table(TABLE.slice(2), tmp_path / "b.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    for uri in (str(tmp_path / "a.parquet"), str(tmp_path), str(tmp_path / "*.parquet")):
        data = read_dataset(DatasetSpec(uri=uri))
        assert isinstance(data, TabularData)
    assert read_dataset(DatasetSpec(uri=str(tmp_path))).table.equals(TABLE)


def test_csv_and_label_column(tmp_path: Path) -> None:
    pacsv.write_csv(TABLE, tmp_path / "t.csv")
    data = read_dataset(DatasetSpec(uri=str(tmp_path / "t.csv"), label="kind"))
    assert data.num_rows == 4 and data.label == "kind"
    with pytest.raises(DatasetError, match="label column 'nope' not found"):
        read_dataset(DatasetSpec(uri=str(tmp_path / "t.csv"), label="nope"))


def test_missing_corrupt_and_empty_inputs_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset not found"):
        read_dataset(DatasetSpec(uri=str(tmp_path / "absent.parquet")))
    corrupt = tmp_path / "corrupt.parquet"
    pq.write_table(TABLE, corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-30])
    with pytest.raises(DatasetError, match=r"corrupt.parquet: not a readable PARQUET file"):
        read_dataset(DatasetSpec(uri=str(corrupt)))
    empty = tmp_path / "empty.parquet"
    pq.write_table(TABLE.slice(0, 0), empty)
    with pytest.raises(DatasetError, match="has no rows"):
        read_dataset(DatasetSpec(uri=str(empty)))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="no .parquet"):
        read_dataset(DatasetSpec(uri=str(tmp_path / "nothing")))


def test_image_folder_keeps_labels_and_normalises_sizes(tmp_path: Path) -> None:
    labels = {"zwölf mit Leerzeichen": 10, "plain": 200}
    for label, value in labels.items():
        folder = tmp_path / label / "nested"
        folder.mkdir(parents=True)
        (folder / "a.png").write_bytes(_png(value))
        (folder / "b.png").write_bytes(_png(value, size=(12, 10)))  # another size: resized
    (tmp_path / "plain" / "notes.txt").write_text("not an image")
    (tmp_path / "README.md").write_text("top-level file, not in a label folder")
    data = read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))
    assert isinstance(data, ImageData)
    assert data.shape == (5, 6, 1) and data.num_rows == 4
    assert set(data.label_names) == set(labels)
    bad = tmp_path / "plain" / "broken.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match="broken.png: not a readable image"):
        read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))


def test_colour_images_and_explicit_size(tmp_path: Path) -> None:
    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "a.png").write_bytes(_png(200, mode="RGB"))
    (tmp_path / "red" / "b.png").write_bytes(_png(100))  # a grayscale one joins as RGB
    data = read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder", image_size=(8, 8)))
    assert data.shape == (8, 8, 3)


def test_hugging_face_style_parquet_with_class_names(tmp_path: Path) -> None:
    table = pa.table(
        {
            "image": pa.array(
                [{"bytes": _png(i * 40), "path": None} for i in range(4)],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "label": pa.array([0, 1, 1, 0], pa.int64()),
        }
    )
    features = {"info": {"features": {"label": {"names": ["cat / kitten", "dog"], "_type": "ClassLabel"}}}}
    table = table.replace_schema_metadata({b"huggingface": json.dumps(features).encode()})
    pq.write_table(table, tmp_path / "train.parquet")
    data = read_dataset(
        DatasetSpec(uri=str(tmp_path / "train.parquet"), format="image_parquet", label="label")
    )
    assert data.labels.tolist() == ["cat / kitten", "dog", "dog", "cat / kitten"]
    plain = pa.table({"png": [_png(1), _png(2)], "y": ["a", "b"]})
    pq.write_table(plain, tmp_path / "plain.parquet")
    data = read_dataset(
        DatasetSpec(
            uri=str(tmp_path / "plain.parquet"), format="image_parquet", image_column="png", label="y"
        )
    )
    assert data.num_rows == 2
    with pytest.raises(DatasetError, match="column 'image' not found"):
        read_dataset(DatasetSpec(uri=str(tmp_path / "plain.parquet"), format="image_parquet", label="y"))


@pytest.mark.parametrize(
    "path", ["../secret.png", "/etc/hostname", "sub/../../secret.png", "file:///etc/hostname"]
)
def test_an_image_path_in_a_table_cannot_leave_the_datasets_folder(tmp_path: Path, path: str) -> None:
    """A row's ``path`` is data: an absolute one or a ``..`` read any file the process could reach."""
    (tmp_path / "secret.png").write_bytes(_png(9))
    folder = tmp_path / "dataset"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "ok.png").write_bytes(_png(1))
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rows = [{"bytes": None, "path": "sub/ok.png"}, {"bytes": None, "path": path}]
    pq.write_table(pa.table({"image": pa.array(rows, struct), "label": ["a", "b"]}), folder / "t.parquet")
    spec = DatasetSpec(uri=str(folder / "t.parquet"), format="image_parquet", label="label")
    with pytest.raises(DatasetError, match=r"t.parquet row 1: image path .* leaves the dataset's folder"):
        read_dataset(spec)
    pq.write_table(pa.table({"image": pa.array(rows[:1], struct), "label": ["a"]}), folder / "t.parquet")
    assert read_dataset(spec).num_rows == 1  # a path below the folder is read


def test_images_are_decoded_only_by_the_formats_a_dataset_may_hold(tmp_path: Path) -> None:
    """The decoder follows the content, not the name: a PCX (or an EPS, which goes to Ghostscript)
    named .png must not be parsed by a decoder the pipeline never meant to expose."""
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "fine.png").write_bytes(_png(3))
    buffer = io.BytesIO()
    Image.new("L", (6, 5), 7).save(buffer, format="PCX")
    (tmp_path / "b" / "disguised.png").write_bytes(buffer.getvalue())
    with pytest.raises(DatasetError, match="disguised.png: not a readable image"):
        read_dataset(DatasetSpec(uri=str(tmp_path), format="imagefolder"))


def test_images_too_large_for_a_training_set_are_refused_before_they_are_decoded(tmp_path: Path) -> None:
    """Two 12000×12000 PNGs of 137 KB were accepted (1 GB at peak): a source image over 4096×4096 is
    refused from its header, a size inferred over 1024 a side asks for dataset.image_size, and a
    dataset over dataset.max_mb decoded fails naming it."""

    def folder(name: str, size: tuple[int, int], count: int = 2) -> str:
        for label in ("a", "b"):
            (tmp_path / name / label).mkdir(parents=True)
            for index in range(count):
                (tmp_path / name / label / f"{index}.png").write_bytes(_png(index, size))
        return str(tmp_path / name)

    with pytest.raises(DatasetError, match=r"0.png: 5000×5000 pixels, over 16,777,216: too large"):
        read_dataset(DatasetSpec(uri=folder("huge", (5000, 5000), count=1), format="imagefolder"))
    large = folder("large", (1500, 1200), count=1)
    with pytest.raises(
        DatasetError, match=r"most images are 1200×1500, over 1024 pixels a side: set dataset.image_size"
    ):
        read_dataset(DatasetSpec(uri=large, format="imagefolder"))
    assert read_dataset(DatasetSpec(uri=large, format="imagefolder", image_size=(120, 150))).shape == (
        120,
        150,
        1,
    )
    many = folder("many", (512, 512), count=3)
    with pytest.raises(
        DatasetError, match=r"6 images of 512×512×1 take 1 MiB decoded, over dataset.max_mb \(1\)"
    ):
        read_dataset(DatasetSpec(uri=many, format="imagefolder", max_mb=1))


def test_a_table_larger_than_the_memory_budget_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    """Ingest read any table whole: a Parquet file is now judged by its footer before it is read,
    a CSV file once read, against dataset.max_mb."""
    rows = pa.table({"x": np.arange(400_000, dtype=np.float64), "y": np.arange(400_000)})  # ~6 MiB
    pq.write_table(rows, tmp_path / "big.parquet")
    with pytest.raises(
        DatasetError, match=r"big.parquet: the table would take 6 MiB in memory .* over dataset.max_mb \(1\)"
    ):
        read_dataset(DatasetSpec(uri=str(tmp_path / "big.parquet"), max_mb=1))
    pacsv.write_csv(rows, tmp_path / "big.csv")
    with pytest.raises(DatasetError, match=r"big.csv: the table would take 6 MiB"):
        read_dataset(DatasetSpec(uri=str(tmp_path / "big.csv"), max_mb=1))
    assert read_dataset(DatasetSpec(uri=str(tmp_path / "big.parquet"), max_mb=8)).num_rows == 400_000


def test_reading_from_s3(s3_server: dict[str, str]) -> None:
    fs = s3fs.S3FileSystem(
        key=s3_server["key"], secret=s3_server["secret"], endpoint_url=s3_server["endpoint_url"]
    )
    with fs.open(f"{s3_server['bucket']}/in/table.parquet", "wb") as handle:
        pq.write_table(TABLE, handle)
    fs.pipe(
        {
            f"{s3_server['bucket']}/in/images/a/1.png": _png(3),
            f"{s3_server['bucket']}/in/images/b/2.png": _png(9),
        }
    )
    options = {key: s3_server[key] for key in ("key", "secret", "endpoint_url")}
    table = read_dataset(
        DatasetSpec(uri=f"s3://{s3_server['bucket']}/in/table.parquet", storage_options=options)
    )
    assert table.table.equals(TABLE)
    images = read_dataset(
        DatasetSpec(
            uri=f"s3://{s3_server['bucket']}/in/images", format="imagefolder", storage_options=options
        )
    )
    assert images.labels.tolist() == ["a", "b"]
    # an unchanged source has the same stamp (ETags and sizes, nothing downloaded); a changed one not
    folder = DatasetSpec(
        uri=f"s3://{s3_server['bucket']}/in/images", format="imagefolder", storage_options=options
    )
    stamp = source_stamp(folder)
    assert source_stamp(folder) == stamp
    fs.pipe({f"{s3_server['bucket']}/in/images/b/2.png": _png(10)})
    assert source_stamp(folder) != stamp


def test_fingerprint_ignores_layout_but_not_content() -> None:
    rechunked = pa.concat_tables([TABLE.slice(0, 1), TABLE.slice(1)])
    assert fingerprint(TabularData(TABLE)) == fingerprint(TabularData(rechunked))
    changed = TABLE.set_column(0, "id", pa.array([1, 2, 3, 5]))
    assert fingerprint(TabularData(TABLE)) != fingerprint(TabularData(changed))


def test_snapshots_round_trip(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    write_snapshot(TabularData(TABLE, label="kind"), storage, "t.parquet")
    assert read_snapshot(storage, "t.parquet", "kind").table.equals(TABLE)
    images = ImageData(
        images=np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3), labels=np.array(["x", "y"])
    )
    write_snapshot(images, storage, "i.parquet")
    back = read_snapshot(storage, "i.parquet", "label")
    assert np.array_equal(back.images, images.images) and back.labels.tolist() == ["x", "y"]
    assert fingerprint(back) == fingerprint(images)
