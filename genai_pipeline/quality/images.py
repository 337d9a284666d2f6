"""Image quality without downloaded networks: a small classifier trained on the real images.

Label consistency is the share of generated images that this classifier, trained on the real
images, assigns to the label they were conditioned on. Its held-out accuracy on real images is the
ceiling to read that figure against.

The same classifier's penultimate layer is the feature space for the distribution metrics (Fréchet
distance as in FID, improved precision/recall, density/coverage): no Inception weights can be
downloaded, and a network trained on the dataset itself sees what matters in it (a digit's shape,
not ImageNet textures). Its figures are comparable between runs on the same dataset and classifier,
not with published FIDs. Classification accuracy score (CAS) trains the same recipe on the generated
images and tests it on real ones; memorisation and duplicates are measured in pixel space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from genai_pipeline.datasets.base import ImageData
from genai_pipeline.models.image import to_unit
from genai_pipeline.quality.neighbours import distance_blocks, nearest
from genai_pipeline.storage import Storage
from genai_pipeline.training import adam, batched_indices

log = logging.getLogger(__name__)

#: images per forward pass when evaluating on a CPU: a chunk's activations stay in cache (10k MNIST
#: images: features in 0.8 s in batches of 32-64, 3.2 s in batches of 512; 64×64×3 about 3× faster)
EVAL_BATCH = 32


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; works for any image size from 8×8 up."""

    def __init__(self, channels: int, num_labels: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
        )
        self.head = nn.Linear(128, num_labels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


@dataclass
class LabelClassifier:
    """A trained classifier and what it knows: label names and held-out accuracy on real images."""

    net: SmallCNN
    label_names: tuple[str, ...]
    real_accuracy: float
    seconds: float

    @torch.no_grad()
    def predict(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Predicted label names for uint8 NHWC images."""
        self.net.eval()
        out = []
        for start, stop in batched_indices(len(images), batch_size):
            out.append(self.net(to_unit(images[start:stop])).argmax(dim=1).numpy())
        return np.array(self.label_names, dtype=object)[np.concatenate(out)].astype(str)

    def consistency(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Share of images classified as the label they were generated for."""
        return float(np.mean(self.predict(images) == np.asarray(labels, dtype=str)))

    @torch.no_grad()
    def features(self, images: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Penultimate-layer activations ``(N, 128)`` float32 of uint8 NHWC images: the feature
        space of :func:`frechet_distance` and :func:`manifold_scores`."""
        self.net.eval()
        out = [np.zeros((0, self.net.head.in_features), dtype=np.float32)]
        for start, stop in batched_indices(len(images), batch_size):
            out.append(self.net.features(to_unit(images[start:stop])).numpy())
        return np.concatenate(out)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and a JSON-able description, to cache the classifier (e.g. as safetensors) and
        rebuild it with :meth:`restore` without unpickling anything."""
        meta = {
            "channels": self.net.features[0].in_channels,
            "width": self.net.features[0].out_channels,
            "label_names": list(self.label_names),
            "real_accuracy": self.real_accuracy,
            "seconds": self.seconds,
        }
        return {name: t.detach().clone() for name, t in self.net.state_dict().items()}, meta

    @classmethod
    def restore(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> LabelClassifier:
        """The classifier :meth:`state` described."""
        names = tuple(meta["label_names"])
        net = SmallCNN(meta["channels"], len(names), width=meta["width"])
        net.load_state_dict(tensors)
        return cls(net.eval(), names, float(meta["real_accuracy"]), float(meta["seconds"]))


def _fit_cnn(
    images: np.ndarray, targets: np.ndarray, num_labels: int, *, min_steps: int, seed: int, max_seconds: float
) -> SmallCNN:
    """The one training recipe for the label classifier and for CAS: Adam, batches of 128, whole
    epochs until ``min_steps``, a random one-pixel shift as light augmentation, stopped early after
    ``max_seconds``. Images are scaled per batch, so 10k 64×64 colour images never exist as floats."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = SmallCNN(images.shape[3], num_labels)
    optimizer = adam(net.parameters(), lr=2e-3)
    labels = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    started = time.monotonic()
    epochs = -(-min_steps // -(-len(images) // 128))
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for start, stop in batched_indices(len(order), 128):
            batch = order[start:stop]
            shift = tuple(int(s) for s in rng.integers(-1, 2, size=2))
            loss = F.cross_entropy(net(torch.roll(to_unit(images[batch]), shift, dims=(2, 3))), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if time.monotonic() - started > max_seconds:
                return net.eval()
    return net.eval()


def train_classifier(
    data: ImageData, *, min_steps: int = 600, seed: int = 0, holdout: float = 0.1, max_seconds: float = 120
) -> LabelClassifier:
    """Train the label classifier on real images (CPU: ~30 s for the 5,000 MNIST images)."""
    order = np.random.default_rng(seed).permutation(data.num_rows)
    cut = max(1, int(data.num_rows * holdout))
    test, train = order[:cut], order[cut:]
    names = tuple(data.label_names)
    index = {name: i for i, name in enumerate(names)}
    targets = np.array([index[label] for label in data.labels[train]], dtype=np.int64)
    started = time.monotonic()
    net = _fit_cnn(
        data.images[train], targets, len(names), min_steps=min_steps, seed=seed, max_seconds=max_seconds
    )
    classifier = LabelClassifier(net, names, 0.0, time.monotonic() - started)
    classifier.real_accuracy = classifier.consistency(data.images[test], data.labels[test])
    return classifier


def cached_classifier(
    storage: Storage, folder: str, real: ImageData, *, min_steps: int, seed: int
) -> LabelClassifier:
    """The label classifier kept in ``folder`` (safetensors and JSON, nothing pickled), trained on
    the real images first when it is not there: a nightly job on unchanged data trains it once."""
    if storage.exists(f"{folder}/classifier.json"):
        meta = json.loads(storage.read_bytes(f"{folder}/classifier.json"))
        tensors = load_tensors(storage.read_bytes(f"{folder}/weights.safetensors"))
        return LabelClassifier.restore(tensors, meta)
    classifier = train_classifier(real, min_steps=min_steps, seed=seed)
    tensors, meta = classifier.state()
    storage.write_bytes(f"{folder}/weights.safetensors", save_tensors(tensors))
    storage.write_bytes(f"{folder}/classifier.json", json.dumps(meta).encode())  # last: marks it complete
    log.info(
        "label classifier: %.3f held-out accuracy, trained in %.1f s", meta["real_accuracy"], meta["seconds"]
    )
    return classifier


def classification_accuracy_score(
    synthetic: ImageData,
    real_test: ImageData,
    *,
    seed: int = 0,
    min_steps: int = 600,
    max_seconds: float = 120,
) -> float:
    """CAS (Ravuri & Vinyals 2019): accuracy on real held-out images of a classifier trained only on
    the synthetic images and their labels.

    Unlike label consistency, it sees whether the generated images cover each label's variety: a
    model that draws one good "7" passes consistency but teaches a poor classifier. Labels are
    matched by name; a real label the synthetic set lacks is never learnt, so it costs its share.
    """
    if synthetic.shape[2] != real_test.shape[2]:
        raise ValueError(f"synthetic images have {synthetic.shape[2]} channels, real {real_test.shape[2]}")
    names = tuple(dict.fromkeys((*real_test.label_names, *synthetic.label_names)))
    index = {name: i for i, name in enumerate(names)}
    targets = np.array([index[label] for label in synthetic.labels], dtype=np.int64)
    net = _fit_cnn(
        synthetic.images, targets, len(names), min_steps=min_steps, seed=seed, max_seconds=max_seconds
    )
    return LabelClassifier(net, names, float("nan"), 0.0).consistency(real_test.images, real_test.labels)


def frechet_distance(real: np.ndarray, synthetic: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` (FID's formula).

    ``tr(sqrt(S1 S2))`` is computed as the sum of square roots of the eigenvalues of the symmetric
    ``sqrt(S1) S2 sqrt(S1)`` (same eigenvalues as ``S1 S2``): two ``eigh`` calls, no complex
    ``sqrtm`` results to discard and no singular-matrix retry when features have dead units.
    """
    a, b = np.asarray(real, dtype=np.float64), np.asarray(synthetic, dtype=np.float64)
    if min(len(a), len(b)) < 2:
        raise ValueError("the Fréchet distance needs at least two feature vectors on each side")
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = np.sqrt(np.linalg.eigvalsh((middle + middle.T) / 2).clip(min=0)).sum()
    mean_term = np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
    return max(float(mean_term + np.trace(cov_a) + np.trace(cov_b) - 2 * cross), 0.0)


def manifold_scores(real: np.ndarray, synthetic: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020) of
    synthetic against real feature sets, from k-NN balls.

    Each real point's ball reaches its k-th nearest real neighbour (each synthetic point's, for
    recall, its k-th nearest synthetic one). Precision: share of synthetic points inside some real
    ball (fidelity); recall: share of real points inside some synthetic ball (diversity); density:
    real balls holding each synthetic point, over k, averaged (≈1 when the distributions match, and
    unlike precision not fooled by a few outliers with huge balls); coverage: share of real balls
    holding at least one synthetic point. Sets of similar size compare best: fewer synthetic points
    have larger balls (recall rises) and hit fewer real balls (coverage falls). The radii are
    computed once and the cross distances in one chunked pass: 10k × 10k points take ~1.5 s and
    ~64 MB at a time.
    """
    r = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    s = torch.from_numpy(np.ascontiguousarray(synthetic, dtype=np.float32))
    if k >= min(len(r), len(s)):
        raise ValueError(f"k={k} needs more than {k} real and synthetic feature vectors")
    real_radii = nearest(r, r, k + 1)[0][:, -1]  # the first "neighbour" is the point itself
    synthetic_radii = nearest(s, s, k + 1)[0][:, -1]
    inside_real = torch.zeros(len(s))  # real balls holding each synthetic point
    nearest_synthetic = torch.full((len(r),), float("inf"))
    recalled = torch.zeros(len(r), dtype=torch.bool)
    for start, stop, distances in distance_blocks(s, r):
        inside_real[start:stop] = (distances <= real_radii).sum(dim=1).float()
        nearest_synthetic = torch.minimum(nearest_synthetic, distances.min(dim=0).values)
        recalled |= (distances <= synthetic_radii[start:stop, None]).any(dim=0)
    return {
        "precision": float((inside_real > 0).float().mean()),
        "recall": float(recalled.float().mean()),
        "density": float(inside_real.mean() / k),
        "coverage": float((nearest_synthetic <= real_radii).float().mean()),
    }


def _flat_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images).reshape(len(images), -1)).float().div(255.0)


def label_distribution(real: np.ndarray, synthetic: np.ndarray) -> float:
    """1 − total variation distance between the real and generated label shares."""
    names = sorted(set(real.tolist()) | set(synthetic.tolist()))
    real_share = np.array([np.mean(real == name) for name in names])
    synth_share = np.array([np.mean(synthetic == name) for name in names])
    return float(1 - 0.5 * np.abs(real_share - synth_share).sum())


def pixel_histogram(real: np.ndarray, synthetic: np.ndarray, bins: int = 32) -> float:
    """1 − total variation distance between the real and generated pixel-intensity histograms."""
    real_hist = np.bincount(real.ravel() // (256 // bins), minlength=bins) / real.size
    synth_hist = np.bincount(synthetic.ravel() // (256 // bins), minlength=bins) / synthetic.size
    return float(1 - 0.5 * np.abs(real_hist - synth_hist).sum())


def memorisation_share(
    synthetic: np.ndarray,
    training: np.ndarray,
    *,
    ratio: float = 1 / 3,
    neighbours: int = 10,
    max_training: int = 10_000,
    seed: int = 0,
) -> float:
    """Share of generated images that are copies, or near-copies, of one training image.

    A ratio test in pixel space (values in [0, 1], L2): a generated image counts when its nearest
    training image is closer than ``ratio`` × its mean distance to the next ``neighbours - 1``
    training images, i.e. it stands out as *that* image rather than as an ordinary member of its
    neighbourhood (the kind of normalised distance Carlini et al. 2023 use to find extracted
    training images). An absolute threshold, even one scaled to the data, cannot tell a copy from a
    common shape: held-out MNIST "1"s lie within 0.3 × the median training nearest-neighbour
    distance 4 % of the time, other digits never.

    Calibrated on MNIST (4,000 training / 1,000 held-out) and digits (1,438 / 359): no held-out
    real image reaches 1/3 (the ratio's 1 % quantile is 0.57-0.68 per MNIST digit, 0.41-0.66 per
    digits digit); exact copies score 0; copies with Gaussian pixel noise of σ = 0.05 score a
    median 0.18 (MNIST) and 0.25 (digits), so are caught, σ = 0.1 0.34 and 0.46, mostly not; a
    one-pixel shift 0.8-0.9, not at all (a known blind spot of pixel distances).

    Training images beyond ``max_training`` are subsampled for speed: a copy of one left out goes
    uncounted.
    """
    if synthetic.shape[1:] != training.shape[1:]:
        raise ValueError(f"generated images are {synthetic.shape[1:]}, training {training.shape[1:]}")
    if len(training) < 2:
        raise ValueError("memorisation needs two or more training images")
    if len(training) > max_training:
        keep = np.random.default_rng(seed).choice(len(training), max_training, replace=False)
        training = training[np.sort(keep)]
    points, queries = _flat_unit(training), _flat_unit(synthetic)
    distances, _ = nearest(queries, points, min(neighbours, len(points)))
    # nearest's distances are exact: a copy scores 0 even where the training set holds several
    # identical images
    return float((distances[:, 0] <= ratio * distances[:, 1:].mean(dim=1)).float().mean())


def duplicate_share(images: np.ndarray) -> float:
    """Share of images that repeat, byte for byte, an earlier image of the same set (0 when all are
    distinct; ``(n - 1) / n`` when all are the same)."""
    if len(images) == 0:
        return 0.0
    distinct = {hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images}
    return 1.0 - len(distinct) / len(images)
