"""Text column metrics: fidelity, consistency with the row and memorisation.

- **length**: 1 − KS of the texts' lengths in words, real against synthetic.
- **vocabulary**: 1 − TVD of the frequencies of the words (lower-cased) that at least ``min_rows``
  real texts use, the others pooled: do the same words come as often.
- **distinct-1 / distinct-2**: distinct words (pairs of words) over all of them, synthetic over
  real (1: as varied; below: repetitive; above: more varied than the real texts).
- **perplexity ratio**: the perplexity of the synthetic texts under a character 5-gram model of the
  training texts (:class:`CharNgram`) over the held-out real texts' (1: as likely as unseen real
  text; far above: unlike the real language).
- **consistency**: per categorical column (the label first, a few at most), how well a TF-IDF +
  logistic regression classifier trained on the real texts recovers the row's value from a
  synthetic text, over how well it does on held-out real texts (1: the texts carry their row's
  value as the real ones do; a 1-star review reads like one).
- **memorised share** (gated, ``validate.max_text_memorised``): the share of synthetic texts that
  share a run of :data:`RUN_WORDS` words (the whole text, when shorter) with fewer than ``min_rows``
  training texts: a sentence one person wrote, replayed. ``copied_share``: the share equal to a
  training text, however common.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import ks_2samp

from genai_pipeline.privacy.memorisation import memorised_share, words

#: categorical columns whose consistency with the text is scored, at most
CONSISTENCY_COLUMNS = 3
#: a column with more categories than this is not scored for consistency
CONSISTENCY_CATEGORIES = 20
#: texts each side the classifier and the n-gram model look at, at most
MAX_TEXTS = 5_000


@dataclass
class TextScores:
    """One text column's scores (see the module's doc)."""

    length: float
    vocabulary: float
    distinct: dict[str, float]
    perplexity_ratio: float | None
    memorised_share: float
    copied_share: float
    consistency: dict[str, float] = field(default_factory=dict)
    #: the words at least ``min_rows`` real texts use, most frequent first (what may be shown)
    common_words: list[str] = field(default_factory=list)


def memorisation(training: Sequence[str], synthetic: Sequence[str], min_rows: int) -> tuple[float, float]:
    """``(memorised share, copied share)`` of ``synthetic`` against the ``training`` texts."""
    exact = set(training)
    copied = sum(text in exact for text in synthetic) / max(len(synthetic), 1)
    return memorised_share(training, synthetic, min_rows), copied


def _distinct(texts: Sequence[list[str]], n: int) -> float:
    grams = [tuple(t[i : i + n]) for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


class CharNgram:
    """A character n-gram model with Witten–Bell interpolation: the simplest honest language model,
    for the perplexity ratio and as the baseline the benchmark compares against."""

    END = "\x03"

    def __init__(self, texts: Sequence[str], order: int = 5):
        self.order = order
        self.counts: list[dict[str, Counter[str]]] = [{} for _ in range(order)]
        for text in texts:
            padded = "\x02" * (order - 1) + text + self.END
            for i in range(order - 1, len(padded)):
                for k in range(order):
                    self.counts[k].setdefault(padded[i - k : i], Counter())[padded[i]] += 1
        self.alphabet = len(self.counts[0].get("", Counter())) + 1

    def _prob(self, history: str, char: str) -> float:
        prob = 1.0 / self.alphabet
        for k in range(self.order):
            seen = self.counts[k].get(history[len(history) - k :] if k else "")
            if not seen:
                continue
            total, types = sum(seen.values()), len(seen)
            prob = (seen.get(char, 0) + types * prob) / (total + types)
        return prob

    def perplexity(self, texts: Sequence[str]) -> float:
        """Per character (the end of each text included)."""
        log_sum, count = 0.0, 0
        for text in texts:
            padded = "\x02" * (self.order - 1) + text + self.END
            for i in range(self.order - 1, len(padded)):
                log_sum -= math.log(self._prob(padded[i - self.order + 1 : i], padded[i]))
                count += 1
        return math.exp(log_sum / max(count, 1))

    def sample(self, n: int, seed: int, max_chars: int = 1_000) -> list[str]:
        """``n`` texts drawn character by character."""
        rng = np.random.default_rng(seed)
        chars = sorted(self.counts[0][""])
        out = []
        for _ in range(n):
            text = ""
            while len(text) < max_chars:
                history = ("\x02" * (self.order - 1) + text)[-(self.order - 1) :]
                probs = np.array([self._prob(history, c) for c in chars])
                char = chars[rng.choice(len(chars), p=probs / probs.sum())]
                if char == self.END:
                    break
                text += char
            out.append(text)
        return out


def _consistency(
    training: Sequence[str],
    training_values: Sequence[str],
    holdout: Sequence[str],
    holdout_values: Sequence[str],
    synthetic: Sequence[str],
    synthetic_values: Sequence[str],
) -> float | None:
    """Synthetic accuracy over held-out real accuracy of a classifier of the texts' column value."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if len(set(training_values)) < 2 or not holdout or not synthetic:
        return None
    classifier = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), LogisticRegression(max_iter=1_000)
    )
    classifier.fit(list(training), list(training_values))
    real = float(np.mean(classifier.predict(list(holdout)) == np.asarray(holdout_values)))
    synthetic_accuracy = float(np.mean(classifier.predict(list(synthetic)) == np.asarray(synthetic_values)))
    return min(synthetic_accuracy / real, 1.0) if real > 0 else None


