"""Image quality metrics on constructed "synthetic" sets whose verdict is known, with wall times.

    python benchmarks/image_metrics.py [--dataset mnist] [--held-out 1000] [--test 1000] [--scale 10000]

The real images are split into a training set (the classifier's and the memorisation check's
reference), a held-out set and a test set (CAS's). Each scenario stands in for a generator's output:
(a) held-out real images (a perfect generator), (b) the same with Gaussian pixel noise, (c) box-blurred,
(d) one label only (mode collapse), (e) copies of training images (memorisation). For each: Fréchet
distance and precision/recall/density/coverage in the classifier's feature space against the
training images (as many as the held-out set), memorisation (against all training images) and
duplicate shares in pixel space, label consistency and CAS.
``--scale`` then times the metrics at the validate stage's largest sizes (N synthetic vs N real,
28×28×1 and 64×64×3).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from genai_pipeline.datasets import BUILTINS, ImageData
from genai_pipeline.quality.images import (
    LabelClassifier,
    SmallCNN,
    classification_accuracy_score,
    duplicate_share,
    frechet_distance,
    manifold_scores,
    memorisation_share,
    train_classifier,
)


def timed(times: dict[str, float], name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, its wall time recorded under ``name``."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    times[name] = time.perf_counter() - started
    return result


def scenarios(
    train: ImageData, held_out: ImageData, noise: float, rng: np.random.Generator
) -> dict[str, ImageData]:
    """The stand-ins for generated sets, named as in the module docstring."""
    noisy = held_out.images + rng.normal(0, noise, held_out.images.shape)
    blurred = ndimage.uniform_filter(held_out.images.astype(np.float32), size=(1, 3, 3, 1))
    one_label = held_out.labels == held_out.label_names[1]
    copies = rng.choice(train.num_rows, held_out.num_rows, replace=False)
    return {
        "a real held-out": held_out,
        f"b noise σ={noise:g}": ImageData(np.clip(np.rint(noisy), 0, 255).astype(np.uint8), held_out.labels),
        "c box blur 3×3": ImageData(np.rint(blurred).astype(np.uint8), held_out.labels),
        f"d label {held_out.label_names[1]} only": ImageData(
            held_out.images[one_label], held_out.labels[one_label]
        ),
        "e training copies": ImageData(train.images[copies], train.labels[copies]),
    }


def time_at_scale(n: int, images: np.ndarray, classifier: LabelClassifier) -> None:
    """Wall times of each metric for ``n`` synthetic against ``n`` real images (tiled, then jittered
    so that no two are equal), at the data's size and as 64×64 colour images."""
    rng = np.random.default_rng(1)
    tiled = np.resize(images, (2 * n, *images.shape[1:])).astype(np.int16)
    tiled = np.clip(tiled + rng.integers(-2, 3, tiled.shape), 0, 255).astype(np.uint8)
    upscaled = np.pad(tiled.repeat(2, axis=1).repeat(2, axis=2), ((0, 0), (4, 4), (4, 4), (0, 0)))
    colour = LabelClassifier(SmallCNN(3, len(classifier.label_names)), classifier.label_names, 0.0, 0.0)
    for name, pixels, model in (
        ("x".join(map(str, images.shape[1:])), tiled, classifier),
        ("64x64x3", np.repeat(upscaled[..., :1], 3, axis=3), colour),
    ):
        real, fake, times = pixels[:n], pixels[n:], {}
        features = timed(times, f"features ({2 * n:,} images)", model.features, pixels)
        timed(times, "Fréchet distance", frechet_distance, features[:n], features[n:])
        timed(times, "precision/recall/density/coverage", manifold_scores, features[:n], features[n:])
        timed(times, "memorisation", memorisation_share, fake, real)
        timed(times, "duplicates", duplicate_share, fake)
        print(
            f"\n{n:,} synthetic vs {n:,} real, {name}: "
            + ", ".join(f"{k} {v:.2f} s" for k, v in times.items())
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "digits"])
    parser.add_argument("--held-out", type=int, default=1000, help="images per scenario (a)")
    parser.add_argument("--test", type=int, default=1000, help="real test images for CAS")
    parser.add_argument("--noise", type=float, default=25.0, help="σ of scenario (b), in pixel values")
    parser.add_argument("--steps", type=int, default=600, help="min_steps of the classifier and of CAS")
    parser.add_argument("--scale", type=int, default=10_000, help="time metrics at N vs N images (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images, labels = BUILTINS[args.dataset].load()
    order = np.random.default_rng(args.seed).permutation(len(images))
    parts = np.split(order, [args.held_out, args.held_out + args.test])
    held_out, test, train = (ImageData(images[part], labels[part]) for part in parts)
    print(
        f"{args.dataset}: {train.num_rows:,} training, {held_out.num_rows:,} held-out, "
        f"{test.num_rows:,} test images {images.shape[1:]}, {torch.get_num_threads()} threads"
    )
    classifier = train_classifier(train, min_steps=args.steps, seed=args.seed)
    accuracy = classifier.consistency(test.images, test.labels)
    print(
        f"classifier: {classifier.real_accuracy:.3f} accuracy on its held-out 10 %, "
        f"trained in {classifier.seconds:.1f} s; test accuracy {accuracy:.3f}"
    )
    # the feature-space metrics assume sets of equal size (coverage and recall fall with fewer
    # synthetic points): the reference is as many training images as a scenario has
    rng = np.random.default_rng(args.seed)
    reference = classifier.features(
        train.images[rng.choice(train.num_rows, held_out.num_rows, replace=False)]
    )

    header = f"{'scenario':<22}{'n':>6}{'FD':>9}{'prec':>7}{'recall':>7}{'dens':>7}{'cover':>7}"
    header += f"{'memo':>7}{'dupl':>7}{'consis':>7}{'CAS':>7}"
    rows, all_times = [], {}
    for name, fake in scenarios(train, held_out, args.noise, rng).items():
        times: dict[str, float] = {}
        features = timed(times, "features", classifier.features, fake.images)
        fd = timed(times, "FD", frechet_distance, reference, features)
        scores = timed(times, "manifold", manifold_scores, reference, features)
        memo = timed(times, "memo", memorisation_share, fake.images, train.images)
        dupl = timed(times, "dupl", duplicate_share, fake.images)
        consistency = timed(times, "consis", classifier.consistency, fake.images, fake.labels)
        cas = timed(
            times, "CAS", classification_accuracy_score, fake, test, seed=args.seed, min_steps=args.steps
        )
        rows.append(
            f"{name:<22}{fake.num_rows:>6}{fd:>9.2f}{scores['precision']:>7.3f}{scores['recall']:>7.3f}"
            f"{scores['density']:>7.3f}{scores['coverage']:>7.3f}{memo:>7.3f}{dupl:>7.3f}"
            f"{consistency:>7.3f}{cas:>7.3f}"
        )
        all_times[name] = times
    print("\n" + header + "\n" + "\n".join(rows))
    print(f"\nwall times (s); memorisation against all {train.num_rows:,} training images:")
    print(f"{'scenario':<22}" + "".join(f"{k:>10}" for k in next(iter(all_times.values()))))
    for name, times in all_times.items():
        print(f"{name:<22}" + "".join(f"{v:>10.2f}" for v in times.values()))
    if args.scale:
        time_at_scale(args.scale, images, classifier)


if __name__ == "__main__":
    main()
