"""Fresh ids and personal data: detection, formats, uniqueness across shards, exclusion of real values."""

from __future__ import annotations

import json
import re
import time
import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from faker import Faker
from faker.providers.person.de_DE import Provider as GermanNames
from faker.providers.person.en_US import Provider as AmericanNames

from genai_pipeline.privacy.fresh import (
    PII_KINDS,
    FreshColumn,
    IdFormat,
    ValueFilter,
    detect_pii,
    generate_fresh,
    infer_locale,
)

EMAIL = re.compile(r"[a-z0-9._%+-]+@[a-z0-9-]+(\.[a-z0-9-]+)*\.[a-z]{2,}")
CANARY = "canary-7f3a9@leak.example"


def _fake(locale: str, seed: int = 0) -> Faker:
    fake = Faker(locale)
    fake.seed_instance(seed)
    return fake


def _plain(name: str) -> str:
    """A name as the a-z letters an e-mail address can hold."""
    folded = unicodedata.normalize("NFKD", name.lower().replace("ß", "ss"))
    return "".join(ch for ch in folded if "a" <= ch <= "z")


def _fit(name: str, values: pa.Array, role: str = "pii", **options: object) -> FreshColumn:
    settings: dict[str, object] = {"kind": None, "locale": None, "min_rows": 5, "key": 1234, **options}
    return FreshColumn.fit(name, values, role=role, **settings)  # type: ignore[arg-type]


def _generate(columns: list[FreshColumn], total: int, key: int = 7, cuts: tuple[int, ...] = ()) -> pa.Table:
    """A run of ``total`` rows made as separate ranges (shards) split at ``cuts``, concatenated."""
    bounds = [0, *cuts, total]
    parts = [
        pa.table(generate_fresh(columns, key=key, first=low, count=high - low, total=total))
        for low, high in zip(bounds[:-1], bounds[1:])
    ]
    return pa.concat_tables(parts)


@pytest.fixture(scope="module")
def german() -> dict[str, pa.Array]:
    """Real-looking German personal data, 3,000 rows."""
    fake = _fake("de_DE")
    rows = [fake.simple_profile() for _ in range(3000)]
    return {
        "first_name": pa.array([fake.first_name() for _ in rows]),
        "last_name": pa.array([fake.last_name() for _ in rows]),
        "name": pa.array([row["name"] for row in rows]),
        "phone": pa.array([f"+49 {fake.msisdn()[2:5]} {fake.msisdn()[5:]}" for _ in rows]),
        "iban": pa.array([fake.iban() for _ in rows]),
        "street_address": pa.array([fake.street_address() for _ in rows]),
    }


# -- detection --------------------------------------------------------------------------------------

VALUES = {
    "email": ["anna@example.org", "bob.smith@mail.example.com"],
    "phone": ["+49 30 1234567", "(030) 123-4567"],
    "first_name": ["Anna", "Bob"],
    "last_name": ["Schmidt", "Smith"],
    "name": ["Anna Schmidt", "Bob Smith"],
    "username": ["anna_s", "bob42"],
    "street_address": ["Hauptstraße 5", "12 Main Street"],
    "iban": ["DE89370400440532013000", "GB82WEST12345698765432"],
    "credit_card": ["4111111111111111", "5500 0000 0000 0004"],
    "ssn": ["123-45-6789", "234-56-7890"],
    "ipv4": ["192.168.0.1", "8.8.8.8"],
}
NAMED = {
    "email": ["email", "e_mail", "EmailAddress", "contact-email", "customer email"],
    "phone": ["phone", "tel", "mobile", "phone_number", "PhoneNumber"],
    "first_name": ["first_name", "firstname", "given_name", "forename", "FirstName"],
    "last_name": ["last_name", "surname", "family_name", "lastName"],
    "name": ["full_name", "customer_name", "name", "FullName"],
    "username": ["username", "user_name", "login", "UserName"],
    "street_address": ["address", "street", "street_address", "home-address"],
    "iban": ["iban", "IBAN"],
    "credit_card": ["credit_card", "card_number", "CreditCardNumber"],
    "ssn": ["ssn", "social_security_number"],
    "ipv4": ["ip", "ip_address", "client_ip", "IPAddress"],
}


@pytest.mark.parametrize("name,kind", [(name, kind) for kind, names in NAMED.items() for name in names])
def test_detects_pii_by_name(name: str, kind: str) -> None:
    assert detect_pii(name, pa.array(VALUES[kind])) == kind
    assert detect_pii(name, pa.array([None, None], pa.string())) == kind  # no values to contradict


