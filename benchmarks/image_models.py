"""Train an image model under a CPU time budget, then measure its image metrics and sampling speed.

    python benchmarks/image_models.py --dataset mnist --family gan --minutes 10 [--set channels=32]
        [--per-label 100] [--grid docs/samples/mnist-gan.png] [--holdout 0.2]
    python benchmarks/image_models.py --dataset path/to/tree --format imagefolder --family vae

``--dataset`` is a built-in's name or any dataset URI a job takes (an ImageFolder tree, a Parquet of
images; local or ``s3://``), read by the pipeline's own ingest code.

Label consistency: a small CNN trained on the real images (``genai_pipeline.quality.images``)
classifies generated images; the figure is the share classified as the label they were
conditioned on (its accuracy on held-out real images is printed as the ceiling). The rest of the
validate stage's image metrics follow: Fréchet distance and precision/recall/density/coverage in that
classifier's feature space (against as many real images as were generated), memorisation against
the training images, exact repeats, and with ``--holdout`` (the model then trains on the rest, as
the pipeline's ingest splits it) the classification accuracy score on the held-out real images.
Sampling speed is end to end: sample, PNG-encode, in memory, images per second.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from genai_pipeline.config import DatasetSpec, TrainSpec
from genai_pipeline.datasets import BUILTINS, ImageData
from genai_pipeline.datasets.base import fingerprint, split_holdout
from genai_pipeline.datasets.sources import read_dataset
from genai_pipeline.generation import encode_png
from genai_pipeline.models import model_class
from genai_pipeline.quality.images import (
    classification_accuracy_score,
    duplicate_share,
    frechet_distance,
    manifold_scores,
    memorisation_share,
    train_classifier,
)


def sample_grid(images: np.ndarray, labels: np.ndarray, names: list[str], per_row: int, path: Path) -> None:
    """One row per label, ``per_row`` images each, scaled up for viewing."""
    rows = []
    for name in names:
        picked = images[labels == name][:per_row]
        rows.append(np.concatenate(list(picked), axis=1))
    grid = np.concatenate(rows, axis=0)
    image = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    scale = max(1, 280 // images.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", help="a built-in's name or a dataset URI")
    parser.add_argument("--format", help="the dataset's format (imagefolder, image_parquet), as in a job")
    parser.add_argument("--label", help="the label column of an image_parquet dataset")
    parser.add_argument("--family", required=True)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time budget")
    parser.add_argument("--epochs", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", action="append", default=[], help="model hyper-parameter NAME=VALUE")
    parser.add_argument("--per-label", type=int, default=100, help="generated images per label")
    parser.add_argument("--speed-samples", type=int, default=10_000, help="images sampled to time sampling")
    parser.add_argument("--grid", type=Path, help="save a sample grid (one row per label) here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.0, help="share of real images kept from training")
    parser.add_argument("--import-module", action="append", default=[], help="import a model module first")
    args = parser.parse_args()
    for module in args.import_module:
        importlib.import_module(module)

    builtin = args.dataset in BUILTINS and BUILTINS[args.dataset].modality == "image"
    spec = {"uri": f"builtin://{args.dataset}" if builtin else args.dataset, "format": args.format}
    data = read_dataset(
        DatasetSpec.model_validate({k: v for k, v in {**spec, "label": args.label}.items() if v})
    )
    if not isinstance(data, ImageData):
        parser.error(f"--dataset {args.dataset}: not an image dataset")
    data, holdout = split_holdout(data, args.holdout, 5_000, key=fingerprint(data))
    assert isinstance(data, ImageData)
    params = {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in args.set)}
    cls = model_class("image", args.family)
    model = cls(cls.Config.model_validate(params), device=torch.device("cpu"))
    train = TrainSpec(
        epochs=args.epochs, batch_size=args.batch_size, device="cpu", seed=args.seed, max_minutes=args.minutes
    )
    report = model.fit(data, train, None)
    print(
        f"{args.family} on {args.dataset}: {report.steps} steps, {report.epochs} epochs in "
        f"{report.seconds:.0f} s ({report.stopped}), {torch.get_num_threads()} threads"
    )

    names = list(data.label_names)
    generated, generated_labels = [], []
    for name in names:
        for batch in model.sample(args.per_label, conditions={"label": name}, seed=args.seed, batch_size=500):
            generated.append(batch.images)
            generated_labels.append(batch.labels)
    started = time.perf_counter()  # speed: a separate, larger run, so the figure is not noise
    encoded = sum(
        len(encode_png(image)) > 0
        for batch in model.sample(args.speed_samples, conditions=None, seed=args.seed + 1, batch_size=500)
        for image in batch.images
    )
    seconds = time.perf_counter() - started
    fakes, fake_labels = np.concatenate(generated), np.concatenate(generated_labels)
    classifier = train_classifier(data)
    consistency = classifier.consistency(fakes, fake_labels)
    print(f"sampling: {encoded} images in {seconds:.2f} s = {encoded / seconds:.0f} images/s (sample + PNG)")
    print(
        f"label consistency: {consistency:.3f} (classifier accuracy on held-out real images: "
        f"{classifier.real_accuracy:.3f})"
    )
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    picked = rng.choice(data.num_rows, min(len(fakes), data.num_rows), replace=False)
    reference = data.images[picked]
    real_features, fake_features = classifier.features(reference), classifier.features(fakes)
    scores = {"frechet_distance": frechet_distance(real_features, fake_features)}
    scores |= manifold_scores(real_features, fake_features)
    scores["memorised_share"] = memorisation_share(fakes, data.images)
    scores["duplicate_share"] = duplicate_share(fakes)
    if holdout is not None:
        scores["cas"] = classification_accuracy_score(ImageData(fakes, fake_labels), holdout, seed=args.seed)
    print(
        ", ".join(f"{name} {value:.3f}" for name, value in scores.items())
        + f" ({time.perf_counter() - started:.1f} s)"
    )
    if holdout is not None:  # what an ideal model scores: real images the model never saw
        unseen = classifier.features(holdout.images)
        ideal = {"frechet_distance": frechet_distance(real_features[: len(unseen)], unseen)}
        ideal |= manifold_scores(real_features[: len(unseen)], unseen)
        ideal["memorised_share"] = memorisation_share(holdout.images, data.images)
        as_many = ImageData(reference, data.labels[picked])  # as many real images as were generated
        ideal["cas"] = classification_accuracy_score(as_many, holdout, seed=args.seed)
        print("real held-out images: " + ", ".join(f"{name} {value:.3f}" for name, value in ideal.items()))
    if args.grid:
        sample_grid(fakes, fake_labels, names, 10, args.grid)
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
