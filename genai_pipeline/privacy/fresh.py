"""Identifiers and personal data generated fresh at sampling time instead of learned.

A generative model that learns an id or e-mail column can only reproduce real values (it has nothing
else to sample), and a rare real value is exactly what re-identifies a person. Such columns are
therefore kept out of the model: :class:`FreshColumn` fits what a fresh column must look like (the
id's format, the kind and locale of the personal data, the null share, whether values were unique)
without keeping any real value, plus a :class:`ValueFilter` of the real values that must never come
out; :func:`generate_fresh` then makes the values of any range of rows of a run.

Everything is a pure function of ``(key, global row index)``: randomness comes from a keyed
counter-based hash (splitmix64 over the row index), and uniqueness from a keyed bijection (a small
Feistel network) applied to the row index, never from state carried between batches. Shards of one
run and batches of one shard therefore agree without coordination, and ids and e-mails stay unique
across all of them.

Speed (one Xeon core; ``generate_fresh`` over an id ``C000123``, email, first_name, last_name and
phone, fitted on 100,000 real rows): 1M rows take 2.2-3.0 s as ten batches of 100k, about 0.5 µs
per value, so 10M rows stream in under half a minute. Rendering 1M ids alone takes 0.2 s. Fitting
on 10M real ids takes about 9 s (distinct values, format, filter).
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import math
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from faker import Faker
from faker.config import AVAILABLE_LOCALES
from pandas.util import hash_array

from genai_pipeline.columns import dense

PII_KINDS = (
    "email",
    "phone",
    "first_name",
    "last_name",
    "name",  # a person's full name
    "username",
    "street_address",
    "iban",
    "credit_card",
    "ssn",
    "ipv4",
)
#: Locales whose name lists are compared when inferring the locale of names.
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pt_BR", "pl_PL", "sv_SE", "ja_JP")
DEFAULT_LOCALE = "en_US"
#: Domains reserved for examples (RFC 2606): a fresh address at a real provider, built from a common
#: name, may well be somebody's real inbox; at these it is nobody's.
EMAIL_DOMAINS = ("example.com", "example.net", "example.org")
#: Detection and locale inference read at most this many non-null values, spread over the column.
SAMPLE_SIZE = 2000
#: Share of sampled values that must match a kind's pattern for values alone to make a column PII.
MATCH_SHARE = 0.9
#: A column named like a patterned kind stays PII unless fewer than this share of values match: a
#: half-filled ``email`` column still holds real addresses.
NAME_CONFIRM_SHARE = 0.1
#: Filter hits redraw a personal value at most this many times; then the value is kept, since a hit
#: may be a false positive or a common value (see ``_PERSON_ATTEMPTS`` for people).
PII_ATTEMPTS = 8
#: Counters (and so capacities) stay below this, so that numpy's int64 holds every product.
_BUDGET = 1 << 62
#: Values hashed at once while a filter is built.
_FIT_CHUNK = 1 << 20
#: A format is widened unless a run's expected number of ids that find no free counter is below this.
_EXHAUST_RISK = 1e-6


# -- keyed counter-based randomness --------------------------------------------------------------


def _subkey(*parts: object) -> int:
    """A 64-bit key derived from a key and labels, so that columns and purposes draw independently."""
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 whose outputs look independent of its inputs."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    return x ^ (x >> 31)


def _hash(key: int, values: np.ndarray) -> np.ndarray:
    """Keyed uint64 hashes of non-negative integers (row indices, counters): this module's RNG.

    A seeded generator per row would cost microseconds each; hashing the row index gives the same
    per-row independence, vectorised, and is what makes every value a function of its row alone."""
    k = np.uint64(key)
    return _mix(_mix(values.astype(np.uint64) ^ k) + k)


def _uniform(key: int, values: np.ndarray) -> np.ndarray:
    return (_hash(key, values) >> 11).astype(np.float64) * 2.0**-53


def _below(key: int, values: np.ndarray, n: int) -> np.ndarray:
    """Keyed draws in ``[0, n)``, as int64."""
    h = _hash(key, values)
    if n <= 1 << 32:
        return (((h >> 32) * np.uint64(n)) >> 32).astype(np.int64)
    return (h % np.uint64(n)).astype(np.int64)


class _Permutation:
    """A keyed bijection on ``[0, n)``, vectorised.

    Four Feistel rounds on the next even power of two (a permutation of that domain), then
    cycle-walking: a value that lands at or beyond ``n`` is permuted again until it falls inside,
    which stays a bijection because each step is one. The domain is at most 4n, so few steps are
    needed. Applied to row indices, it gives distinct, random-looking counters without any memory
    of which counters were used: the basis of uniqueness across batches and shards.
    """

    def __init__(self, key: int, n: int) -> None:
        if not 1 <= n <= _BUDGET:
            raise ValueError(f"a permutation needs 1 <= n <= 2**62, not {n}")
        bits = max(2, (n - 1).bit_length())
        self.n = n
        self.half = np.uint64((bits + bits % 2) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        self.keys = [np.uint64(_subkey(key, "feistel", i)) for i in range(4)]

    def _once(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        for k in self.keys:
            left, right = right, left ^ (_mix(right ^ k) & self.mask)
        return (left << self.half) | right

    def __call__(self, values: np.ndarray) -> np.ndarray:
        out = self._once(values.astype(np.uint64))
        outside = np.flatnonzero(out >= self.n)
        while outside.size:
            out[outside] = self._once(out[outside])
            outside = outside[out[outside] >= self.n]
        return out.astype(np.int64)


# -- strings from bytes -----------------------------------------------------------------------------


def _strings(matrix: np.ndarray, lengths: np.ndarray | None = None) -> pa.Array:
    """Rows of a uint8 matrix (the first ``lengths[i]`` bytes of row i) as an Arrow string array,
    built from buffers: no Python object per row."""
    n, width = matrix.shape
    if lengths is None:
        data = np.ascontiguousarray(matrix).reshape(-1)
        offsets = np.arange(n + 1, dtype=np.int64) * width
    else:
        data = matrix[np.arange(width) < lengths[:, None]]
        offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    if offsets[-1] >= 1 << 31:
        return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))


def _stack(n: int, pieces: list[tuple[np.ndarray, np.ndarray]]) -> pa.Array:
    """Strings for n rows from ``(rows, matrix)`` pieces of different widths."""
    width = max((matrix.shape[1] for _, matrix in pieces), default=0)
    out = np.zeros((n, width), dtype=np.uint8)
    lengths = np.zeros(n, dtype=np.int64)
    for rows, matrix in pieces:
        out[rows, : matrix.shape[1]] = matrix
        lengths[rows] = matrix.shape[1]
    return _strings(out, lengths)


class _Patches:
    """Values of n rows collected over rounds of redraws: each round fills some rows, the rest retry."""

    def __init__(self, n: int) -> None:
        self.chunks: list[pa.Array] = []
        self.where = np.zeros(n, dtype=np.int64)
        self.size = 0

    def put(self, rows: np.ndarray, values: pa.Array) -> None:
        self.where[rows] = self.size + np.arange(len(rows))
        self.size += len(rows)
        self.chunks.append(values)

    def result(self, type_: pa.DataType) -> pa.Array:
        if not self.chunks:
            return pa.array([], type=type_)
        if len(self.chunks) == 1:
            return self.chunks[0]
        return pa.concat_arrays([chunk.cast(type_) for chunk in self.chunks]).take(pa.array(self.where))


# -- patterns: strings of one layout --------------------------------------------------------------

_CLASSES = {
    "digit": string.digits,
    "nonzero": "123456789",
    "lower": string.ascii_lowercase,
    "upper": string.ascii_uppercase,
    "letter": string.ascii_letters,
    "hex": "0123456789abcdef",
    "HEX": "0123456789ABCDEF",
    "alnum_lower": string.digits + string.ascii_lowercase,
    "alnum_upper": string.digits + string.ascii_uppercase,
    "alnum": string.digits + string.ascii_letters,
}


def _alphabet(position: str) -> str:
    """A position is ``=x`` (the literal x), ``[chars]`` (one of chars) or a class name."""
    if position.startswith("="):
        return position[1:]
    if position.startswith("["):
        return position[1:-1]
    return _CLASSES[position]


class _Pattern:
    """Strings of one layout, numbered: ``render`` maps distinct counters to distinct strings.

    The counter is written in mixed radix into the variable positions, rightmost first, as long as
    the product of their alphabet sizes stays within ``budget``; positions beyond (a 30-character
    token has more combinations than int64 can count) are filled from a hash of the counter, which
    keeps the map injective (the encoded positions alone tell counters apart) and the text varied.
    """

    def __init__(self, positions: list[str], budget: int = _BUDGET) -> None:
        self.positions = positions
        template = bytearray()
        slots: list[tuple[int, np.ndarray]] = []
        for position in positions:
            if position.startswith("="):
                template += position[1:].encode()
            else:
                slots.append((len(template), np.frombuffer(_alphabet(position).encode(), dtype=np.uint8)))
                template += b"\0"
        self.template = np.frombuffer(bytes(template), dtype=np.uint8)
        self.encoded: list[tuple[int, np.ndarray]] = []
        self.hashed: list[tuple[int, np.ndarray]] = []
        self.capacity = 1
        for offset, alphabet in reversed(slots):
            if not self.hashed and self.capacity * len(alphabet) <= budget:
                self.capacity *= len(alphabet)
                self.encoded.append((offset, alphabet))
            else:
                self.hashed.append((offset, alphabet))

    @property
    def width(self) -> int:
        return len(self.template)

    def render(self, counters: np.ndarray) -> np.ndarray:
        """A uint8 matrix, one row of bytes per counter (counters below :attr:`capacity`)."""
        out = np.empty((len(counters), self.width), dtype=np.uint8)
        out[:] = self.template
        rest = counters.astype(np.int64)
        for offset, alphabet in self.encoded:
            rest, digit = np.divmod(rest, len(alphabet))
            out[:, offset] = alphabet[digit]
        for index, (offset, alphabet) in enumerate(self.hashed):
            out[:, offset] = alphabet[_below(index, counters, len(alphabet))]
        return out


# -- identifier formats -------------------------------------------------------------------------


def _class_of(chars: set[str], count: int) -> str:
    """The position class of the characters seen at one position of ``count`` ids.

    A digit position that never shows 0 over many ids (the first digit of unpadded numbers) draws
    from 1-9; with few ids a missing 0 means nothing. Letters outside ASCII count as letters of
    their case (fresh ids are ASCII). Varying punctuation is kept as a set, together with the class
    of the letters and digits seen beside it.
    """
    other = "".join(sorted(ch for ch in chars if ch.isascii() and not ch.isalnum() and ch.isprintable()))
    digit = any(ch.isascii() and ch.isdigit() for ch in chars)
    lower = any(ch.isalpha() and ch.islower() for ch in chars)
    upper = any(ch.isalpha() and ch.isupper() for ch in chars)
    hexes = all(ch in string.hexdigits for ch in chars if ch.isalnum())
    if digit and not (lower or upper or other):
        return "nonzero" if "0" not in chars and count >= 50 else "digit"
    if digit and hexes and lower != upper:
        name = "hex" if lower else "HEX"
    elif lower and upper:
        name = "alnum" if digit else "letter"
    elif lower or upper:
        name = ("alnum_" if digit else "") + ("lower" if lower else "upper")
    elif other:
        return "[" + other + "]"
    else:
        name = "alnum"  # unprintable or unusual characters only: draw plain ones instead
    return "[" + other + _CLASSES[name] + "]" if other else name


def _layout(columns: list[set[str]], count: int) -> list[str]:
    """Positions of ids of one length from the characters seen at each position.

    A position where every id has the same character is literal, but only when the group has at
    least two ids: a single id of its length would otherwise be stored whole. Its letters and digits
    become classes instead (punctuation stays literal: it spells no value)."""
    positions = []
    for chars in columns:
        only = next(iter(chars)) if len(chars) == 1 else None
        if only is not None and (count >= 2 or not only.isalnum()):
            positions.append("=" + only)
        else:
            positions.append(_class_of(chars, count))
    return positions


def _string_groups(values: pa.Array) -> dict[int, tuple[int, list[set[str]]]]:
    """``{length: (count, characters seen per position)}`` of distinct non-empty strings.

    ASCII columns are read from Arrow's buffers with one bincount per position (exact over millions
    of ids); others (rare for ids) go through Python."""
    array = pc.cast(values, pa.large_string())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    data_buffer = array.buffers()[2]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    used = data[offsets[0] : offsets[-1]]
    groups: dict[int, tuple[int, list[set[str]]]] = {}
    if used.size == 0 or used.max() < 128:
        lengths = np.diff(offsets)
        for length in np.unique(lengths[lengths > 0]).tolist():
            starts = offsets[:-1][lengths == length]
            columns = [
                {chr(byte) for byte in np.flatnonzero(np.bincount(data[starts + i], minlength=128))}
                for i in range(length)
            ]
            groups[length] = (len(starts), columns)
        return groups
    by_length: dict[int, list[str]] = {}
    for value in array.to_pylist():
        if value:
            by_length.setdefault(len(value), []).append(value)
    for length, strings in by_length.items():
        groups[length] = (len(strings), [{value[i] for value in strings} for i in range(length)])
    return groups


def _digit_count(magnitude: np.ndarray) -> np.ndarray:
    return 1 + np.searchsorted(10 ** np.arange(1, 19, dtype=np.int64), magnitude, side="right")


class IdFormat:
    """The format of an identifier column, numbered so that distinct counters make distinct ids.

    Strings are grouped by length (the length distribution is kept); within a group each position
    is a literal (every real id has that character there) or a class: digit, 1-9, lower, upper,
    hex, alphanumeric. ``C000123`` is ``C`` and six digits; ``AB-1234-x`` keeps its dashes.
    Integers keep their sign and digit count. Counters are split into one block per group, sized by
    the group's share of real ids, so uniformly drawn counters reproduce the length distribution.

    Widening (:meth:`widened`): when a run needs more ids than the format holds, every group gains
    one variable position: a literal digit just left of the variable part (padding) turns variable
    (``C000123`` seen only as ``C000xyz`` becomes ``C00wxyz``); without one, a position of the same
    class is inserted before the variable part (``C`` + 6 digits becomes ``C`` + 7 digits), so
    prefixes stay; integers gain a digit.
    """

    def __init__(self, groups: list[dict[str, Any]], *, integer: bool, bounds: tuple[int, int] | None = None):
        self.groups = groups
        self.integer = integer
        self.bounds = bounds  # (min, max) of an integer column's type
        shares = [group["share"] for group in groups]
        if integer:
            self._ranges = [self._range(group) for group in groups]
            caps = [min(_BUDGET, max(0, high - low + 1)) for low, high in self._ranges]
        else:
            self._patterns = [_Pattern(group["positions"]) for group in groups]
            caps = [pattern.capacity for pattern in self._patterns]
        limit = min((cap / share for cap, share in zip(caps, shares) if share > 0), default=0.0)
        limit = min(float(_BUDGET), limit)
        self._caps = caps
        self._blocks = [min(cap, int(limit * share)) for cap, share in zip(caps, shares)]
        self._ends = np.cumsum(np.asarray(self._blocks, dtype=np.int64))

    def _range(self, group: dict[str, Any]) -> tuple[int, int]:
        """The magnitudes of a (sign, digits) group that the column's type can hold."""
        low_type, high_type = self.bounds or (-(1 << 63), (1 << 63) - 1)
        digits = group["digits"]
        low = 10 ** (digits - 1) if digits > 1 else (0 if group["sign"] > 0 else 1)
        high = min(10**digits - 1, high_type if group["sign"] > 0 else -low_type, (1 << 63) - 1)
        return low, high

    @classmethod
    def fit(cls, values: pa.Array) -> IdFormat:
        """Learn the format of the distinct non-null values of a string or integer column."""
        return cls._from_distinct(pc.unique(dense(values).drop_null()))

    @classmethod
    def _from_distinct(cls, values: pa.Array) -> IdFormat:
        """:meth:`fit` on values already distinct and non-null (one pass fewer over millions of ids)."""
        if len(values) == 0:
            raise ValueError("an id format needs at least one non-null value")
        if pa.types.is_integer(values.type):
            numbers = values.cast(pa.int64()).to_numpy()
            signs = np.where(numbers < 0, -1, 1)
            digits = _digit_count(np.abs(numbers))
            keys = Counter(zip(signs.tolist(), digits.tolist()))
            info = np.iinfo(values.type.to_pandas_dtype())
            groups = [
                {"share": count / len(numbers), "sign": sign, "digits": digit}
                for (sign, digit), count in sorted(keys.items())
            ]
            return cls(groups, integer=True, bounds=(int(info.min), min(int(info.max), (1 << 63) - 1)))
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            raise ValueError(f"ids must be strings or integers, not {values.type}")
        groups_seen = _string_groups(values)
        if not groups_seen:
            raise ValueError("an id format needs at least one non-empty value")
        total = sum(count for count, _ in groups_seen.values())
        groups = [
            {"share": count / total, "positions": _layout(columns, count)}
            for _, (count, columns) in sorted(groups_seen.items())
        ]
        return cls(groups, integer=False)

    @property
    def capacity(self) -> int:
        """How many distinct ids :meth:`render` can make (at most 2**62)."""
        return int(self._ends[-1]) if len(self._ends) else 0

    def render(self, counters: np.ndarray) -> pa.Array:
        """Distinct ids for distinct counters in ``[0, capacity)``: ``int64`` or ``string``."""
        counters = np.asarray(counters, dtype=np.int64)
        if counters.size and (counters.min() < 0 or counters.max() >= self.capacity):
            raise ValueError(f"counters must lie in [0, {self.capacity})")
        group = np.searchsorted(self._ends, counters, side="right")
        within = counters - np.concatenate([[0], self._ends])[group]
        numbers = np.zeros(len(counters), dtype=np.int64)
        pieces: list[tuple[np.ndarray, np.ndarray]] = []
        for index in np.unique(group).tolist():
            rows = np.flatnonzero(group == index)
            spread = self._spread(within[rows], self._caps[index], self._blocks[index])
            if self.integer:
                low, _ = self._ranges[index]
                numbers[rows] = self.groups[index]["sign"] * (low + spread)
            else:
                pieces.append((rows, self._patterns[index].render(spread)))
        return pa.array(numbers, type=pa.int64()) if self.integer else _stack(len(counters), pieces)

    @staticmethod
    def _spread(within: np.ndarray, cap: int, block: int) -> np.ndarray:
        """A group's block of counters spread over all the group's ids (injectively): a block smaller
        than the group would otherwise leave its leading positions at their first characters."""
        stride = cap // block
        if stride <= 1:
            return within
        return within * stride + _below(stride, within, stride)

    def widened(self) -> IdFormat:
        """The format with one more variable position or digit (see the class docstring)."""
        if self.integer:
            groups = [{**group, "digits": group["digits"] + 1} for group in self.groups]
            wider = IdFormat(groups, integer=True, bounds=self.bounds)
        else:
            convert = all(self._convertible(group["positions"]) is not None for group in self.groups)
            wider = IdFormat(
                [{**group, "positions": self._widen(group["positions"], convert)} for group in self.groups],
                integer=False,
            )
        if wider.capacity <= self.capacity:
            raise ValueError(f"the id format cannot hold more than {self.capacity} ids")
        return wider

    @staticmethod
    def _convertible(positions: list[str]) -> int | None:
        """The literal digit directly left of the variable part (zero padding), if any."""
        first = next((i for i, position in enumerate(positions) if not position.startswith("=")), None)
        if not first:
            return None
        literal = positions[first - 1][1:]
        return first - 1 if len(literal) == 1 and literal in string.digits else None

    @classmethod
    def _widen(cls, positions: list[str], convert: bool) -> list[str]:
        """One group's positions with one more variable position. Either every group converts a
        literal (lengths stay) or every group inserts one (lengths all grow by one), so groups keep
        distinct lengths and never make the same id."""
        positions = list(positions)
        if convert:
            index = cls._convertible(positions)
            assert index is not None
            positions[index] = "digit"
            return positions
        first = next((i for i, position in enumerate(positions) if not position.startswith("=")), None)
        if first is None:
            return [*positions, "digit"]
        inserted = positions[first]
        positions[first] = "digit" if inserted == "nonzero" else inserted
        return positions[:first] + [inserted] + positions[first:]

    def fitting(self, needed: int, excluded: int, false_positive_rate: float) -> IdFormat:
        """This format, widened until ``needed`` fresh ids fit beside ``excluded`` real ones.

        Besides room for twice (needed + excluded), each id must be nearly sure to find a counter
        that is not excluded: row i tries counters ``i, i + needed, …`` (see :func:`generate_fresh`),
        about ``capacity / needed`` of them, each excluded with probability ``excluded / capacity``
        plus the filter's false-positive rate."""
        fmt = self
        while True:
            capacity = fmt.capacity
            if capacity >= 2 * (needed + excluded):
                share = min(1.0, excluded / capacity + false_positive_rate)
                if needed * share ** (capacity // max(needed, 1)) <= _EXHAUST_RISK:
                    return fmt
            fmt = fmt.widened()

    def to_state(self) -> dict[str, Any]:
        return {"integer": self.integer, "groups": self.groups, "bounds": self.bounds}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> IdFormat:
        bounds = tuple(state["bounds"]) if state.get("bounds") is not None else None
        return cls(state["groups"], integer=state["integer"], bounds=bounds)  # type: ignore[arg-type]


# -- the filter of real values ------------------------------------------------------------------


def _as_strings(values: Sequence[str] | np.ndarray | pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Values as an object array of str: integers in decimal, so that a real id and a fresh one
    compare equal whatever integer type carried them."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        values = pa.array(values)
    if isinstance(values, pa.Array):
        values = dense(values)
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            values = pc.cast(values, pa.string())
        return values.to_numpy(zero_copy_only=False).astype(object)
    return np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=object)


@dataclass
class ValueFilter:
    """A keyed Bloom filter of real values that must never be emitted.

    Values are hashed with SipHash under a random per-model key (``salt``), vectorised by
    :func:`pandas.util.hash_array`; the k probes come from double hashing. The key is stored with
    the filter, which lives in the private model file: its purpose is exclusion, not secrecy (a
    Bloom filter can be tested for a guessed value by whoever holds it). A value never inserted is
    reported as contained with probability ``false_positive_rate``; an inserted one always is.
    """

    bits: np.ndarray  # packed, little bit order
    size: int  # number of bits
    hashes: int
    count: int  # values inserted
    salt: bytes
    false_positive_rate: float

    @classmethod
    def fit(
        cls,
        values: Sequence[str] | np.ndarray | pa.Array,
        key: bytes,
        false_positive_rate: float = 0.01,
    ) -> ValueFilter:
        if not 0 < false_positive_rate < 1:
            raise ValueError("false_positive_rate must lie in (0, 1)")
        if not isinstance(values, (pa.Array, np.ndarray)):
            values = np.asarray(list(values), dtype=object)
        count = len(values)
        size = max(64, math.ceil(-count * math.log(false_positive_rate) / math.log(2) ** 2))
        hashes = max(1, round(size / max(count, 1) * math.log(2)))
        flags = np.zeros(size, dtype=bool)
        filter_ = cls(np.zeros(0, np.uint8), size, hashes, count, key, false_positive_rate)
        for start in range(0, count, _FIT_CHUNK):  # bounded memory for tens of millions of ids
            flags[filter_._probes(_as_strings(values[start : start + _FIT_CHUNK])).ravel()] = True
        filter_.bits = np.packbits(flags, bitorder="little")
        return filter_

    def _probes(self, strings: np.ndarray) -> np.ndarray:
        """Bit positions, one row per value and one column per hash."""
        key = base64.b64encode(hashlib.blake2b(self.salt, digest_size=12).digest()).decode()
        first = hash_array(strings, hash_key=key, categorize=False)
        step = _mix(first) | np.uint64(1)
        steps = np.arange(self.hashes, dtype=np.uint64)
        return ((first[:, None] + steps * step[:, None]) % np.uint64(self.size)).astype(np.int64)

    def contains(self, values: Sequence[str] | np.ndarray | pa.Array) -> np.ndarray:
        """True where a value may have been inserted: always for inserted values, for any other
        value with probability about ``false_positive_rate``."""
        strings = _as_strings(values)
        if not self.count or not len(strings):
            return np.zeros(len(strings), dtype=bool)
        probes = self._probes(strings)
        found = (self.bits[probes >> 3] >> (probes & 7).astype(np.uint8)) & 1
        return found.all(axis=1)

    def to_state(self) -> dict[str, Any]:
        return {
            "bits": base64.b64encode(self.bits.tobytes()).decode(),
            "size": self.size,
            "hashes": self.hashes,
            "count": self.count,
            "salt": base64.b64encode(self.salt).decode(),
            "false_positive_rate": self.false_positive_rate,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ValueFilter:
        return cls(
            np.frombuffer(base64.b64decode(state["bits"]), dtype=np.uint8),
            state["size"],
            state["hashes"],
            state["count"],
            base64.b64decode(state["salt"]),
            state["false_positive_rate"],
        )


# -- detection --------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,}"
)
_PHONE = re.compile(r"\+?[0-9(][0-9 ()-]*[0-9]")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SSN = re.compile(r"\d{3}-\d{2}-\d{4}")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")
_CARD = re.compile(r"\d{13,19}")
_NUMERIC = re.compile(r"[\d\s.,:/+()-]*")


def _luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def _iban_valid(text: str) -> bool:
    compact = text.replace(" ", "")
    if not _IBAN.fullmatch(compact):
        return False
    return int("".join(str(int(ch, 36)) for ch in compact[4:] + compact[:4])) % 97 == 1


def _is_phone(text: str) -> bool:
    """Digits with spaces, ``+``, ``-`` and brackets; 7-15 digits. Dates and bare numbers not
    starting with 0 (counts, codes, amounts as text) are not phones."""
    if not _PHONE.fullmatch(text) or _DATE.fullmatch(text):
        return False
    digits = sum(ch.isdigit() for ch in text)
    return 7 <= digits <= 15 and not (text.isdigit() and not text.startswith("0"))


def _is_card(text: str) -> bool:
    compact = text.replace(" ", "").replace("-", "")
    return bool(_CARD.fullmatch(compact)) and _luhn_valid(compact)


#: Kinds recognisable from values, in the order they are tried (the narrower pattern first: an SSN
#: or a short card number would also pass as a phone).
_VALUE_CHECKS: dict[str, Callable[[str], bool]] = {
    "email": lambda text: bool(_EMAIL.fullmatch(text)),
    "ssn": lambda text: bool(_SSN.fullmatch(text)),
    "ipv4": lambda text: bool(_IPV4.fullmatch(text)),
    "iban": _iban_valid,
    "credit_card": _is_card,
    "phone": _is_phone,
}

#: Words that make ``<word>_name`` a person's name (``customer_name``, not ``product_name``).
_PERSON_WORDS = frozenset(
    [
        "full",
        "customer",
        "client",
        "person",
        "contact",
        "patient",
        "employee",
        "member",
        "owner",
        "holder",
        "cardholder",
        "guest",
        "passenger",
        "driver",
        "recipient",
        "sender",
        "buyer",
        "student",
        "applicant",
        "beneficiary",
        "display",
    ]
)
_LOGIN_NAMES = frozenset({"login", "userlogin", "loginname", "screenname", "nickname"})


def _tokens(name: str) -> list[str]:
    """A column name's words, lower case: snake, camel, kebab and space separated alike."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    spaced = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", spaced)
    return [token for token in re.split(r"[^A-Za-z0-9]+", spaced.lower()) if token]


def _kind_by_name(name: str) -> str | None:
    """The PII kind a column name announces, or None. Rules are tried in order: ``email_address``
    and ``ip_address`` are an e-mail and an IP before they are an address."""
    tokens = _tokens(name)
    compact = "".join(tokens)
    words = set(tokens)
    pairs = {"".join(tokens[i : i + 2]) for i in range(len(tokens) - 1)}
    if "email" in compact or "mail" in words or "mailaddress" in pairs:
        return "email"
    if words & {"ip", "ipv4", "ipaddress", "ipaddr"}:
        return "ipv4"
    if "iban" in words:
        return "iban"
    if (
        "creditcard" in compact
        or "cardnumber" in compact
        or words & {"ccnumber", "ccnum"}
        or ("card" in words and words & {"no", "num", "number"})
    ):
        return "credit_card"
    if "ssn" in words or "socialsecurity" in compact:
        return "ssn"
    if "phone" in compact or words & {"tel", "telephone", "mobile", "cell", "fax", "msisdn"}:
        return "phone"
    if compact.endswith("username") or compact in _LOGIN_NAMES:
        return "username"
    if compact.endswith(("firstname", "givenname", "forename")) or compact == "fname":
        return "first_name"
    if compact.endswith(("lastname", "surname", "familyname")) or compact == "lname":
        return "last_name"
    if (
        tokens == ["name"]
        or compact.endswith("fullname")
        or (tokens[-1:] == ["name"] and words & _PERSON_WORDS)
    ):
        return "name"
    if words & {"address", "addr", "street", "streetaddress"} or compact.startswith("addressline"):
        return None if words & {"mac", "url", "web", "host", "server"} else "street_address"
    return None


def _sample(values: pa.Array) -> list[str]:
    """Up to :data:`SAMPLE_SIZE` non-null values, evenly spread over the column (deterministic, and
    a sorted column still shows its whole range)."""
    present = dense(values).drop_null()
    if len(present) > SAMPLE_SIZE:
        present = present.take(pa.array(np.linspace(0, len(present) - 1, SAMPLE_SIZE).astype(np.int64)))
    return [str(value) for value in present.to_pylist()]


def _is_text(type_: pa.DataType) -> bool:
    type_ = type_.value_type if pa.types.is_dictionary(type_) else type_
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def detect_pii(name: str, values: pa.Array) -> str | None:
    """The PII kind of a column (one of :data:`PII_KINDS`), or None.

    By name and by values: values alone make a column PII when at least :data:`MATCH_SHARE` of a
    sample match a kind's pattern; a name makes it PII unless the values contradict it (a patterned
    kind that almost no value matches, or names that are numbers). Only text can be PII.
    """
    if not _is_text(values.type):
        return None
    sample = _sample(values)
    shares: dict[str, float] = {}

    def share(kind: str) -> float:
        if kind not in shares:
            shares[kind] = sum(map(_VALUE_CHECKS[kind], sample)) / len(sample)
        return shares[kind]

    by_name = _kind_by_name(name)
    if not sample:
        return by_name
    by_value = next((kind for kind in _VALUE_CHECKS if share(kind) >= MATCH_SHARE), None)
    if by_name is None:
        return by_value
    if by_name in _VALUE_CHECKS:
        return by_name if share(by_name) >= NAME_CONFIRM_SHARE else by_value
    if by_value is not None:
        return by_value
    numeric = sum(bool(_NUMERIC.fullmatch(text)) for text in sample) / len(sample)
    return None if numeric >= MATCH_SHARE else by_name


# -- Faker's data, per locale -----------------------------------------------------------------------


def _provider(module: str, locale: str) -> Any:
    """Faker's provider class of a kind of data for a locale, else en_US's."""
    for candidate in (locale, DEFAULT_LOCALE):
        try:
            return importlib.import_module(f"faker.providers.{module}.{candidate}").Provider
        except ImportError:
            continue
    raise LookupError(f"Faker has no {module} provider")


_FOLD = str.maketrans({"ß": "ss", "æ": "ae", "ø": "o", "œ": "oe", "ł": "l", "đ": "d", "þ": "th", "ð": "d"})


def _ascii(text: str) -> str:
    """A name as lower-case a-z only (accents dropped): the stuff of e-mail addresses."""
    folded = unicodedata.normalize("NFKD", text.lower().translate(_FOLD))
    return "".join(ch for ch in folded if "a" <= ch <= "z")


@dataclass(frozen=True)
class _Names:
    """A locale's first and last names, as shown and as ASCII, one entry per distinct ASCII form (so
    that a person's names and number determine their e-mail address)."""

    first: pa.Array
    first_ascii: pa.Array
    last: pa.Array
    last_ascii: pa.Array
    last_first: bool  # the full name is written family name first
    known_first: frozenset[str]  # lower case, as shown and as ASCII: for locale inference
    known_last: frozenset[str]


