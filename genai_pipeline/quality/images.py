"""Image quality without downloaded networks: a small classifier trained on the real images.

Label consistency is the share of generated images that this classifier, trained on the real
images, assigns to the label they were conditioned on. Its held-out accuracy on real images is the
ceiling to read that figure against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from genai_pipeline.datasets.base import ImageData
from genai_pipeline.models.image_common import to_unit


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
    def predict(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted label names for uint8 NHWC images."""
        self.net.eval()
        out = []
        for start in range(0, len(images), batch_size):
            logits = self.net(to_unit(images[start : start + batch_size]))
            out.append(logits.argmax(dim=1).numpy())
        return np.array(self.label_names, dtype=object)[np.concatenate(out)].astype(str)

    def consistency(self, images: np.ndarray, labels: np.ndarray) -> float:
        """Share of images classified as the label they were generated for."""
        return float(np.mean(self.predict(images) == np.asarray(labels, dtype=str)))


def train_classifier(
    data: ImageData, *, min_steps: int = 600, seed: int = 0, holdout: float = 0.1, max_seconds: float = 120
) -> LabelClassifier:
    """Train the label classifier on real images (CPU: ~30 s for the 5,000 MNIST images)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(data.num_rows)
    cut = max(1, int(data.num_rows * holdout))
    test, train = order[:cut], order[cut:]
    names = tuple(data.label_names)
    index = {name: i for i, name in enumerate(names)}
    targets = torch.tensor([index[label] for label in data.labels])
    images = to_unit(data.images)
    net = SmallCNN(data.shape[2], len(names))
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    started = time.monotonic()
    epochs = -(-min_steps // -(-len(train) // 128))
    for _ in range(epochs):
        net.train()
        for start in range(0, len(train), 128):
            batch = torch.from_numpy(train[start : start + 128])
            shift = tuple(int(s) for s in rng.integers(-1, 2, size=2))  # light augmentation
            loss = F.cross_entropy(net(torch.roll(images[batch], shift, dims=(2, 3))), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if time.monotonic() - started > max_seconds:
            break
    classifier = LabelClassifier(net, names, 0.0, time.monotonic() - started)
    classifier.real_accuracy = classifier.consistency(data.images[test], data.labels[test])
    return classifier
