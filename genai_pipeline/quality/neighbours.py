"""Nearest neighbours by chunked all-pairs distances: what the privacy and image metrics share.

``torch.cdist`` runs Euclidean distances as matrix products (fast on CPU and GPU); chunking the
queries keeps each distance block near :data:`CHUNK_ELEMENTS` entries, so 10k × 50k points never
hold more than 64 MB at once.
"""

from __future__ import annotations

import torch

from genai_pipeline.training import batched_indices

#: distance-matrix entries computed at once (64 MB of float32)
CHUNK_ELEMENTS = 1 << 24


def chunk_rows(columns: int) -> int:
    """Query rows per block when each row has ``columns`` distances."""
    return max(1, CHUNK_ELEMENTS // max(1, columns))


def nearest(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` nearest points: distances ``(n, k)``, nearest first, and their indices."""
    distances, indices = [], []
    for start, stop in batched_indices(len(queries), chunk_rows(len(points))):
        found = torch.cdist(queries[start:stop], points).topk(k, dim=1, largest=False)
        distances.append(found.values)
        indices.append(found.indices)
    if not distances:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(distances), torch.cat(indices)
