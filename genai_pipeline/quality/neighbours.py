"""Nearest neighbours by blocked all-pairs distances: what the privacy and image metrics share.

Distances run as matrix products (‖q‖² + ‖p‖² − 2 q·p, fast on CPU and GPU), a block of query rows
at a time, each block written into one buffer of about :data:`BLOCK_ELEMENTS` entries that every
block reuses. So the memory a search takes is that one buffer, whatever the number of queries, and
it stays one buffer on any heap: a fresh block per step (as ``torch.cdist`` allocates, with its
temporaries) left glibc's heap in a worker thread, where Prefect runs the validation, holding
gigabytes of 8–32 MB blocks (BENCHMARKS.md, "Adult through the whole job").
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from genai_pipeline.training import batched_indices

#: distance-matrix entries computed at once (16 MB of float64, 8 MB of float32)
BLOCK_ELEMENTS = 1 << 21


def chunk_rows(columns: int) -> int:
    """Query rows per block when each row has ``columns`` distances."""
    return max(1, BLOCK_ELEMENTS // max(1, columns))


def distance_blocks(queries: torch.Tensor, points: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Euclidean distances from ``queries`` to ``points``, block by block of query rows:
    ``(start, stop, block)`` with ``block[i, j]`` the distance from query ``start + i`` to point
    ``j``. Every block is a view of the same buffer, which the next block overwrites: use a block
    before asking for the next one."""
    rows = chunk_rows(len(points))
    squared_points = points.square().sum(dim=1)
    buffer = torch.empty((min(rows, len(queries)), len(points)), dtype=points.dtype, device=points.device)
    for start, stop in batched_indices(len(queries), rows):
        query, block = queries[start:stop], buffer[: stop - start]
        torch.addmm(squared_points, query, points.T, alpha=-2.0, out=block)
        block.add_(query.square().sum(dim=1, keepdim=True)).clamp_(min=0.0).sqrt_()
        yield start, stop, block


def nearest(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``k`` nearest points: distances ``(n, k)``, nearest first, and their indices.

    The matrix product finds the neighbours; their distances are then computed again as differences,
    so they are exact: a copy of a point sits at 0, where the product's rounding leaves ~1e-3 in
    float32 (~1e-7 in float64), which would tell a copy from a near miss only by chance."""
    distances = torch.empty((len(queries), k), dtype=points.dtype)
    indices = torch.empty((len(queries), k), dtype=torch.long)
    for start, stop, block in distance_blocks(queries, points):
        found = block.topk(k, dim=1, largest=False).indices
        exact = (queries[start:stop, None, :] - points[found]).norm(dim=2)
        distances[start:stop], order = exact.sort(dim=1)
        indices[start:stop] = found.gather(1, order)
    return distances, indices
