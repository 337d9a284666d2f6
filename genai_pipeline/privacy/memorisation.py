"""Runs of words a synthetic text must not share with few training texts.

A language model trained on real text can write out a sentence one person wrote. The rule, value
protection's for text: a run of :data:`RUN_WORDS` consecutive words (or a whole text shorter than
that) that fewer than ``min_rows`` training texts hold is never published. Phrases many texts share
("arrived on time and works") may come out; a sentence of one review may not. The text models keep
the hashes of the rare runs (in the private workspace, with the model) and draw again a text that
holds one (:mod:`genai_pipeline.models.text`); validation measures the same share on the output
(:mod:`genai_pipeline.quality.text`), so the gate checks what generation enforces.

Words are lower-cased ``\\w+`` runs and single punctuation marks, so spacing and case do not hide a
copied sentence. Hashes are 8 bytes of BLAKE2b: stable across processes, unlike ``hash()``.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

#: a run is this many words long
RUN_WORDS = 8
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return _WORD.findall(text.lower())


def _hash(value: str) -> int:
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little", signed=True)


def runs(text: str) -> set[int]:
    """The hashes of ``text``'s runs of :data:`RUN_WORDS` words (of the whole, when shorter), and
    of the text exactly as written: a text fewer than ``min_rows`` rows hold is a rare value,
    however its words are cased and spaced in the others."""
    tokens = words(text)
    spans = (
        [tokens]
        if len(tokens) < RUN_WORDS
        else [tokens[i : i + RUN_WORDS] for i in range(len(tokens) - RUN_WORDS + 1)]
    )
    return {_hash("\x1f".join(span)) for span in spans} | {_hash("\x00" + text)}


def held_runs(texts: Iterable[str]) -> Counter[int]:
    """How many of ``texts`` hold each run."""
    held: Counter[int] = Counter()
    for text in texts:
        held.update(runs(text))
    return held


def rare_runs(texts: Iterable[str], min_rows: int) -> np.ndarray:
    """The sorted hashes of the runs fewer than ``min_rows`` of ``texts`` hold."""
    rare = [run for run, count in held_runs(texts).items() if count < min_rows]
    return np.sort(np.asarray(rare, dtype=np.int64))


def holds_rare(text: str, rare: np.ndarray) -> bool:
    """Whether ``text`` holds one of the ``rare`` runs (sorted hashes)."""
    if not len(rare):
        return False
    hashes = np.fromiter(runs(text), dtype=np.int64)
    found = np.minimum(np.searchsorted(rare, hashes), len(rare) - 1)
    return bool(np.any(rare[found] == hashes))


def memorised_share(training: Sequence[str], synthetic: Sequence[str], min_rows: int) -> float:
    """The share of ``synthetic`` texts holding a run fewer than ``min_rows`` training texts hold."""
    rare = rare_runs(training, min_rows)
    return sum(holds_rare(text, rare) for text in synthetic) / max(len(synthetic), 1)