def _name_list(provider: Any, part: str) -> tuple[list[str], dict[str, str]]:
    """All of a provider's first (or last) names, and romanisations where it has them (ja_JP)."""
    names: list[str] = []
    roman: dict[str, str] = {}
    for attribute in sorted(dir(provider)):
        value = getattr(provider, attribute)
        if re.fullmatch(rf"{part}_names(_\w+)?|\w+_{part}_names", attribute):
            if isinstance(value, (tuple, list, dict)) and len(value) > 1:
                names += [name for name in value if isinstance(name, str)]
        elif re.fullmatch(rf"{part}_name(_\w+)?_pairs", attribute) and isinstance(value, (tuple, list, dict)):
            roman.update({pair[0]: pair[-1] for pair in value if isinstance(pair, tuple)})
    return list(dict.fromkeys(names)), roman


@lru_cache(maxsize=64)
def _names(locale: str) -> _Names:
    provider = _provider("person", locale)
    lists = []
    known = []
    for part in ("first", "last"):
        names, roman = _name_list(provider, part)
        by_ascii: dict[str, str] = {}
        for name in names:
            by_ascii.setdefault(_ascii(roman.get(name, name)), name)
        by_ascii.pop("", None)
        lists.append((pa.array(list(by_ascii.values())), pa.array(list(by_ascii))))
        known.append(frozenset(name.lower() for name in names) | frozenset(by_ascii))
    formats = list(provider.formats)
    first_format = formats[0] if formats else ""
    last_first = 0 <= first_format.find("{{last_name") < first_format.find("{{first_name")
    return _Names(*lists[0], *lists[1], last_first, known[0], known[1])