@pytest.mark.parametrize(
    "name", ["product_name", "company_name", "file_name", "hostname", "city", "country", "zip"]
)
def test_ordinary_columns_are_not_pii(name: str) -> None:
    assert detect_pii(name, pa.array(["Widget Pro", "Acme GmbH", "Berlin", "report.pdf"])) is None


@pytest.mark.parametrize("kind", ["email", "phone", "iban", "credit_card", "ssn", "ipv4"])
def test_detects_pii_by_values(kind: str) -> None:
    assert detect_pii("value", pa.array(VALUES[kind] * 10)) == kind
    assert detect_pii("value", pa.array(VALUES[kind] * 10, pa.large_string()).dictionary_encode()) == kind


def test_values_need_a_clear_majority_and_valid_checksums() -> None:
    mixed = VALUES["email"] * 8 + ["n/a"] * 2  # 80% e-mails: not enough without the name
    assert detect_pii("value", pa.array(mixed)) is None
    assert detect_pii("email", pa.array(mixed)) == "email"
    assert detect_pii("value", pa.array(["DE89370400440532013001"] * 10)) is None  # bad IBAN checksum
    assert detect_pii("value", pa.array(["4111111111111112"] * 10)) is None  # fails Luhn
    assert detect_pii("value", pa.array(["2024-01-31", "1999-12-01"] * 10)) is None  # dates, not phones
    assert detect_pii("value", pa.array([str(n) for n in range(10_000_000, 10_000_100)])) is None


def test_names_contradicted_by_values_are_not_pii() -> None:
    small = pa.array([str(n) for n in range(100)])
    assert detect_pii("email", small) is None
    assert detect_pii("name", small) is None
    assert detect_pii("phone", pa.array(["yes", "no"] * 10)) is None
    assert detect_pii("email", pa.array(range(100))) is None  # only text can be PII
    assert detect_pii("phone", pa.array(list(range(1_000_000, 1_000_100)))) is None
    assert detect_pii("username", pa.array(VALUES["email"] * 5)) == "email"  # values tell better


def test_infers_german_locale(german: dict[str, pa.Array]) -> None:
    for kind in ("first_name", "last_name", "name", "phone", "iban", "street_address"):
        assert infer_locale(kind, german[kind]) == "de_DE", kind
    assert infer_locale("email", pa.array(["a.b@gmx.de", "c@web.de", "x@gmail.com"] * 10)) == "de_DE"
    assert infer_locale("email", pa.array(["a.b@gmail.com", "c@yahoo.com"] * 10)) == "en_US"
    american = _fake("en_US")
    assert infer_locale("first_name", pa.array([american.first_name() for _ in range(200)])) == "en_US"
    assert infer_locale("phone", pa.array(["555-1234567"] * 10)) == "en_US"  # no calling code: default
    french = _fake("fr_FR")
    assert infer_locale("last_name", pa.array([french.last_name() for _ in range(200)])) == "fr_FR"
    assert infer_locale("phone", pa.array(["+33 1 23 45 67 89"] * 10)) == "fr_FR"


# -- identifier formats -----------------------------------------------------------------------------


def test_id_format_learns_literals_classes_and_lengths() -> None:
    fmt = IdFormat.fit(pa.array([f"C{n:06d}" for n in range(0, 900_000, 7)]))
    assert fmt.groups == [{"share": 1.0, "positions": ["=C"] + ["digit"] * 6}]
    assert fmt.capacity == 1_000_000
    ids = fmt.render(np.arange(0, 1_000_000, 9973)).to_pylist()
    assert all(re.fullmatch(r"C\d{6}", value) for value in ids) and len(set(ids)) == len(ids)

    mixed = IdFormat.fit(pa.array(["AB-1234-x", "AB-9876-y", "AB-5555-z", "AB-0001-q"]))
    assert mixed.groups[0]["positions"] == ["=A", "=B", "=-", *["digit"] * 4, "=-", "lower"]

    rng = np.random.default_rng(0)
    tokens = [f"{value:x}" for value in rng.integers(16**5, 16**7, 20_000)]
    varying = IdFormat.fit(pa.array(tokens))
    shares = {len(group["positions"]): group["share"] for group in varying.groups}
    fresh = varying.render(_sample_counters(varying.capacity, 20_000)).to_pylist()
    for length, share in shares.items():
        assert abs(sum(len(value) == length for value in fresh) / len(fresh) - share) < 0.02
    assert all(re.fullmatch(r"[0-9a-f]{6,7}", value) for value in fresh)


