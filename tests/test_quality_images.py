"""Image quality metrics on constructed cases whose answer is known: feature sets drawn from chosen
Gaussians, digits with their labels kept, shuffled or cut, copies, noise and repeated images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from genai_pipeline.datasets.base import ImageData
from genai_pipeline.datasets.builtin import BUILTINS
from genai_pipeline.quality.images import (
    LabelClassifier,
    classification_accuracy_score,
    duplicate_share,
    frechet_distance,
    manifold_scores,
    memorisation_share,
    train_classifier,
)


@pytest.fixture(scope="module")
def digits() -> tuple[ImageData, ImageData]:
    """scikit-learn's digits split into a training and a held-out set (1,400 / 397 images)."""
    images, labels = BUILTINS["digits"].load()
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:1400], order[1400:]
    return ImageData(images[train], labels[train]), ImageData(images[test], labels[test])


def _gaussian(n: int, dim: int, mean: float = 0.0, scale: float = 1.0, seed: int = 0) -> np.ndarray:
    return (mean + scale * np.random.default_rng(seed).standard_normal((n, dim))).astype(np.float32)


def test_features_are_the_penultimate_layer_and_survive_a_state_round_trip(digits) -> None:
    train, test = digits
    classifier = train_classifier(train, min_steps=20)
    features = classifier.features(test.images[:50])
    assert features.shape == (50, 128) and features.dtype == np.float32
    logits = classifier.net.head(torch.from_numpy(features)).argmax(dim=1).numpy()
    assert (np.array(classifier.label_names)[logits] == classifier.predict(test.images[:50])).all()
    assert classifier.features(test.images[:0]).shape == (0, 128)
    tensors, meta = classifier.state()
    restored = LabelClassifier.restore(tensors, meta)
    assert (
        restored.label_names == classifier.label_names and restored.real_accuracy == classifier.real_accuracy
    )
    np.testing.assert_array_equal(restored.features(test.images[:50]), features)


def test_frechet_distance_matches_the_gaussian_formula_and_scipy() -> None:
    real = _gaussian(20_000, 4)
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    # N(0, I) vs N(m, s²I) in d dimensions: |m|² + d (1 - s)²
    shifted = _gaussian(20_000, 4, mean=1.0, scale=2.0, seed=1)
    assert frechet_distance(real, shifted) == pytest.approx(4 * 1.0 + 4 * 1.0, rel=0.05)
    # correlated features with a dead unit: same figure as scipy's sqrtm formulation
    mix = np.random.default_rng(2).standard_normal((6, 6))
    a, b = _gaussian(500, 6, seed=3) @ mix, _gaussian(500, 6, seed=4) @ mix.T
    a[:, 0] = b[:, 0] = 0.0
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    offset = 1e-6 * np.eye(6)
    root = linalg.sqrtm((cov_a + offset) @ (cov_b + offset)).real
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(cov_a + cov_b - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-4)


def test_manifold_scores_separate_fidelity_from_diversity() -> None:
    real = _gaussian(1000, 8)
    same = manifold_scores(real, real)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0
    assert same["density"] >= 1.0  # each point sits in its own ball and those of its neighbours
    fresh = manifold_scores(real, _gaussian(1000, 8, seed=1))
    assert min(fresh["precision"], fresh["recall"], fresh["coverage"]) > 0.85
    assert 0.8 < fresh["density"] < 1.2
    shifted = _gaussian(1000, 8, mean=1.5, seed=1)
    assert frechet_distance(real, shifted) > 10 * frechet_distance(real, _gaussian(1000, 8, seed=1))
    moved = manifold_scores(real, shifted)
    assert moved["precision"] < 0.4 and moved["density"] < 0.2 and moved["coverage"] < 0.2
    spread = manifold_scores(real, _gaussian(1000, 8, scale=2.0, seed=1))  # diverse, not faithful
    assert spread["precision"] < 0.4 and spread["recall"] > 0.95
    # four well-separated modes in the real set, the synthetic set in one of them only
    centres = np.repeat(20.0 * np.eye(4, 8, dtype=np.float32), 250, axis=0)
    modes = real + centres
    one_mode = _gaussian(250, 8, seed=2) + centres[:1]
    collapsed = manifold_scores(modes, one_mode)
    assert collapsed["precision"] > 0.9
    assert collapsed["recall"] < 0.3 and collapsed["coverage"] < 0.3
    with pytest.raises(ValueError, match="k=5"):
        manifold_scores(real, real[:5])


def test_classification_accuracy_score_needs_labels_that_fit_the_images(digits) -> None:
    train, test = digits
    assert classification_accuracy_score(train, test, min_steps=150) > 0.8
    shuffled = np.random.default_rng(0).permutation(train.labels)
    assert classification_accuracy_score(ImageData(train.images, shuffled), test, min_steps=150) < 0.25
    # a synthetic set with half the labels: the real images of the other half are never right
    half = np.isin(train.labels, ["0", "1", "2", "3", "4"])
    ceiling = float(np.isin(test.labels, ["0", "1", "2", "3", "4"]).mean())
    partial = classification_accuracy_score(
        ImageData(train.images[half], train.labels[half]), test, min_steps=150
    )
    assert 0.8 * ceiling < partial <= ceiling


def test_memorisation_share_counts_copies_only(digits) -> None:
    train, test = digits
    assert memorisation_share(train.images[:300], train.images) == 1.0
    assert memorisation_share(test.images, train.images) < 0.01
    noise = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 1), dtype=np.uint8)
    assert memorisation_share(noise, train.images) == 0.0
    # lightly perturbed copies (σ = 0.03 of the pixel range) still stand out from their neighbours
    jitter = np.random.default_rng(1).normal(0, 0.03 * 255, (300, 8, 8, 1))
    perturbed = np.clip(train.images[:300] + jitter, 0, 255).astype(np.uint8)
    assert memorisation_share(perturbed, train.images) > 0.9
    # a copy of an image the training set holds many times over is still a copy
    repeated = np.concatenate([train.images, np.repeat(train.images[:1], 20, axis=0)])
    assert memorisation_share(train.images[:1], repeated) == 1.0
    # with the training set subsampled, copies of the images it kept are still found
    assert memorisation_share(train.images[:300], train.images[:300], max_training=200) == pytest.approx(
        200 / 300
    )


def test_duplicate_share_is_exact() -> None:
    distinct = np.arange(10 * 4, dtype=np.uint8).reshape(10, 2, 2, 1)
    assert duplicate_share(distinct) == 0.0
    repeated = np.concatenate([distinct, distinct[[0, 0, 0, 5]]])
    assert duplicate_share(repeated) == pytest.approx(4 / 14)
    assert duplicate_share(np.zeros((8, 3, 3, 3), dtype=np.uint8)) == pytest.approx(7 / 8)
    assert duplicate_share(distinct[:0]) == 0.0