_CALLING_CODES = {
    "1": "en_US",
    "7": "ru_RU",
    "31": "nl_NL",
    "32": "nl_BE",
    "33": "fr_FR",
    "34": "es_ES",
    "39": "it_IT",
    "41": "de_CH",
    "43": "de_AT",
    "44": "en_GB",
    "45": "da_DK",
    "46": "sv_SE",
    "47": "no_NO",
    "48": "pl_PL",
    "49": "de_DE",
    "52": "es_MX",
    "55": "pt_BR",
    "61": "en_AU",
    "64": "en_NZ",
    "81": "ja_JP",
    "82": "ko_KR",
    "86": "zh_CN",
    "90": "tr_TR",
    "91": "en_IN",
    "351": "pt_PT",
    "353": "en_IE",
    "358": "fi_FI",
    "420": "cs_CZ",
}
_TLDS = {
    "uk": "en_GB",
    "de": "de_DE",
    "fr": "fr_FR",
    "es": "es_ES",
    "it": "it_IT",
    "nl": "nl_NL",
    "br": "pt_BR",
    "pl": "pl_PL",
    "se": "sv_SE",
    "jp": "ja_JP",
    "at": "de_AT",
    "ch": "de_CH",
    "be": "nl_BE",
    "dk": "da_DK",
    "fi": "fi_FI",
    "no": "no_NO",
    "pt": "pt_PT",
    "cz": "cs_CZ",
    "ie": "en_IE",
    "ru": "ru_RU",
    "tr": "tr_TR",
    "cn": "zh_CN",
    "kr": "ko_KR",
    "in": "en_IN",
    "mx": "es_MX",
    "au": "en_AU",
    "nz": "en_NZ",
}