def score_text(
    training: Sequence[str | None],
    holdout: Sequence[str | None],
    synthetic: Sequence[str | None],
    *,
    columns: dict[str, tuple[Sequence[str], Sequence[str], Sequence[str]]],
    min_rows: int,
    seed: int,
) -> TextScores:
    """A text column's scores. ``columns``: per categorical column to check consistency with, its
    values in the training, holdout and synthetic rows (as strings, aligned with the texts)."""
    rng = np.random.default_rng(seed)

    def sample(texts: Sequence[str | None]) -> list[int]:
        present = [i for i, t in enumerate(texts) if t is not None]
        return (
            sorted(rng.choice(present, size=MAX_TEXTS, replace=False))
            if len(present) > MAX_TEXTS
            else present
        )

    rows = {"training": sample(training), "holdout": sample(holdout), "synthetic": sample(synthetic)}
    texts = {
        "training": [str(training[i]) for i in rows["training"]],
        "holdout": [str(holdout[i]) for i in rows["holdout"]],
        "synthetic": [str(synthetic[i]) for i in rows["synthetic"]],
    }
    real_words = [words(t) for t in texts["training"]]
    synthetic_words = [words(t) for t in texts["synthetic"]]
    lengths = (  # no text on a side (all null): nothing alike
        ks_2samp([len(w) for w in real_words], [len(w) for w in synthetic_words]).statistic
        if real_words and synthetic_words
        else 1.0
    )
    documents = Counter(word for w in real_words for word in set(w))
    common = [word for word, count in documents.most_common() if count >= min_rows]
    vocabulary = _vocabulary(real_words, synthetic_words, set(common))
    same = min(len(real_words), len(synthetic_words))  # distinct-n falls with the number of texts
    distinct = {
        f"distinct_{n}": _distinct(synthetic_words[:same], n) / max(_distinct(real_words[:same], n), 1e-9)
        for n in (1, 2)
    }
    ratio = None
    if texts["holdout"] and texts["synthetic"]:
        model = CharNgram(texts["training"])
        ratio = model.perplexity(texts["synthetic"]) / model.perplexity(texts["holdout"])
    memorised, copied = memorisation(texts["training"], texts["synthetic"], min_rows)
    consistency = {}
    for name, (train_values, holdout_values, synthetic_values) in list(columns.items())[:CONSISTENCY_COLUMNS]:
        score = _consistency(
            texts["training"],
            [train_values[i] for i in rows["training"]],
            texts["holdout"],
            [holdout_values[i] for i in rows["holdout"]],
            texts["synthetic"],
            [synthetic_values[i] for i in rows["synthetic"]],
        )
        if score is not None:
            consistency[name] = score
    return TextScores(
        length=float(1 - lengths),
        vocabulary=vocabulary,
        distinct=distinct,
        perplexity_ratio=ratio,
        memorised_share=memorised,
        copied_share=copied,
        consistency=consistency,
        common_words=common[:30],
    )


def _vocabulary(real: list[list[str]], synthetic: list[list[str]], common: set[str]) -> float:
    """1 − TVD of the common words' frequencies (the others pooled as one)."""

    def frequencies(texts: list[list[str]]) -> Counter[str]:
        return Counter(word if word in common else "\x00" for w in texts for word in w)

    real_counts, synthetic_counts = frequencies(real), frequencies(synthetic)
    real_total, synthetic_total = max(sum(real_counts.values()), 1), max(sum(synthetic_counts.values()), 1)
    keys = set(real_counts) | set(synthetic_counts)
    return float(
        1 - 0.5 * sum(abs(real_counts[k] / real_total - synthetic_counts[k] / synthetic_total) for k in keys)
    )
