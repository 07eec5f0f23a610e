"""Field transforms: behaviour, NIST FF1 vectors, fail-closed errors, and hypothesis tests
that no transform leaks its input or crashes with anything but TransformError."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from trustzones.dlp import (
    SUPPRESSED,
    EncryptFpeSpec,
    InMemoryKeys,
    MaskSpec,
    TokenVault,
    Transformer,
    TransformPlan,
    TransformSpec,
    aesgcm_cipher,
    apply_transform,
    parse_transform,
    scan_text,
)
from trustzones.dlp._ff1 import FF1
from trustzones.dlp._validators import luhn_valid
from trustzones.errors import TransformError

KEYS = InMemoryKeys(b"unit-test master key 0123456789")


@pytest.fixture
def vault(tmp_path: Path) -> TokenVault:
    with TokenVault(tmp_path / "tokens.sqlite3", cipher=aesgcm_cipher(bytes(range(32)))) as v:
        yield v  # type: ignore[misc]


@pytest.fixture
def t(vault: TokenVault) -> Transformer:
    return Transformer(keys=KEYS, vault=vault)


def apply(t: Transformer, spec: dict[str, Any], value: object, **kw: Any) -> object:
    return t.apply(parse_transform(spec), value, **kw)


# -- NIST SP 800-38G FF1 samples (AES-128, -192, -256; radix 10 and 36) -----------------

K128 = "2B7E151628AED2A6ABF7158809CF4F3C"
K192 = K128 + "EF4359D8D580AA4F"
K256 = K192 + "7F036D6F04FC6A94"
T10 = "39383736353433323130"
T36 = "3737373770717273373737"
A36 = "0123456789abcdefghijklmnopqrstuvwxyz"
FF1_SAMPLES = [
    (1, K128, "0123456789", "", "0123456789", "2433477484"),
    (2, K128, "0123456789", T10, "0123456789", "6124200773"),
    (3, K128, A36, T36, "0123456789abcdefghi", "a9tv40mll9kdu509eum"),
    (4, K192, "0123456789", "", "0123456789", "2830668132"),
    (5, K192, "0123456789", T10, "0123456789", "2496655549"),
    (6, K192, A36, T36, "0123456789abcdefghi", "xbj3kv35jrawxv32ysr"),
    (7, K256, "0123456789", "", "0123456789", "6657667009"),
    (8, K256, "0123456789", T10, "0123456789", "1001623463"),
    (9, K256, A36, T36, "0123456789abcdefghi", "xs8a0azh2avyalyzuwd"),
]


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
@pytest.mark.parametrize(("sample", "key", "alphabet", "tweak", "pt", "ct"), FF1_SAMPLES)
def test_ff1_nist_samples(
    sample: int, key: str, alphabet: str, tweak: str, pt: str, ct: str, native: bool
) -> None:
    ff1 = FF1(bytes.fromhex(key), alphabet, native=native)
    assert ff1.native == native
    assert ff1.encrypt(pt, bytes.fromhex(tweak)) == ct
    assert ff1.decrypt(ct, bytes.fromhex(tweak)) == pt


def test_ff1_wrong_tweak_or_key_does_not_decrypt() -> None:
    ff1 = FF1(bytes.fromhex(K128))
    ct = ff1.encrypt("0123456789", bytes.fromhex(T10))
    assert ff1.decrypt(ct, b"") != "0123456789"
    assert FF1(bytes.fromhex(K256)).decrypt(ct, bytes.fromhex(T10)) != "0123456789"


@pytest.mark.parametrize("native", [True, False], ids=["native", "python"])
def test_ff1_enforces_the_minimum_domain(native: bool) -> None:
    ff1 = FF1(bytes(16), native=native)
    assert ff1.minlen == 6
    with pytest.raises(ValueError, match="6 or more numerals"):
        ff1.encrypt("12345")
    with pytest.raises(ValueError, match="16, 24 or 32"):
        FF1(bytes(10))


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="0123456789", min_size=6, max_size=60), st.binary(max_size=40))
def test_ff1_round_trips(pt: str, tweak: bytes) -> None:
    ff1 = FF1(bytes.fromhex(K192))
    ct = ff1.encrypt(pt, tweak)
    assert len(ct) == len(pt) and ct.isdigit()
    assert ff1.decrypt(ct, tweak) == pt


# -- mask ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "out"),
    [
        ({"type": "mask", "keep_last": 4}, "123-45-6789", "***-**-6789"),
        ({"type": "mask"}, "4111 1111 1111 1111", "**** **** **** 1111"),
        ({"type": "mask", "keep_first": 6, "keep_last": 4}, "4111111111111111", "411111******1111"),
        ({"type": "mask", "keep_last": 0, "char": "#"}, "ab-cd", "##-##"),
        ({"type": "mask", "keep_last": 2, "keep_separators": False}, "12-34", "***34"),
        ({"type": "mask", "keep_last": 4}, "123", "***"),  # nothing is revealed in full
        ({"type": "mask", "keep_last": 4}, 4111111111111111, "************1111"),
    ],
)
def test_mask(t: Transformer, spec: dict[str, Any], value: object, out: str) -> None:
    assert apply(t, spec, value) == out


# -- hash ---------------------------------------------------------------------------------


def test_hash_is_keyed_stable_and_configurable(t: Transformer) -> None:
    h1 = apply(t, {"type": "hash"}, "ann@example.com")
    assert isinstance(h1, str) and len(h1) == 64
    assert apply(t, {"type": "hash"}, "ann@example.com") == h1
    other = Transformer(keys=InMemoryKeys(b"another master key entirely!!"))
    assert other.apply(parse_transform({"type": "hash"}), "ann@example.com") != h1
    assert apply(t, {"type": "hash", "key": "other"}, "ann@example.com") != h1
    assert apply(t, {"type": "hash", "normalize": "casefold"}, " ANN@example.com") == apply(
        t, {"type": "hash", "normalize": "casefold"}, "ann@example.com"
    )
    digits = {"type": "hash", "normalize": "digits", "length": 16, "prefix": "h:"}
    assert apply(t, digits, "4111-1111-1111-1111") == apply(t, digits, 4111111111111111)
    assert len(str(apply(t, digits, "1"))) == 18
    b64 = apply(t, {"type": "hash", "encoding": "base64url"}, "x")
    assert isinstance(b64, str) and len(b64) == 43


def test_hash_is_hmac_sha256_of_the_keys_secret() -> None:
    import hashlib
    import hmac

    secret = KEYS.secret("hash:default")
    expected = hmac.new(secret, b"ann@example.com", hashlib.sha256).hexdigest()
    assert apply_transform({"type": "hash"}, "ann@example.com", keys=KEYS) == expected


# -- tokenize -----------------------------------------------------------------------------


def test_tokenize_random_and_detokenize(t: Transformer, vault: TokenVault) -> None:
    token = apply(t, {"type": "tokenize", "domain": "email"}, "ann@example.com")
    assert isinstance(token, str) and token.startswith("tok_")
    assert apply(t, {"type": "tokenize", "domain": "email"}, "ann@example.com") == token
    assert apply(t, {"type": "tokenize", "domain": "other"}, "ann@example.com") != token
    assert vault.detokenize(token, domain="email") == "ann@example.com"


def test_tokenize_preserving_format_never_looks_like_a_card(t: Transformer) -> None:
    spec = {"type": "tokenize", "domain": "pan", "format": "preserve", "keep_last": 4}
    for i in range(40):
        value = f"4111 1111 1111 {1000 + i:04d}"
        if not luhn_valid(value.replace(" ", "")):
            continue
        token = apply(t, spec, value)
        assert isinstance(token, str)
        assert len(token) == len(value) and token[4] == " " and token.endswith(value[-4:])
        assert not luhn_valid(token.replace(" ", ""))
        assert scan_text(token) == []


def test_tokenize_fails_closed(tmp_path: Path) -> None:
    spec = parse_transform({"type": "tokenize"})
    with pytest.raises(TransformError, match=r"tokenize at customer\.ssn: no token vault"):
        Transformer(keys=KEYS).apply(spec, "123-45-6789", path="customer.ssn")
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(bytes(32))) as v:
        with pytest.raises(TransformError, match="at least 6 random"):
            Transformer(keys=KEYS, vault=v).apply(
                parse_transform({"type": "tokenize", "format": "preserve"}), "12-34"
            )


# -- encrypt_fpe --------------------------------------------------------------------------


def test_encrypt_fpe_keeps_format_and_decrypts(t: Transformer) -> None:
    spec = parse_transform({"type": "encrypt_fpe", "keep_first": 6, "keep_last": 4, "key": "cards"})
    assert isinstance(spec, EncryptFpeSpec)
    value = "4111-1111-1111-1111"
    out = t.apply(spec, value)
    assert isinstance(out, str) and len(out) == len(value)
    assert out[:7] == "4111-11" and out[-4:] == "1111" and out[4] == "-" and out != value
    assert t.decrypt_fpe(spec, out) == value


def test_encrypt_fpe_luhn_invalid_mode(t: Transformer) -> None:
    spec = parse_transform({"type": "encrypt_fpe", "luhn": "invalid", "keep_first": 6})
    assert isinstance(spec, EncryptFpeSpec)
    for value in ("4111111111111111", "5555555555554444", "378282246310005"):
        out = t.apply(spec, value)
        assert isinstance(out, str) and out.isdigit() and not luhn_valid(out)
        assert out[:6] == value[:6]
        assert scan_text(out) == []
        assert t.decrypt_fpe(spec, out) == value
    with pytest.raises(TransformError, match="Luhn-valid"):
        t.apply(spec, "4111111111111112")
    with pytest.raises(ValidationError, match="keep_last 0"):
        parse_transform({"type": "encrypt_fpe", "luhn": "invalid", "keep_last": 4})


def test_encrypt_fpe_alphanumeric_alphabet(t: Transformer) -> None:
    spec = parse_transform(
        {"type": "encrypt_fpe", "alphabet": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
    )
    out = t.apply(spec, "AB-123456")
    assert isinstance(out, str) and out[2] == "-" and out != "AB-123456"
    assert t.decrypt_fpe(spec, out) == "AB-123456"  # type: ignore[arg-type]


def test_encrypt_fpe_fails_closed(t: Transformer) -> None:
    with pytest.raises(TransformError, match=r"encrypt_fpe at zip: needs at least 6 numerals"):
        apply(t, {"type": "encrypt_fpe"}, "12345", path="zip")
    with pytest.raises(TransformError, match="no keys configured"):
        Transformer().apply(parse_transform({"type": "encrypt_fpe"}), "4111111111111111")

    class NoKeys:
        def secret(self, purpose: str) -> bytes:
            raise KeyError(purpose)

    with pytest.raises(
        TransformError, match=r"key 'encrypt_fpe:default' is not available \(KeyError\)"
    ):
        Transformer(keys=NoKeys()).apply(
            parse_transform({"type": "encrypt_fpe"}), "4111111111111111"
        )


# -- generalize ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "value", "out"),
    [
        ({"method": "bucket", "width": 10}, 34, "30-39"),
        ({"method": "bucket", "width": 10}, "34", "30-39"),
        ({"method": "bucket", "width": 5}, 34.9, "30-34"),
        ({"method": "bucket", "width": 10}, -5, "-10--1"),
        ({"method": "zip"}, "12345", "123**"),
        ({"method": "zip"}, "12345-6789", "123**"),
        ({"method": "zip", "keep": 2}, 2134, "02***"),
        ({"method": "zip", "hipaa_zip": True}, "03601", "000**"),
        ({"method": "date"}, "1987-06-15", "1987-06"),
        ({"method": "date", "granularity": "year"}, "1987-06-15T10:00:00Z", "1987"),
        ({"method": "age"}, 93, "90+"),
        ({"method": "age"}, 89, 89),
        ({"method": "age", "cap": 79}, "85", "80+"),
        ({"method": "age", "width": 10}, 34, "30-39"),
    ],
)
def test_generalize(t: Transformer, spec: dict[str, Any], value: object, out: object) -> None:
    assert apply(t, {"type": "generalize", **spec}, value) == out


@pytest.mark.parametrize(
    ("spec", "value", "match"),
    [
        ({"method": "zip"}, "1234", "5-digit ZIP"),
        ({"method": "zip"}, [1], "expects a ZIP code, got an array"),
        ({"method": "date"}, "15/06/1987", "ISO 8601"),
        ({"method": "date"}, "1987-13-01", "not a valid ISO 8601"),
        ({"method": "age"}, -1, "negative"),
        ({"method": "bucket", "width": 10}, "abc", "non-numeric"),
        ({"method": "bucket", "width": 10}, float("inf"), "finite"),
    ],
)
def test_generalize_fails_closed(
    t: Transformer, spec: dict[str, Any], value: object, match: str
) -> None:
    with pytest.raises(TransformError, match=f"generalize at f: .*{match}"):
        apply(t, {"type": "generalize", **spec}, value, path="f")


def test_generalize_bucket_needs_width() -> None:
    with pytest.raises(ValidationError, match="needs width"):
        parse_transform({"type": "generalize", "method": "bucket"})


# -- date_shift ---------------------------------------------------------------------------


def test_date_shift_is_consistent_per_subject(t: Transformer) -> None:
    spec = {"type": "date_shift", "subject": "patient.id", "max_days": 30}
    a1 = apply(t, spec, "2024-03-15", subject="p-1")
    a2 = apply(t, spec, "2024-04-15T08:30:00+02:00", subject="p-1")
    assert isinstance(a1, str) and isinstance(a2, str)
    d1 = dt.date.fromisoformat(a1) - dt.date(2024, 3, 15)
    d2 = dt.date.fromisoformat(a2[:10]) - dt.date(2024, 4, 15)
    assert d1 == d2 and 1 <= abs(d1.days) <= 30
    assert a2.endswith("T08:30:00+02:00")
    shifts = {
        (
            dt.date.fromisoformat(str(apply(t, spec, "2024-03-15", subject=f"p-{i}")))
            - dt.date(2024, 3, 15)
        ).days
        for i in range(60)
    }
    assert len(shifts) > 10 and 0 not in shifts


def test_date_shift_fails_without_subject(t: Transformer) -> None:
    with pytest.raises(
        TransformError,
        match=r"date_shift at visit: needs the value of the subject field patient\.id",
    ):
        apply(t, {"type": "date_shift", "subject": "patient.id"}, "2024-03-15", path="visit")


# -- suppress, redact_text, records -------------------------------------------------------


def test_suppress_and_null(t: Transformer) -> None:
    assert apply(t, {"type": "suppress"}, "x") is SUPPRESSED
    assert apply(t, {"type": "mask"}, None) is None


def test_redact_text(t: Transformer) -> None:
    text = "Call +1 415 555 0132 or mail ann@example.com about card 4111 1111 1111 1111."
    assert apply(t, {"type": "redact_text"}, text) == (
        "Call [PHONE_NUMBER] or mail [EMAIL_ADDRESS] about card [CREDIT_CARD]."
    )
    assert apply(t, {"type": "redact_text", "types": ["EMAIL_ADDRESS"], "style": "mask"}, text) == (
        "Call +1 415 555 0132 or mail ***@*******.*** about card 4111 1111 1111 1111."
    )
    with pytest.raises(ValidationError, match="unknown entity type"):
        parse_transform({"type": "redact_text", "types": ["NOPE"]})


def test_apply_record(t: Transformer) -> None:
    record = {
        "patient": {"id": "p-9", "name": "Ann", "age": 93, "zip": "12345", "visit": "2024-03-15"},
        "cards": [{"number": "4111 1111 1111 1111"}, {"number": "5555555555554444"}],
        "tags": ["a", "b"],
        "note": "mail ann@example.com",
    }
    plan = {
        "patient.name": {"type": "suppress"},
        "patient.age": {"type": "generalize", "method": "age"},
        "patient.visit": {"type": "date_shift", "subject": "patient.id"},
        "cards[*].number": {"type": "mask"},
        "tags[*]": {"type": "suppress"},
        "note": {"type": "redact_text"},
        "missing.field": {"type": "hash"},
    }
    out = t.apply_record(record, plan)
    assert isinstance(out, dict)
    assert set(out["patient"]) == {"id", "age", "zip", "visit"}
    assert out["patient"]["age"] == "90+"
    assert out["patient"]["visit"] != "2024-03-15"
    assert out["cards"] == [{"number": "**** **** **** 1111"}, {"number": "************4444"}]
    assert out["tags"] == []
    assert out["note"] == "mail [EMAIL_ADDRESS]"
    assert record["patient"]["name"] == "Ann" and record["cards"][0]["number"].startswith("4111")


def test_compiled_plans(t: Transformer) -> None:
    plan = TransformPlan.compile({"a[*].b": {"type": "mask", "keep_last": 1}})
    assert t.apply_record({"a": [{"b": "xyz"}, {"c": 1}]}, plan) == {"a": [{"b": "**z"}, {"c": 1}]}
    with pytest.raises(TransformError, match=r"mask at a\.\.b: malformed field path"):
        TransformPlan.compile({"a..b": {"type": "mask"}})
    with pytest.raises(TransformError, match="must name one field"):
        TransformPlan.compile({"d": {"type": "date_shift", "subject": "ids[*]"}})
    with pytest.raises(ValidationError):
        TransformPlan.compile({"d": {"type": "mask", "keep_last": -1}})


def test_apply_record_fails_closed_on_wrong_shape(t: Transformer) -> None:
    with pytest.raises(TransformError, match=r"expected an object at customer, got a str"):
        t.apply_record({"customer": "ssn 123-45-6789"}, {"customer.ssn": {"type": "mask"}})
    with pytest.raises(
        TransformError, match=r"mask at a\[1\]: expects a string or a number, got an object"
    ):
        t.apply_record({"a": ["x", {"y": 1}]}, {"a[*]": {"type": "mask"}})


def test_apply_record_copies_each_container_once_and_never_the_input(t: Transformer) -> None:
    # Steps whose paths are all keys share one copy-on-write per record: the result is what
    # applying the steps one at a time gives, the input is untouched, and the parts no step
    # touches are shared, not copied.
    untouched = {"deep": ["list"]}
    record = {
        "customer": {"email": "Ann@Example.com", "phone": "+1 415 555 0132", "name": "Ann"},
        "card": {"number": "4111111111111111", "cvv": "123", "meta": untouched},
        "other": untouched,
    }
    plan = {
        "customer.email": {"type": "hash", "length": 16},
        "customer.phone": {"type": "mask", "keep_last": 2},
        "customer.name": {"type": "suppress"},
        "card.cvv": {"type": "suppress"},
        "card.missing.deeper": {"type": "mask"},
    }
    before = repr(record)
    out = t.apply_record(record, plan)
    one_by_one: object = record
    for path, spec in plan.items():
        one_by_one = t.apply_record(one_by_one, {path: spec})
    assert out == one_by_one
    assert repr(record) == before
    assert isinstance(out, dict)
    assert out["customer"] == {"email": out["customer"]["email"], "phone": "+* *** *** **32"}
    assert out["card"] == {"number": "4111111111111111", "meta": untouched}
    assert out["other"] is untouched and out["card"]["meta"] is untouched
    assert out["customer"] is not record["customer"] and out is not record
    # Nothing to do: the record itself comes back.
    assert t.apply_record(record, {"nope.x": {"type": "mask"}}) is record


def _mask_reference(
    text: str, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> str:
    """A second, character-by-character implementation of masking."""
    n = sum(1 for ch in text if ch.isalnum())
    if keep_first + keep_last >= n:
        keep_first = keep_last = 0
    out = []
    seen = 0
    for ch in text:
        if ch.isalnum():
            out.append(ch if seen < keep_first or seen >= n - keep_last else char)
            seen += 1
        else:
            out.append(ch if keep_separators else char)
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.integers(0, 6),
    st.integers(0, 6),
    st.sampled_from("*#x"),
    st.booleans(),
)
def test_mask_matches_a_character_by_character_reference(
    text: str, keep_first: int, keep_last: int, char: str, keep_separators: bool
) -> None:
    spec = MaskSpec(
        keep_first=keep_first, keep_last=keep_last, char=char, keep_separators=keep_separators
    )
    got = Transformer().apply(spec, text)
    assert got == _mask_reference(text, keep_first, keep_last, char, keep_separators)


def test_spec_models_are_frozen_and_strict() -> None:
    spec = parse_transform({"type": "mask", "keep_last": 4})
    assert isinstance(spec, MaskSpec)
    with pytest.raises(ValidationError):
        spec.keep_last = 2  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        parse_transform({"type": "mask", "keep_lats": 4})
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_transform({"type": "rot13"})
    adapter = TypeAdapter(TransformSpec)
    assert adapter.validate_python({"type": "suppress"}).type == "suppress"
    assert parse_transform(spec) == spec


# -- hypothesis: never leak, never crash ----------------------------------------------------

SPECS: list[dict[str, Any]] = [
    {"type": "mask"},
    {"type": "mask", "keep_first": 2, "keep_last": 2},
    {"type": "hash"},
    {"type": "hash", "length": 16, "normalize": "digits"},
    {"type": "tokenize"},
    {"type": "tokenize", "format": "preserve", "domain": "fp"},
    {"type": "encrypt_fpe"},
    {"type": "encrypt_fpe", "luhn": "invalid"},
    {"type": "generalize", "method": "bucket", "width": 10},
    {"type": "generalize", "method": "zip"},
    {"type": "generalize", "method": "date"},
    {"type": "generalize", "method": "age"},
    {"type": "date_shift", "subject": "id"},
    {"type": "suppress"},
    {"type": "redact_text"},
]
PARSED = [parse_transform(s) for s in SPECS]

values = st.one_of(
    st.text(min_size=0, max_size=40),
    st.from_regex(r"\d{3}-\d{2}-\d{4}", fullmatch=True),
    st.from_regex(r"4\d{15}", fullmatch=True),
    st.from_regex(r"[a-z]{3,10}@example\.com", fullmatch=True),
    st.integers(min_value=-(10**19), max_value=10**19),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def shared_transformer(tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    path = tmp_path_factory.mktemp("vault") / "tokens.sqlite3"
    return Transformer(keys=KEYS, vault=TokenVault(path, cipher=aesgcm_cipher(bytes(32))))


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(range(len(PARSED))), values)
def test_transforms_never_crash_and_never_leak(
    shared_transformer: Transformer, i: int, value: object
) -> None:
    spec = PARSED[i]
    text = value if isinstance(value, str) else repr(value)
    try:
        out = shared_transformer.apply(spec, value, path="f", subject="subject-1")
    except TransformError as exc:
        # The error names the transform and the field, never the value.
        message = str(exc)
        assert message.startswith(f"{spec.type} at f: ")
        if len(text) >= 4:
            assert text not in message
        return
    if value is None or spec.type == "suppress":
        return
    out_text = out if isinstance(out, str) else repr(out)
    if spec.type in ("hash", "tokenize", "encrypt_fpe") and isinstance(value, str | int):
        # Nothing of at least 6 characters of the input survives as is, except the
        # separators and the parts a preserving format keeps by design.
        digits = "".join(ch for ch in str(value) if ch.isalnum())
        assume(len(set(digits)) > 2)
        if len(digits) >= 6 and spec.type != "tokenize":
            assert out_text != str(value)
    if spec.type == "mask" and isinstance(value, str):
        alnum = [ch for ch in value if ch.isalnum()]
        kept = spec.keep_first + spec.keep_last  # type: ignore[union-attr]
        if len(alnum) > kept and len(set(alnum)) > 1:
            assert out_text != value


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.from_regex(r"(4\d{3}[ -]?){3}4\d{3}", fullmatch=True))
def test_sanitised_cards_do_not_scan_as_cards(shared_transformer: Transformer, card: str) -> None:
    for spec in (
        parse_transform({"type": "mask"}),
        parse_transform({"type": "hash"}),
        parse_transform({"type": "tokenize", "domain": "pan"}),
        parse_transform({"type": "encrypt_fpe", "luhn": "invalid"}),
    ):
        try:
            out = shared_transformer.apply(spec, card)
        except TransformError:
            assert spec.type == "encrypt_fpe"  # only Luhn-valid numbers are accepted there
            continue
        assert isinstance(out, str)
        assert [f.type for f in scan_text(out)] == [], (spec.type, out)


# Found by the hypothesis test above: FF1 over the alphabet 0-9 left full-width and other
# Unicode digits in place, so they passed through unencrypted (and could still scan as a card).
def test_regression_fpe_full_width_digits_are_not_passed_through(t: Transformer) -> None:
    wide = "４１１１ １１１１ １１１１ １１１１"
    out = apply(t, {"type": "encrypt_fpe", "luhn": "invalid"}, wide)
    assert isinstance(out, str) and out.replace(" ", "").isdigit() and out.isascii()
    assert scan_text(out) == []
    tokenized = apply(t, {"type": "tokenize", "format": "preserve", "domain": "w"}, wide)
    assert isinstance(tokenized, str) and tokenized.isascii()
    digits = {"type": "hash", "normalize": "digits"}
    assert apply(t, digits, wide) == apply(t, digits, "4111111111111111")