@lru_cache(maxsize=1)
def _iban_countries() -> dict[str, str]:
    """Country code → a Faker locale that makes IBANs of that country (from Faker's bank providers)."""
    countries: dict[str, str] = {}
    for locale in sorted(AVAILABLE_LOCALES, key=lambda locale: (locale not in LOCALES, locale)):
        try:
            provider = importlib.import_module(f"faker.providers.bank.{locale}").Provider
        except ImportError:
            continue
        countries.setdefault(provider.country_code, locale)
    return countries


def _vote(votes: list[str], minimum: int = 1) -> str:
    """The most common locale among votes (ties: the earlier in :data:`LOCALES`), else the default."""
    counts = Counter(votes)
    if not counts or max(counts.values()) < minimum:
        return DEFAULT_LOCALE
    order = {locale: index for index, locale in enumerate(LOCALES)}
    return min(counts, key=lambda locale: (-counts[locale], order.get(locale, len(order)), locale))


def _name_locale(kind: str, sample: list[str]) -> str:
    """The candidate locale whose name lists hold the most sampled names (or name parts)."""
    tokens = [
        token
        for text in sample
        for token in (re.split(r"[\s,]+", text.lower().strip()) if kind == "name" else [text.lower().strip()])
        if token
    ]
    best, best_hits = DEFAULT_LOCALE, 0
    for locale in LOCALES:
        names = _names(locale)
        known = {"first_name": names.known_first, "last_name": names.known_last}.get(
            kind, names.known_first | names.known_last
        )
        hits = sum(token in known for token in tokens)
        if hits > best_hits:
            best, best_hits = locale, hits
    return best