def _sample_counters(capacity: int, count: int) -> np.ndarray:
    return np.random.default_rng(1).choice(capacity, count, replace=False)


def test_id_format_keeps_integer_digits_and_sign() -> None:
    fmt = IdFormat.fit(pa.array([100_000 + 37 * n for n in range(20_000)], pa.int32()))
    fresh = fmt.render(_sample_counters(fmt.capacity, 5000)).to_numpy()
    assert ((fresh >= 100_000) & (fresh <= 999_999)).all() and len(np.unique(fresh)) == 5000
    negative = IdFormat.fit(pa.array([-n for n in range(100, 1000)]))
    values = negative.render(np.arange(negative.capacity)).to_numpy()
    assert ((values <= -100) & (values >= -999)).all()


def test_id_format_never_stores_a_lone_id() -> None:
    """A length held by one id only must not become a literal copy of it."""
    fmt = IdFormat.fit(pa.array([f"C{n:06d}" for n in range(100)] + ["SECRET-LONG-TOKEN-42"]))
    assert "SECRET" not in json.dumps(fmt.to_state())


def test_render_million_ids_is_fast() -> None:
    fmt = IdFormat.fit(pa.array([f"AB-{n:04d}-{chr(97 + n % 26)}" for n in range(10_000)])).widened()
    counters = np.arange(1_000_000, dtype=np.int64) * (fmt.capacity // 1_000_000)
    start = time.perf_counter()
    ids = fmt.render(counters)
    assert time.perf_counter() - start < 3.0
    assert len(pc.unique(ids)) == 1_000_000


# -- fresh ids --------------------------------------------------------------------------------------


def test_fresh_ids_unique_across_shards_and_never_real() -> None:
    rng = np.random.default_rng(3)
    real = [f"C{n:06d}" for n in rng.choice(1_000_000, 5000, replace=False)]
    column = _fit("customer_id", pa.array(real), role="id")
    ids = _generate([column], 50_000, cuts=(7000, 31_000, 31_001)).column("customer_id").to_pylist()
    assert len(set(ids)) == 50_000
    assert all(re.fullmatch(r"C\d{6}", value) for value in ids)
    assert not set(ids) & set(real)


def test_fresh_ids_avoid_a_dense_real_space() -> None:
    """300,000 of the 1,000,000 possible ids are real: the filter and the walk avoid every one."""
    real = pa.array([f"C{n:06d}" for n in np.random.default_rng(4).choice(1_000_000, 300_000, replace=False)])
    column = _fit("id", real, role="id")
    ids = _generate([column], 20_000, cuts=(5000,)).column("id").to_pylist()
    assert len(set(ids)) == 20_000
    assert all(re.fullmatch(r"C\d{6}", value) for value in ids)
    assert not set(ids) & set(real.to_pylist())


def test_fresh_integer_ids() -> None:
    real = np.random.default_rng(5).choice(np.arange(100_000, 1_000_000), 50_000, replace=False)
    column = _fit("order_id", pa.array(real, pa.int32()), role="id")
    ids = _generate([column], 30_000, cuts=(10_000,)).column("order_id")
    assert ids.type == pa.int32()
    values = ids.to_numpy()
    assert len(np.unique(values)) == 30_000 and ((values >= 100_000) & (values <= 999_999)).all()
    assert not np.isin(values, real).any()


def test_a_format_too_small_widens() -> None:
    real = [f"A{n:02d}" for n in range(100)]  # A + 2 digits: full
    column = _fit("code", pa.array(real), role="id")
    ids = _generate([column], 1000, cuts=(300,)).column("code").to_pylist()
    assert len(set(ids)) == 1000 and not set(ids) & set(real)
    assert all(re.fullmatch(r"A\d{3,}", value) for value in ids)
    padded_real = [f"A00{n:02d}" for n in range(100)]
    padded = _fit("code", pa.array(padded_real), role="id")
    wider = _generate([padded], 100).column("code").to_pylist()
    assert all(re.fullmatch(r"A0\d{3}", value) for value in wider)  # the padding zero turned variable
    assert len(set(wider)) == 100 and not set(wider) & set(padded_real)


def test_repeated_ids_repeat_at_the_real_rate() -> None:
    customers = [f"K-{n:05d}" for n in range(3000)]
    orders = np.random.default_rng(6).choice(customers, 8100).tolist()
    column = _fit("customer_id", pa.array(orders), role="id")
    assert not column.unique and column.distinct_ratio < 0.4
    ids = _generate([column], 8100, cuts=(4000,)).column("customer_id").to_pylist()
    real_distinct = len(set(orders))
    assert abs(len(set(ids)) - real_distinct) <= 0.05 * real_distinct
    assert not set(ids) & set(orders)


# -- determinism --------------------------------------------------------------------------------------


def _all_kinds(german: dict[str, pa.Array]) -> list[FreshColumn]:
    fake = _fake("en_US", 1)
    columns = [
        _fit("id", pa.array([f"U{n:05d}" for n in range(3000)]), role="id"),
        _fit("email", pa.array([f"user{n}@example.de" for n in range(3000)])),
        _fit("username", pa.array([f"user_{n}" for n in range(3000)])),
        _fit("credit_card", pa.array([fake.credit_card_number("visa16") for _ in range(300)])),
        _fit("ssn", pa.array([fake.ssn() for _ in range(300)])),
        _fit("ip", pa.array([fake.ipv4_public() for _ in range(300)])),
    ]
    return columns + [_fit(kind, values) for kind, values in german.items()]


def test_same_rows_whatever_the_batching(german: dict[str, pa.Array]) -> None:
    columns = _all_kinds(german)
    assert {column.kind for column in columns if column.role == "pii"} == set(PII_KINDS)
    whole = _generate(columns, 100)
    assert _generate(columns, 100, cuts=(50,)).equals(whole)
    assert _generate(columns, 100, cuts=(1, 2, 33, 99)).equals(whole)
    restored = [FreshColumn.from_state(json.loads(json.dumps(column.to_state()))) for column in columns]
    assert _generate(restored, 100, cuts=(10,)).equals(whole)
    other = _generate(columns, 100, key=8)
    for name in whole.column_names:
        same = pc.sum(pc.equal(whole.column(name), other.column(name))).as_py() or 0
        assert same < 50, name


def test_fresh_values_are_detected_as_their_kind(german: dict[str, pa.Array]) -> None:
    table = _generate(_all_kinds(german), 2000, cuts=(999,))
    for name, kind in [("email", "email"), ("credit_card", "credit_card"), ("ssn", "ssn"), ("ip", "ipv4")]:
        assert detect_pii("value", table.column(name)) == kind
    for kind in ("phone", "iban"):
        assert detect_pii("value", table.column(kind)) == kind
        assert infer_locale(kind, table.column(kind)) == "de_DE"
    for kind in ("email", "username", "phone", "iban", "credit_card", "ssn", "ip", "id"):
        values = table.column(kind).to_pylist()
        assert len(set(values)) == len(values), kind  # unique, like the real columns
    streets = table.column("street_address").to_pylist()
    assert infer_locale("street_address", table.column("street_address")) == "de_DE"
    assert sum(bool(re.search(r"\d", text)) for text in streets) > 0.9 * len(streets)


def test_output_types_follow_the_real_column() -> None:
    names = pa.array(["Anna", "Bob", None] * 10, pa.large_string())
    column = _fit("first_name", names)
    ids = _fit("id", pa.array(np.arange(1000, 2000), pa.uint32()), role="id")
    out = generate_fresh([column, ids], key=1, first=0, count=10, total=10)
    assert out["first_name"].type == pa.large_string() and out["id"].type == pa.uint32()
    with pytest.raises(ValueError, match="only text"):
        _fit("email", pa.array([1, 2, 3]))
    with pytest.raises(ValueError, match="not inside"):
        generate_fresh([column], key=1, first=5, count=10, total=10)


# -- personal data -------------------------------------------------------------------------------------


def test_fresh_emails_are_valid_unique_and_never_real() -> None:
    """Real addresses in exactly the shape fresh ones take (first.last@example.*): the filter must
    steer around them, and the canary must never come out."""
    firsts = [_plain(name) for name in list(AmericanNames.first_names)[:60]]
    lasts = [_plain(name) for name in list(AmericanNames.last_names)[:60]]
    real = [
        f"{first}{sep}{last}@{domain}"
        for first in firsts
        for last in lasts
        for sep in "._"
        for domain in ("example.com", "example.net", "example.org")
    ] + [CANARY]
    column = _fit("email", pa.array(real), locale="en_US")
    emails = _generate([column], 30_000, cuts=(12_345,)).column("email").to_pylist()
    assert all(EMAIL.fullmatch(value) for value in emails)
    assert len(set(emails)) == len(emails)
    assert not set(emails) & set(real)


def test_person_columns_describe_one_person(german: dict[str, pa.Array]) -> None:
    columns = [
        _fit("first_name", german["first_name"]),
        _fit("last_name", german["last_name"]),
        _fit("full_name", german["name"]),
        _fit("email", pa.array([f"{n}@example.de" for n in range(3000)])),
        _fit("login", pa.array([f"user{n}" for n in range(3000)])),
    ]
    assert [column.kind for column in columns] == ["first_name", "last_name", "name", "email", "username"]
    table = _generate(columns, 5000, cuts=(2500,)).to_pylist()
    german_firsts, german_lasts = set(GermanNames.first_names), set(GermanNames.last_names)
    for row in table:
        first, last = row["first_name"], row["last_name"]
        assert first in german_firsts and last in german_lasts
        assert row["full_name"] == f"{first} {last}"
        local = re.fullmatch(r"([a-z]+)[._]([a-z]+)(\d*)", row["email"].split("@")[0])
        assert local and (local[1], local[2]) == (_plain(first), _plain(last))
        assert re.fullmatch(rf"{_plain(first)}[._]{_plain(last)}\d*", row["login"])


def test_rare_real_names_are_avoided_common_ones_kept() -> None:
    fake = _fake("en_US", 2)
    common = [fake.first_name() for _ in range(20)]
    rare = [name for name in list(AmericanNames.first_names)[:320] if name not in common]  # one row each
    column = _fit("first_name", pa.array(common * 50 + rare), locale="en_US", min_rows=5)
    assert column.filter.count == len(rare) and column.filter.contains(rare).all()  # only the rare ones
    names = _generate([column], 10_000).column("first_name").to_pylist()
    expected = 10_000 * len(rare) / len(AmericanNames.first_names)  # without the filter
    assert sum(name in set(rare) for name in names) < 0.05 * expected


def test_null_share_is_reproduced() -> None:
    values = [f"person{n}@example.org" if n % 10 >= 3 else None for n in range(10_000)]
    ids = [f"X{n:06d}" if n % 4 else None for n in range(10_000)]
    columns = [_fit("email", pa.array(values)), _fit("id", pa.array(ids), role="id")]
    assert columns[0].null_share == pytest.approx(0.3) and columns[1].null_share == pytest.approx(0.25)
    table = _generate(columns, 20_000, cuts=(7777,))
    assert table.column("email").null_count / 20_000 == pytest.approx(0.3, abs=0.02)
    assert table.column("id").null_count / 20_000 == pytest.approx(0.25, abs=0.02)
    present = table.column("id").drop_null().to_pylist()
    assert len(set(present)) == len(present)


# -- no real value kept -------------------------------------------------------------------------------


def test_state_holds_no_real_value() -> None:
    rng = np.random.default_rng(7)
    ids = [f"C{n:06d}" for n in rng.choice(1_000_000, 5000, replace=False)] + ["canary-7f3a9"]
    fake = _fake("en_US", 3)
    emails = list(dict.fromkeys(fake.unique.email() for _ in range(3000))) + [CANARY]
    states = [
        _fit("id", pa.array(ids), role="id").to_state(),
        _fit("email", pa.array(emails)).to_state(),
        _fit("customer_id", pa.array(emails), role="id").to_state(),
    ]
    text = json.dumps(states)
    leaked = [value for value in ids + emails if value in text]
    assert not leaked
    assert "canary" not in text and "leak.example" not in text


# -- the filter -----------------------------------------------------------------------------------------


def test_value_filter_false_positive_rate() -> None:
    inserted = [f"real-{n}" for n in range(20_000)]
    bloom = ValueFilter.fit(inserted, key=b"0123456789abcdef", false_positive_rate=0.01)
    assert bloom.contains(inserted).all()
    rate = bloom.contains([f"fresh-{n}" for n in range(200_000)]).mean()
    assert 0.006 < rate < 0.015
    restored = ValueFilter.from_state(json.loads(json.dumps(bloom.to_state())))
    assert restored.contains(inserted[:100]).all()
    assert (restored.contains(pa.array(inserted[:1000])) == bloom.contains(inserted[:1000])).all()
    numbers = ValueFilter.fit(np.arange(0, 100_000, 2), key=b"k", false_positive_rate=0.001)
    assert numbers.contains(pa.array(np.arange(0, 1000, 2), pa.int32())).all()
    assert numbers.contains(np.arange(1, 100_000, 2)).mean() < 0.003


def test_value_filter_is_keyed() -> None:
    values = [f"v{n}" for n in range(5000)]
    one = ValueFilter.fit(values, key=b"one")
    two = ValueFilter.fit(values, key=b"two")
    assert one.to_state()["bits"] != two.to_state()["bits"]
    assert ValueFilter.fit([], key=b"x").contains(["anything"]).tolist() == [False]