@lru_cache(maxsize=1)
def _street_words() -> dict[str, tuple[str, ...]]:
    """Each candidate locale's street prefixes and suffixes (``rue``, ``straße``, ``gatan``), lower
    case, as Faker's address providers list them."""
    words = {}
    for locale in LOCALES:
        provider = _provider("address", locale)
        words[locale] = tuple(
            {
                word.strip(" -.").lower()
                for attribute in dir(provider)
                if attribute.startswith(("street_prefixes", "street_suffixes"))
                for word in getattr(provider, attribute)
                if isinstance(word, str) and len(word.strip(" -.")) >= 3
            }
        )
    return words


def _street_locale(sample: list[str]) -> str:
    """The candidate locale whose street words begin or end the most sampled words (``rue``,
    ``…straße``, ``…gatan``); a word shared by several locales (``avenue``) does not vote."""
    markers = _street_words()
    votes = []
    for text in sample:
        for word in text.lower().split():
            word = word.strip(".,")
            matches = [locale for locale in LOCALES if word.endswith(markers[locale]) and markers[locale]]
            if len(matches) == 1:
                votes.append(matches[0])
    return _vote(votes)


def infer_locale(kind: str, values: pa.Array) -> str:
    """The Faker locale of a PII column's values (default en_US), from a sample of at most
    :data:`SAMPLE_SIZE` values: names by the candidate locales' name lists, phones by country
    calling code, IBANs by country, e-mails by country top-level domain, streets by suffixes."""
    if kind not in PII_KINDS:
        raise ValueError(f"unknown PII kind {kind!r}; expected one of {', '.join(PII_KINDS)}")
    if not _is_text(values.type):
        return DEFAULT_LOCALE
    sample = _sample(values)
    if kind in ("first_name", "last_name", "name"):
        return _name_locale(kind, sample)
    if kind == "phone":
        votes = []
        for text in sample:
            match = re.match(r"\s*(?:\+|00)\s*(\d{1,3})", text)
            if match:
                code = next((match[1][:n] for n in (3, 2, 1) if match[1][:n] in _CALLING_CODES), None)
                if code:
                    votes.append(_CALLING_CODES[code])
        return _vote(votes)
    if kind == "iban":
        countries = _iban_countries()
        return _vote([countries[text[:2]] for text in sample if text[:2] in countries])
    if kind == "email":
        tlds = [text.rsplit(".", 1)[-1].lower() for text in sample if "@" in text]
        return _vote([_TLDS[tld] for tld in tlds if tld in _TLDS], minimum=max(1, len(sample) // 5))
    if kind == "street_address":
        return _street_locale(sample)
    return DEFAULT_LOCALE


# -- personal data of patterned kinds -------------------------------------------------------------


class _Renderer(Protocol):
    capacity: int

    def render(self, counters: np.ndarray) -> pa.Array: ...


def _grouped(matrix: np.ndarray, separator: str) -> np.ndarray:
    """Characters in groups of four (``DE89 3704 0044 …``, ``4111-1111-…``)."""
    if not separator:
        return matrix
    width = matrix.shape[1]
    out = np.full((len(matrix), width + (width - 1) // 4), ord(separator), dtype=np.uint8)
    out[:, np.arange(width) + np.arange(width) // 4] = matrix
    return out


def _luhn(matrix: np.ndarray) -> np.ndarray:
    """Card numbers with their last digit set to the Luhn check digit."""
    digits = matrix[:, :-1].astype(np.int64) - 48
    doubled = (digits.shape[1] - 1 - np.arange(digits.shape[1])) % 2 == 0
    values = np.where(doubled, digits * 2, digits)
    values = np.where(values > 9, values - 9, values)
    matrix[:, -1] = 48 + (10 - values.sum(axis=1) % 10) % 10
    return matrix


def _iban_check(matrix: np.ndarray) -> np.ndarray:
    """IBANs (country, ``00``, BBAN) with check digits making the mod-97 remainder 1 (ISO 13616)."""
    remainder = np.zeros(len(matrix), dtype=np.int64)
    zero = np.full(len(matrix), ord("0"), dtype=np.int64)
    # the BBAN, then the country code, then "00" where the check digits go
    for column in [*range(4, matrix.shape[1]), 0, 1, 2, 3]:
        value = zero if column in (2, 3) else matrix[:, column].astype(np.int64)
        letter = value >= ord("A")
        remainder = np.where(letter, (remainder * 100 + value - 55) % 97, (remainder * 10 + value - 48) % 97)
    check = 98 - remainder
    matrix[:, 2] = 48 + check // 10
    matrix[:, 3] = 48 + check % 10
    return matrix


class _PatternSet:
    """Values drawn from several layouts (a locale's phone formats, card brands): counter c takes
    layout ``c % n`` and writes ``c // n`` into it, so distinct counters stay distinct values."""

    def __init__(self, layouts: list[list[str]], finish: Callable[[np.ndarray], np.ndarray] | None = None):
        self.patterns = [_Pattern(layout, _BUDGET // len(layouts)) for layout in layouts]
        self.finish = finish
        self.capacity = len(self.patterns) * min(pattern.capacity for pattern in self.patterns)

    def render(self, counters: np.ndarray) -> pa.Array:
        within, layout = np.divmod(counters, len(self.patterns))
        pieces = []
        for index in np.unique(layout).tolist():
            rows = np.flatnonzero(layout == index)
            matrix = self.patterns[index].render(within[rows])
            pieces.append((rows, self.finish(matrix) if self.finish else matrix))
        return _stack(len(counters), pieces)


class _Ipv4:
    """Public-looking IPv4 addresses: first octet 1-223 except 10 and 127, then any 24 bits."""

    firsts = np.array([octet for octet in range(1, 224) if octet not in (10, 127)], dtype=np.int64)
    capacity = len(firsts) << 24

    def render(self, counters: np.ndarray) -> pa.Array:
        octets = [self.firsts[counters >> 24], (counters >> 16) & 255, (counters >> 8) & 255, counters & 255]
        return pc.binary_join_element_wise(*[pc.cast(pa.array(octet), pa.string()) for octet in octets], ".")


_CARD_BRANDS = [("4", 16), ("51", 16), ("52", 16), ("53", 16), ("54", 16), ("55", 16), ("34", 15), ("37", 15)]
#: Valid SSNs: area 100-899 but not 6xx (so never 000 or 666), group never 00, serial never 0000.
_SSN_LAYOUT = ["[1234578]", *["digit"] * 2, "=-", "digit", "nonzero", "=-", "nonzero", *["digit"] * 3]


def _phone_layouts(locale: str) -> list[list[str]]:
    """The locale's phone formats as layouts: Faker's ``#``/``%``/``$`` placeholders become digit
    classes, its ``{{area_code}}`` parts are resolved by a seeded Faker, and formats that would not
    pass as phones here (extensions, dots) are left out."""
    provider = _provider("phone_number", locale)
    fake: Faker | None = None
    layouts: dict[str, list[str]] = {}
    for text in dict.fromkeys(provider.formats):
        variants = [text]
        if "{{" in text:
            if fake is None:
                fake = Faker(locale)
                fake.seed_instance(0)
            variants = sorted({fake.parse(text) for _ in range(16)})
        for variant in variants:
            variant = variant.replace("!", "#").replace("@", "%")
            digits = sum(ch.isdigit() or ch in "#%$" for ch in variant)
            if set(variant) <= set("0123456789#%$+-() ") and 7 <= digits <= 15:
                classes = {"#": "digit", "%": "nonzero", "$": "[23456789]"}
                layouts[variant] = [classes.get(ch, "=" + ch) for ch in variant]
    return list(layouts.values()) or _phone_layouts(DEFAULT_LOCALE)


@lru_cache(maxsize=64)
def _renderer(kind: str, locale: str, separator: str) -> _Renderer:
    if kind == "phone":
        return _PatternSet(_phone_layouts(locale))
    if kind == "ssn":
        return _PatternSet([_SSN_LAYOUT])
    if kind == "ipv4":
        return _Ipv4()
    if kind == "credit_card":
        layouts = [
            [*("=" + ch for ch in prefix), *["digit"] * (length - len(prefix) - 1), "=0"]
            for prefix, length in _CARD_BRANDS
        ]
        return _PatternSet(layouts, lambda matrix: _grouped(_luhn(matrix), separator))
    if kind == "iban":
        provider = _provider("bank", locale if locale in _iban_countries().values() else "en_GB")
        bban = ["digit" if ch == "#" else "upper" for ch in provider.bban_format]
        layout = ["=" + provider.country_code[0], "=" + provider.country_code[1], "=0", "=0", *bban]
        return _PatternSet([layout], lambda matrix: _grouped(_iban_check(matrix), separator))
    raise ValueError(f"{kind} has no pattern")


@lru_cache(maxsize=16)
def _street_pool(locale: str, seed: int) -> tuple[pa.Array, pa.Array, np.ndarray]:
    """A few thousand street addresses from a seeded Faker, split around their house number:
    ``(text before, text after, has a number)``. Fresh addresses put a new number in between."""
    fake = Faker(locale)
    fake.seed_instance(seed)
    before, after, numbered = [], [], []
    for _ in range(4096):
        text = fake.street_address().replace("\n", ", ")
        match = re.search(r"\d+", text)
        before.append(text[: match.start()] if match else text)
        after.append(text[match.end() :] if match else "")
        numbered.append(match is not None)
    return pa.array(before), pa.array(after), np.array(numbered)


# -- fresh columns ---------------------------------------------------------------------------------

_PERSON_KINDS = ("first_name", "last_name", "name", "email", "username")
#: Attempts at a person whose values no filter holds; in the second half only the filters of the
#: identifying kinds (full name, e-mail, username) count, since common first names may all be held.
_PERSON_ATTEMPTS = 16
_IDENTIFYING = ("name", "email", "username")


#: what fresh personal data of a kind looks like (kinds without one: any text)
_KIND_PATTERNS = {
    "email": r"^[a-z0-9._]+@example\.(?:com|net|org)$",
    "username": r"^[a-z0-9._]+$",
    "phone": r"^[0-9+()\- ]+$",
    "iban": r"^[A-Z]{2}[0-9]{2}[A-Z0-9 \-]+$",
    "credit_card": r"^[0-9][0-9 \-]{11,22}[0-9]$",
    "ssn": r"^[0-9]{3}-[0-9]{2}-[0-9]{4}$",
    "ipv4": r"^[0-9]{1,3}(?:\.[0-9]{1,3}){3}$",
}


_CLASS_PATTERNS = {
    "digit": "[0-9]",
    "nonzero": "[1-9]",
    "lower": "[a-z]",
    "upper": "[A-Z]",
    "letter": "[A-Za-z]",
    "hex": "[0-9a-f]",
    "HEX": "[0-9A-F]",
    "alnum_lower": "[0-9a-z]",
    "alnum_upper": "[0-9A-Z]",
    "alnum": "[0-9A-Za-z]",
}


def _position_pattern(position: str) -> str:
    """One position of an id layout as a regular expression."""
    if position.startswith("="):
        return re.escape(position[1:])
    return (
        _CLASS_PATTERNS.get(position) or "[" + "".join(re.escape(char) for char in _alphabet(position)) + "]"
    )


@dataclass
class FreshColumn:
    """One column to regenerate instead of learn, fitted on the real values and JSON-able.

    Holds no real value: the format (ids), the kind and locale (PII), shares and counts, and a
    :class:`ValueFilter` of the real values that fewer than ``min_rows`` rows hold (every id;
    for personal data the rare values, which identify, not the common ones).
    """

    name: str
    role: Literal["id", "pii"]
    value_type: str
    null_share: float
    unique: bool
    distinct_ratio: float
    real_count: int  # distinct real non-null values
    filter: ValueFilter
    id_format: dict[str, Any] | None = None
    kind: str | None = None
    locale: str | None = None
    separator: str = ""  # IBANs and card numbers: between groups of four

    @classmethod
    def fit(
        cls,
        name: str,
        column: pa.Array | pa.ChunkedArray,
        *,
        role: Literal["id", "pii"],
        kind: str | None,
        locale: str | None,
        min_rows: int,
        key: int,
    ) -> FreshColumn:
        column = dense(column)
        present = column.drop_null()
        # ids need only the distinct values; personal data also their counts (rare ones are filtered)
        counts = pc.value_counts(present) if role == "pii" else None
        values = counts.field("values") if counts is not None else pc.unique(present)
        distinct = len(values)
        salt = hashlib.blake2b(f"{key}:{name}".encode(), digest_size=16).digest()
        common = dict(
            name=name,
            role=role,
            value_type=str(column.type),
            null_share=column.null_count / len(column) if len(column) else 0.0,
            unique=distinct == len(present),
            distinct_ratio=distinct / len(present) if len(present) else 1.0,
            real_count=distinct,
        )
        if role == "id":
            id_format = IdFormat._from_distinct(values).to_state() if distinct else None
            return cls(**common, filter=ValueFilter.fit(values, salt), id_format=id_format)
        if role != "pii":
            raise ValueError(f"column {name!r}: role must be 'id' or 'pii', not {role!r}")
        if not _is_text(column.type):
            raise ValueError(f"column {name!r}: only text columns hold personal data, not {column.type}")
        kind = kind or detect_pii(name, column)
        if kind not in PII_KINDS:
            raise ValueError(f"column {name!r}: PII kind {kind!r} is not one of {', '.join(PII_KINDS)}")
        if locale is not None and locale not in AVAILABLE_LOCALES:
            raise ValueError(f"column {name!r}: Faker has no locale {locale!r}")
        assert counts is not None
        rare = pc.filter(values, pc.less(counts.field("counts"), min_rows))
        separator = ""
        if kind in ("iban", "credit_card"):
            sample = _sample(present)
            separator = next(
                (sep for sep in " -" if 2 * sum(sep in text for text in sample) > len(sample)), ""
            )
        return cls(
            **common,
            filter=ValueFilter.fit(rare, salt),
            kind=kind,
            locale=locale or infer_locale(kind, present),
            separator=separator,
        )

    def to_state(self) -> dict[str, Any]:
        return {**vars(self), "filter": self.filter.to_state()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> FreshColumn:
        return cls(**{**state, "filter": ValueFilter.from_state(state["filter"])})

    def pattern(self, total: int) -> str | None:
        """A regular expression every value of a run of ``total`` rows matches (the format the
        suite checks), or None where any text passes (names, streets) or values are integers. An
        id's is its format as widened for the run: literal characters all real ids share (never a
        whole real id, see :func:`_layout`) and character classes elsewhere."""
        if self.role == "pii":
            return _KIND_PATTERNS.get(self.kind or "")
        if self.id_format is None or self.id_format["integer"]:
            return None
        slots = total if self.unique else max(1, round(total * self.distinct_ratio))
        fmt = IdFormat.from_state(self.id_format).fitting(
            slots, self.real_count, self.filter.false_positive_rate
        )
        layouts = sorted({"".join(map(_position_pattern, group["positions"])) for group in fmt.groups})
        return "^(?:" + "|".join(layouts) + ")$"

    @property
    def arrow_type(self) -> pa.DataType:
        return pa.type_for_alias(self.value_type)


def _ids(column: FreshColumn, key: int, rows: np.ndarray, total: int) -> pa.Array:
    """Fresh ids: a keyed bijection of the row index (unique) or of a pool slot (repeating).

    A candidate the filter holds is replaced by the candidate of counter ``slot + j * slots``,
    j = 1, 2, …: distinct slots never share a counter, so ids stay unique while avoiding every real
    one; the format is widened first (:meth:`IdFormat.fitting`) so that free counters abound.
    """
    assert column.id_format is not None
    column_key = _subkey(key, "id", column.name)
    if column.unique:
        slots, slot = total, rows
    else:
        slots = max(1, round(total * column.distinct_ratio))
        slot = _Permutation(_subkey(column_key, "pool"), total)(rows) % slots
    fmt = IdFormat.from_state(column.id_format).fitting(
        slots, column.real_count, column.filter.false_positive_rate
    )
    permutation = _Permutation(column_key, fmt.capacity)
    patches = _Patches(len(rows))
    pending = np.arange(len(rows))
    attempt = 0
    while pending.size:
        counters = slot[pending] + attempt * slots
        if counters.max() >= fmt.capacity:
            raise RuntimeError(
                f"column {column.name!r}: no fresh id left for some rows; refit with fewer real ids"
            )
        values = fmt.render(permutation(counters))
        hit = column.filter.contains(values)
        patches.put(pending[~hit], values.filter(pa.array(~hit)))
        pending = pending[hit]
        attempt += 1
    return patches.result(pa.int64() if fmt.integer else pa.string())


def _avoiding(column: FreshColumn, rows: np.ndarray, draw: Callable[[int, np.ndarray], pa.Array]) -> pa.Array:
    """Values for ``rows`` from ``draw(attempt, rows still pending)``, drawn again while the column's
    filter holds them, at most :data:`PII_ATTEMPTS` times (the last draw is kept: a hit may be a
    false positive, or a value common enough that the filter could not avoid it)."""
    patches = _Patches(len(rows))
    pending = np.arange(len(rows))
    for attempt in range(PII_ATTEMPTS):
        values = draw(attempt, rows[pending])
        hit = column.filter.contains(values) if attempt < PII_ATTEMPTS - 1 else np.zeros(len(pending), bool)
        patches.put(pending[~hit], values.filter(pa.array(~hit)))
        pending = pending[hit]
        if not pending.size:
            break
    return patches.result(pa.string())


def _patterned(column: FreshColumn, key: int, rows: np.ndarray, total: int) -> pa.Array:
    """Phones, IBANs, card numbers, SSNs, IPs: a keyed bijection of the row index into the kind's
    layouts, so values are unique whenever the layouts hold the run; filter hits move on to counter
    ``row + j * total``."""
    renderer = _renderer(column.kind or "", column.locale or DEFAULT_LOCALE, column.separator)
    permutation = _Permutation(_subkey(key, "pii", column.name), renderer.capacity)
    return _avoiding(
        column,
        rows,
        lambda attempt, pending: renderer.render(
            permutation((pending + attempt * total) % renderer.capacity)
        ),
    )


def _streets(column: FreshColumn, key: int, rows: np.ndarray) -> pa.Array:
    """Street addresses: a street from a seeded pool and a house number, both drawn per row."""
    locale = column.locale or DEFAULT_LOCALE
    before, after, numbered = _street_pool(locale, _subkey(key, "streets", locale) % (1 << 32))

    def draw(attempt: int, pending: np.ndarray) -> pa.Array:
        draw_key = _subkey(key, "street", column.name, attempt)
        entry = _below(draw_key, pending, len(before))
        house = np.exp(_uniform(draw_key + 1, pending) * np.log(400)).astype(np.int64)
        number = pc.if_else(pa.array(numbered[entry]), pc.cast(pa.array(house), pa.string()), "")
        return pc.binary_join_element_wise(before.take(entry), number, after.take(entry), "")

    return _avoiding(column, rows, draw)


def _person_values(
    column: FreshColumn, names: _Names, person: np.ndarray, rows: np.ndarray, key: int
) -> pa.Array:
    """One column's values for person numbers: the number picks a first name, a last name and a
    sequence number (``person = first + F * (last + L * number)``), so distinct people have distinct
    e-mail addresses (``anna.schmidt``, ``anna_schmidt3``: names are a-z only, the separator and
    the trailing number make the split unambiguous)."""
    first_count, last_count = len(names.first), len(names.last)
    first = pa.array(person % first_count)
    last = pa.array((person // first_count) % last_count)
    if column.kind == "first_name":
        return names.first.take(first)
    if column.kind == "last_name":
        return names.last.take(last)
    if column.kind == "name":
        parts = [names.first.take(first), names.last.take(last)]
        return pc.binary_join_element_wise(*(parts[::-1] if names.last_first else parts), " ")
    column_key = _subkey(key, "person", column.name)
    number = person // (first_count * last_count)
    suffix = pc.if_else(pa.array(number == 0), "", pc.cast(pa.array(number), pa.string()))
    separator = pa.array([".", "_"]).take(pa.array(_below(column_key, rows, 2)))
    local = pc.binary_join_element_wise(
        names.first_ascii.take(first), separator, names.last_ascii.take(last), suffix, ""
    )
    if column.kind == "username":
        return local
    domain = pa.array(EMAIL_DOMAINS).take(pa.array(_below(column_key + 1, rows, len(EMAIL_DOMAINS))))
    return pc.binary_join_element_wise(local, domain, "@")


def _persons(columns: list[FreshColumn], key: int, rows: np.ndarray, total: int) -> dict[str, pa.Array]:
    """Names, e-mails and usernames of one person per row, consistent across the columns.

    Person numbers come from a keyed bijection of ``row + attempt * total``, so people (and so
    e-mail addresses) are distinct across the run; an attempt whose values a column's filter holds
    moves on to the next (see :data:`_PERSON_ATTEMPTS`). The locale is the names' (first name,
    last name, full name), else the e-mail's or username's.
    """
    locale = next(column.locale for kind in _PERSON_KINDS for column in columns if column.kind == kind)
    names = _names(locale or DEFAULT_LOCALE)
    first_count, last_count = len(names.first), len(names.last)
    # at least every (first, last) pair, or a short run would only ever use the first last names
    domain = max(_PERSON_ATTEMPTS * total, first_count * last_count)
    permutation = _Permutation(_subkey(key, "persons"), domain)
    held_first, held_last = np.zeros(first_count, bool), np.zeros(last_count, bool)
    for column in columns:
        if column.kind == "first_name":
            held_first |= column.filter.contains(names.first)
        elif column.kind == "last_name":
            held_last |= column.filter.contains(names.last)
    checked = [column for column in columns if column.filter.count and column.kind in _IDENTIFYING]
    person = np.zeros(len(rows), dtype=np.int64)
    pending = np.arange(len(rows))
    for attempt in range(_PERSON_ATTEMPTS):
        candidates = permutation(rows[pending] + attempt * total)
        hit = np.zeros(len(pending), dtype=bool)
        if attempt < _PERSON_ATTEMPTS - 1:
            if attempt < _PERSON_ATTEMPTS // 2:
                hit |= (
                    held_first[candidates % first_count] | held_last[(candidates // first_count) % last_count]
                )
            for column in checked:
                hit |= column.filter.contains(_person_values(column, names, candidates, rows[pending], key))
        person[pending[~hit]] = candidates[~hit]
        pending = pending[hit]
        if not pending.size:
            break
    return {column.name: _person_values(column, names, person, rows, key) for column in columns}


def generate_fresh(
    columns: Sequence[FreshColumn], *, key: int, first: int, count: int, total: int
) -> dict[str, pa.Array]:
    """The values of rows ``first … first + count - 1`` of a run of ``total`` rows, by column name.

    A pure function of ``(key, row index)``: any split of a run into batches or shards gives the same
    rows, and ids (and e-mails, usernames, patterned values) are unique across the whole run. Give
    every fresh column of a table in one call, so that names and e-mails describe one person.
    """
    if first < 0 or count < 0 or first + count > total:
        raise ValueError(f"rows {first}..{first + count - 1} are not inside a run of {total} rows")
    rows = np.arange(first, first + count, dtype=np.int64)
    values: dict[str, pa.Array] = {}
    persons = [column for column in columns if column.role == "pii" and column.kind in _PERSON_KINDS]
    if persons and count:
        values.update(_persons(persons, key, rows, total))
    for column in columns:
        if column.name in values:
            continue
        if not count or (column.role == "id" and column.id_format is None):
            values[column.name] = pa.nulls(count, column.arrow_type)
        elif column.role == "id":
            values[column.name] = _ids(column, key, rows, total)
        elif column.kind == "street_address":
            values[column.name] = _streets(column, key, rows)
        else:
            values[column.name] = _patterned(column, key, rows, total)
    out = {}
    for column in columns:
        array = values[column.name].cast(column.arrow_type)
        if column.null_share > 0 and count:
            null = _uniform(_subkey(key, "null", column.name), rows) < column.null_share
            array = pc.if_else(pa.array(null), pa.scalar(None, column.arrow_type), array)
        out[column.name] = array
    return out
