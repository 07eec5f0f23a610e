"""The token vault: stable tokens, sealed values bound to their token, no plaintext on disk."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.dlp import TokenVault, UnknownToken, VaultCipher, aesgcm_cipher
from trustzones.errors import DecryptionFailed, TransformError

KEY = bytes(range(32))
INDEX = b"i" * 32


def test_same_value_same_token_and_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tokens.sqlite3"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        t1 = vault.tokenize("123-45-6789", domain="ssn", index_key=INDEX)
        assert vault.tokenize("123-45-6789", domain="ssn", index_key=INDEX) == t1
        t2 = vault.tokenize("987-65-4321", domain="ssn", index_key=INDEX)
        assert t2 != t1
        assert vault.detokenize(t1, domain="ssn") == "123-45-6789"
        assert len(vault) == 2
    # Reopened by another process later: the same tokens.
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        assert vault.tokenize("123-45-6789", domain="ssn", index_key=INDEX) == t1
        assert vault.detokenize(t2, domain="ssn") == "987-65-4321"


def test_file_holds_no_plaintext(tmp_path: Path) -> None:
    path = tmp_path / "tokens.sqlite3"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        vault.tokenize("4111111111111111", domain="pan", index_key=INDEX)
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert b"4111111111111111" not in raw
    assert b"4111111111111111".hex().encode() not in raw


def test_unknown_token_and_wrong_domain(tmp_path: Path) -> None:
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        token = vault.tokenize("x@example.com", domain="email", index_key=INDEX)
        with pytest.raises(UnknownToken, match="no such token in domain 'phone'"):
            vault.detokenize(token, domain="phone")
        with pytest.raises(UnknownToken):
            vault.detokenize("tok_nope", domain="email")


def test_sealed_value_is_bound_to_its_token(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        a = vault.tokenize("alice", domain="d", index_key=INDEX)
        b = vault.tokenize("bob", domain="d", index_key=INDEX)
    db = sqlite3.connect(path)
    sealed_a = db.execute("SELECT sealed FROM tokens WHERE token=?", (a,)).fetchone()[0]
    db.execute("UPDATE tokens SET sealed=? WHERE token=?", (sealed_a, b))
    db.commit()
    db.close()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with pytest.raises(DecryptionFailed, match="could not be opened"):
            vault.detokenize(b, domain="d")
    with TokenVault(path, cipher=aesgcm_cipher(bytes(32))) as vault:
        with pytest.raises(DecryptionFailed):
            vault.detokenize(a, domain="d")


def test_pluggable_cipher_receives_associated_data(tmp_path: Path) -> None:
    seen: list[bytes] = []

    def seal(pt: bytes, aad: bytes) -> bytes:
        seen.append(aad)
        return pt[::-1]

    def open_(ct: bytes, aad: bytes) -> bytes:
        seen.append(aad)
        return ct[::-1]

    with TokenVault(tmp_path / "v.db", cipher=VaultCipher(seal, open_)) as vault:
        token = vault.tokenize("v", domain="dom", index_key=INDEX)
        assert vault.detokenize(token, domain="dom") == "v"
    assert seen[0] == seen[1] == b"trustzones/vault/v1\x00dom\x00" + token.encode()


def test_preserving_tokens_and_small_domains(tmp_path: Path) -> None:
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        token = vault.tokenize("AB-123456", domain="d", index_key=INDEX, format="preserve")
        assert token[2] == "-" and token[:2].isupper() and token[3:].isdigit()
        with pytest.raises(TransformError, match="at least 6 random"):
            vault.tokenize("12345", domain="d", index_key=INDEX, format="preserve")


def test_concurrent_tokenize_gives_one_token(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    tokens: list[str] = []
    vaults = [TokenVault(path, cipher=aesgcm_cipher(KEY)) for _ in range(4)]

    def work(v: TokenVault) -> None:
        for _ in range(20):
            tokens.append(v.tokenize("same value", domain="d", index_key=INDEX))

    threads = [threading.Thread(target=work, args=(v,)) for v in vaults]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for v in vaults:
        v.close()
    assert len(set(tokens)) == 1 and len(tokens) == 80


def test_unopenable_vault_fails_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TransformError, match="cannot open the token vault"):
        TokenVault(tmp_path / "missing-dir" / "v.db", cipher=aesgcm_cipher(KEY))


def test_preserving_tokens_of_19_digit_cards_hide_no_card_inside() -> None:
    # Regression: a 19-digit token was Luhn-invalid as a whole, but a 16-digit run inside it
    # could be a valid card number, so the flow's output scan quarantined its own tokens.
    from trustzones.dlp.scanner import default_scanner
    from trustzones.dlp.vault import _preserving_token

    scanner = default_scanner()
    for value in ("6287 6987 4266 3083 799", "4284-7077-4881-1695-333", "6243552553470419839"):
        for _ in range(200):
            token = _preserving_token(value, 3)
            assert scanner.scan_text(token) == []
            assert token[-3:] == value[-3:]


# -- batches: one transaction for many new tokens ----------------------------------------


def _stored(path: Path) -> set[str]:
    """Tokens another connection sees committed in the file."""
    db = sqlite3.connect(path)
    try:
        return {row[0] for row in db.execute("SELECT token FROM tokens")}
    finally:
        db.close()


def test_batch_commits_new_tokens_when_the_block_ends(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.batch():
            a = vault.tokenize("alice", domain="d", index_key=INDEX)
            assert vault.tokenize("alice", domain="d", index_key=INDEX) == a
            with vault.batch():  # nested: only the outermost block commits
                b = vault.tokenize("bob-123456", domain="d", index_key=INDEX, format="preserve")
            assert _stored(path) == set()  # nothing durable before the block ends
            assert vault.detokenize(b, domain="d") == "bob-123456"  # this connection sees it
        assert _stored(path) == {a, b}
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        assert vault.tokenize("alice", domain="d", index_key=INDEX) == a
        assert vault.detokenize(b, domain="d") == "bob-123456"


def test_a_committed_token_is_synced_to_disk(tmp_path: Path) -> None:
    """Tokens must survive a power cut once committed: a flow writes records that carry them
    right after, into another file that syncs its own commits. In WAL mode only
    ``synchronous=FULL`` (2) syncs the log at each commit."""
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        assert vault._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert vault._db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_batch_that_raises_keeps_none_of_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        kept = vault.tokenize("kept", domain="d", index_key=INDEX)
        with pytest.raises(RuntimeError, match="downstream failed"), vault.batch():
            lost = vault.tokenize("lost", domain="d", index_key=INDEX)
            raise RuntimeError("downstream failed")
        assert _stored(path) == {kept}
        with pytest.raises(UnknownToken):
            vault.detokenize(lost, domain="d")
        # The rolled-back token is not served from memory either.
        again = vault.tokenize("lost", domain="d", index_key=INDEX)
        assert again != lost
        assert vault.detokenize(again, domain="d") == "lost"


def test_batch_that_cannot_store_a_token_fails_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        vault._db.execute("PRAGMA busy_timeout=0")  # fail at once instead of waiting 30 s
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        try:
            with pytest.raises(TransformError, match="could not be stored"), vault.batch():
                with pytest.raises(TransformError, match="could not store a new token"):
                    vault.tokenize("v1", domain="d", index_key=INDEX)
                # The caller carried on (a flow quarantines that one record): the batch
                # must still refuse to end as if its tokens were stored.
                with pytest.raises(TransformError, match="batch has failed"):
                    vault.tokenize("v2", domain="d", index_key=INDEX)
        finally:
            other.execute("ROLLBACK")
            other.close()
        vault._db.execute("PRAGMA busy_timeout=30000")
        token = vault.tokenize("v1", domain="d", index_key=INDEX)
        assert _stored(path) == {token}


def test_batch_holds_other_threads_until_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    seen: list[str] = []
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.batch():
            token = vault.tokenize("shared", domain="d", index_key=INDEX)
            th = threading.Thread(
                target=lambda: seen.append(vault.tokenize("shared", domain="d", index_key=INDEX))
            )
            th.start()
            th.join(0.2)
            assert th.is_alive() and seen == []  # waits: the token is not durable yet
        th.join()
    assert seen == [token]


def test_token_cache_is_bounded_and_holds_no_clear_value(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    values = [f"secret-value-{i}" for i in range(5)]
    with TokenVault(path, cipher=aesgcm_cipher(KEY), cache_size=3) as vault:
        tokens = [vault.tokenize(v, domain="d", index_key=INDEX) for v in values]
        assert len(vault._cache) == 3
        dump = repr(dict(vault._cache))
        assert not any(v in dump or v.encode().hex() in dump for v in values)
        # Evicted or cached, the same value keeps its token.
        assert [vault.tokenize(v, domain="d", index_key=INDEX) for v in values] == tokens
    # Another process adding tokens never changes the ones already cached.
    with (
        TokenVault(path, cipher=aesgcm_cipher(KEY)) as a,
        TokenVault(path, cipher=aesgcm_cipher(KEY)) as b,
    ):
        t1 = a.tokenize("x", domain="d", index_key=INDEX)
        assert b.tokenize("x", domain="d", index_key=INDEX) == t1
        assert a.tokenize("x", domain="d", index_key=INDEX) == t1


# -- format-preserving tokens ------------------------------------------------------------


@pytest.fixture(params=["native", "python"])
def token_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a token test on the native core's ASCII tokens, then on the Python ones."""
    from trustzones.dlp import vault as vault_module

    if request.param == "python":
        monkeypatch.setattr(vault_module, "_native_token", None)
    else:
        assert vault_module._native_token is not None, (
            "build the native core: python -m pip install ./native"
        )
    return str(request.param)


def _both_paths() -> list[Any]:
    """The native ASCII token maker and None (the Python one), for hypothesis tests."""
    from trustzones.dlp import vault as vault_module

    assert vault_module._native_token is not None, "python -m pip install ./native"
    return [vault_module._native_token, None]


@contextmanager
def _making_tokens_with(maker: Any) -> Iterator[None]:
    """Make ASCII tokens with ``maker`` (None: the Python path) inside the block."""
    from trustzones.dlp import vault as vault_module

    saved, vault_module._native_token = vault_module._native_token, maker
    try:
        yield
    finally:
        vault_module._native_token = saved


def test_preserving_token_shapes(token_path: str) -> None:
    from trustzones.dlp.vault import _one_preserving_token

    for value, keep in (
        ("4111 1111 1111 1111", 4),
        ("Ab9-x_yZ 12", 2),
        ("abc１２３def", 0),
        ("ÉTÉ-2024-xyz", 3),
    ):
        for _ in range(50):
            token = _one_preserving_token(value, keep)
            assert len(token) == len(value)
            alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
            for i, (a, b) in enumerate(zip(value, token, strict=True)):
                if i not in alnum or (keep and i in alnum[len(alnum) - keep :]):
                    assert a == b  # separators and the kept tail stay
                elif a.isdigit() or a.isnumeric():
                    assert b in "0123456789"
                elif a.islower():
                    assert b.isascii() and b.islower()
                else:
                    assert b.isascii() and b.isupper()


def test_preserving_token_characters_are_uniform(token_path: str) -> None:
    from collections import Counter

    from trustzones.dlp.vault import _one_preserving_token

    digits: Counter[str] = Counter()
    letters: Counter[str] = Counter()
    for _ in range(2000):
        token = _one_preserving_token("0000000000-aaaaaaaaaa", 0)
        digits.update(token[:10])
        letters.update(token[11:])
    # 20,000 draws each: every symbol appears, none far from its share (loose bounds,
    # about 6 standard deviations; a modulo bias of the rejected bytes would show).
    assert set(digits) == set("0123456789")
    assert all(1600 < n < 2400 for n in digits.values()), digits
    assert set(letters) == set("abcdefghijklmnopqrstuvwxyz")
    assert all(580 < n < 960 for n in letters.values()), letters


def test_preserving_token_refuses_to_keep_more_than_the_value_has(token_path: str) -> None:
    from trustzones.dlp.vault import _one_preserving_token

    with pytest.raises(ValueError, match="at least 6 random"):
        _one_preserving_token("1234567890", 12)


def test_new_tokens_are_checked_with_the_callers_scanner(tmp_path: Path) -> None:
    # Every token shaped like an e-mail address is an e-mail address: the default scanner
    # refuses them all; a flow whose scanner looks only for cards accepts one. (A seven-letter
    # top-level domain: a random three-letter one may spell a file extension such as ``png``,
    # which the e-mail rule rightly treats as a file name.)
    from trustzones.dlp import Scanner

    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        with pytest.raises(TransformError, match="free of detectable patterns"):
            vault.tokenize("ann@example.network", domain="e", index_key=INDEX, format="preserve")
        token = vault.tokenize(
            "ann@example.network",
            domain="e",
            index_key=INDEX,
            format="preserve",
            scanner=Scanner(types=["CREDIT_CARD"]),
        )
        assert token[3] == "@" and token != "ann@example.com"


def test_new_tokens_are_checked_in_the_field_they_are_written_to(tmp_path: Path) -> None:
    """A field's name is context: in ``card.number`` a dashed 16-digit Luhn-valid run at the
    start of a 19-digit token is a card number, alone it is not. A token checked alone
    could be written there and every record carrying it held back for ever (the token of a
    value never changes)."""
    import random

    from trustzones.dlp import Scanner

    scanner = Scanner()
    rng = random.Random(11)
    values = [
        "-".join(f"{rng.randrange(10**18, 10**19):019d}"[i : i + 4] for i in range(0, 19, 4))
        for _ in range(150)
    ]

    def flagged(token: str) -> bool:
        return bool(scanner.scan_text(token, field="card.number"))

    kw: dict[str, Any] = {"domain": "card", "index_key": INDEX, "format": "preserve"}
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        # One by one: each new token is drawn until it passes in its field.
        made = [
            vault.tokenize(v, keep_last=3, scanner=scanner, field="card.number", **kw)
            for v in values[:75]
        ]
        assert not [t for t in made if flagged(t)]
        # Provisionally: settling without confirmations checks each in its field too.
        with vault.provisional_batch() as tokens:
            for v in values[75:]:
                vault.tokenize(v, keep_last=3, scanner=scanner, field="card.number", **kw)
            tokens.settle(())
            final = [
                vault.tokenize(v, keep_last=3, scanner=scanner, field="card.number", **kw)
                for v in values[75:]
            ]
        assert not [t for t in final if flagged(t)]


# -- fast format-preserving tokens ---------------------------------------------------------

_ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(
    value=st.text(alphabet=_ALNUM + " -./_@", min_size=6, max_size=40).filter(
        lambda v: sum(ch.isalnum() for ch in v) >= 6
    ),
    keep=st.integers(min_value=0, max_value=4),
)
@settings(max_examples=300, deadline=None)
def test_ascii_preserving_tokens_keep_shape_and_tail(value: str, keep: int) -> None:
    from trustzones.dlp.vault import MIN_RANDOM_CHARS, _one_preserving_token

    for maker in _both_paths():
        with _making_tokens_with(maker):
            _check_shape_and_tail(value, keep, MIN_RANDOM_CHARS, _one_preserving_token)


def _check_shape_and_tail(value: str, keep: int, least: int, make: Any) -> None:
    alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
    if len(alnum) - keep < least:
        with pytest.raises(ValueError, match="at least 6 random"):
            make(value, keep)
        return
    token = make(value, keep)
    assert len(token) == len(value)
    kept = set(alnum[len(alnum) - keep :]) if keep else set()
    for i, (a, b) in enumerate(zip(value, token, strict=True)):
        if i not in alnum or i in kept:
            assert a == b
        elif a.isdigit():
            assert b.isdigit()
        elif a.islower():
            assert b.islower() and b.isascii()
        else:
            assert b.isupper() and b.isascii()


@given(
    digits=st.text(alphabet="0123456789", min_size=13, max_size=19),
    sep=st.sampled_from(["", " ", "-"]),
    keep=st.integers(min_value=0, max_value=4),
)
@settings(max_examples=300, deadline=None)
def test_preserving_tokens_of_card_shaped_values_always_fail_luhn(
    digits: str, sep: str, keep: int
) -> None:
    from trustzones.dlp._validators import luhn_valid
    from trustzones.dlp.vault import _one_preserving_token

    value = sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))
    for maker in _both_paths():
        with _making_tokens_with(maker):
            for _ in range(5):
                token = _one_preserving_token(value, keep)
                assert not luhn_valid("".join(ch for ch in token if ch.isdigit()))


def _per_byte_token(value: str, keep: int, least: int, random: bytes) -> str | None:
    """The native token maker's rule, written again: each random position takes the next
    pool byte below 250 (digits) or 234 (letters), modulo its alphabet; card-shaped tokens
    are made to fail Luhn by moving the last random digit on."""
    from trustzones.dlp._validators import luhn_valid

    if not value.isascii():
        return None
    alnum = [i for i, ch in enumerate(value) if ch.isalnum()]
    n_random = len(alnum) - keep if keep else len(alnum)
    if n_random < least:
        return None
    out = list(value)
    pool = iter(random)
    for i in alnum[:n_random]:
        ch = value[i]
        alphabet, limit = (
            ("0123456789", 250)
            if ch.isdigit()
            else ("abcdefghijklmnopqrstuvwxyz", 234)
            if ch.islower()
            else ("ABCDEFGHIJKLMNOPQRSTUVWXYZ", 234)
        )
        b = next(pool, None)
        while b is not None and b >= limit:
            b = next(pool, None)
        if b is None:
            return None
        out[i] = alphabet[b % len(alphabet)]
    digits = "".join(ch for ch in out if ch.isdigit())
    if all(value[i].isdigit() for i in alnum) and 13 <= len(alnum) <= 19 and luhn_valid(digits):
        if not n_random:
            return None  # no random digit to move on
        last = alnum[n_random - 1]
        out[last] = str((int(out[last]) + 1) % 10)
    return "".join(out)


@given(
    value=st.one_of(
        st.text(alphabet=_ALNUM + " -./_@", max_size=30),
        st.text(alphabet="0123456789 -", min_size=13, max_size=23),
        st.text(max_size=12),  # not ASCII at times: the native maker declines
    ),
    keep=st.integers(min_value=0, max_value=6),
    least=st.integers(min_value=0, max_value=8),
    random=st.binary(max_size=48),
)
@settings(max_examples=500, deadline=None)
def test_native_tokens_follow_their_per_byte_rule(
    value: str, keep: int, least: int, random: bytes
) -> None:
    (native, _python) = _both_paths()
    assert native(value, keep, least, random) == _per_byte_token(value, keep, least, random)


def test_token_shape_cache_holds_no_characters_of_values() -> None:
    from trustzones.dlp import vault as vault_module

    vault_module._one_preserving_token("4716-2210-9735-5563", 4)
    assert ("dddd.dddd.dddd.dddd", 4) in vault_module._SHAPES
    # Keys are shapes (d: digit, l / u: lower / upper case letter, .: kept as is), and the
    # cached plans hold positions and counts only.
    for kinds, _keep in vault_module._SHAPES:
        assert set(kinds) <= set("dlu.")
    for shape in vault_module._SHAPES.values():
        assert not any(isinstance(v, str) for v in (shape.runs, shape.counts, shape.luhn))


@given(
    value=st.text(max_size=40),
    domain=st.text(min_size=1, max_size=10),
    key=st.binary(min_size=0, max_size=100),
)
@settings(max_examples=200, deadline=None)
def test_cached_fingerprint_is_the_hmac_of_domain_and_value(
    tmp_path_factory: pytest.TempPathFactory, value: str, domain: str, key: bytes
) -> None:
    # A second implementation: the standard library's HMAC over ``domain NUL value``.
    import hashlib
    import hmac

    path = tmp_path_factory.mktemp("fp") / "v.db"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        expected = hmac.new(key, domain.encode() + b"\x00" + value.encode(), hashlib.sha256)
        assert vault._fingerprint(value, domain, key) == expected.digest()
        assert vault._fingerprint(value, domain, key) == expected.digest()  # cached states


# -- provisional batches: checked by the caller's scan, stored together ------------------


class _Flagging:
    """A scanner that finds something in exactly the strings in ``flagged``."""

    def __init__(self) -> None:
        self.flagged: set[str] = set()
        self.asked: list[str] = []

    def detects(self, text: str) -> bool:
        self.asked.append(text)
        return text in self.flagged


def _tok(vault: TokenVault, value: str, scanner: object) -> str:
    return vault.tokenize(
        value, domain="card", index_key=INDEX, format="preserve", keep_last=4, scanner=scanner
    )  # type: ignore[arg-type]


def test_provisional_batch_hands_out_tokens_and_stores_them_when_settled(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.provisional_batch() as batch:
            a = _tok(vault, "4111 1111 1111 1111", scanner)
            assert _tok(vault, "4111 1111 1111 1111", scanner) == a  # the same, twice taken
            b = _tok(vault, "5500 0000 0000 0004", scanner)
            assert batch.take() == (("card", a), ("card", a), ("card", b))
            assert batch.take() == ()
            assert _stored(path) == set()  # nothing stored before settling
            assert vault.detokenize(a, domain="card") == "4111 1111 1111 1111"
            assert batch.settle({("card", a)}) == frozenset()
            assert scanner.asked == [b]  # the confirmed token is not scanned again
            assert _stored(path) == set()  # stored, but not committed before the block ends
        assert _stored(path) == {a, b}
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        assert _tok(vault, "4111 1111 1111 1111", scanner) == a
        assert vault.detokenize(b, domain="card") == "5500 0000 0000 0004"


def test_provisional_token_that_fails_its_check_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.provisional_batch() as batch:
            bad = _tok(vault, "4111 1111 1111 1111", scanner)
            scanner.flagged.add(bad)
            assert batch.settle(()) == frozenset({("card", bad)})
            good = _tok(vault, "4111 1111 1111 1111", scanner)
            assert good != bad and good not in scanner.flagged
            assert batch.take() == ()  # the replacement is checked and stored: not provisional
        assert _stored(path) == {good}
        with pytest.raises(UnknownToken):
            vault.detokenize(bad, domain="card")


def test_unsettled_provisional_tokens_that_fail_their_check_fail_the_batch(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with (
            pytest.raises(TransformError, match="a token already handed out failed its check"),
            vault.provisional_batch(),
        ):
            scanner.flagged.add(_tok(vault, "4111 1111 1111 1111", scanner))
        assert _stored(path) == set()
        # Unsettled tokens that pass are checked and stored when the block ends.
        with vault.provisional_batch():
            kept = _tok(vault, "5500 0000 0000 0004", scanner)
        assert _stored(path) == {kept}


def test_provisional_token_of_a_value_tokenized_meanwhile_is_replaced_by_that_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with (
        TokenVault(path, cipher=aesgcm_cipher(KEY)) as mine,
        TokenVault(path, cipher=aesgcm_cipher(KEY)) as other,
    ):
        with mine.provisional_batch() as batch:
            provisional = _tok(mine, "4111 1111 1111 1111", scanner)
            theirs = _tok(other, "4111 1111 1111 1111", scanner)  # another process, committed
            assert batch.settle(batch.take()) == frozenset({("card", provisional)})
            assert _tok(mine, "4111 1111 1111 1111", scanner) == theirs
        assert _stored(path) == {theirs}


def test_provisional_token_that_clashes_with_a_stored_one_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.provisional_batch() as batch:
            clash = _tok(vault, "4111 1111 1111 1111", scanner)
            # Another value took the same random token meanwhile.
            db = sqlite3.connect(path)
            db.execute(
                "INSERT INTO tokens VALUES ('card', ?, ?, ?, 0)", (clash, b"f" * 32, b"sealed")
            )
            db.commit()
            db.close()
            assert batch.settle(batch.take()) == frozenset({("card", clash)})
            again = _tok(vault, "4111 1111 1111 1111", scanner)
            assert again != clash
        assert vault.detokenize(again, domain="card") == "4111 1111 1111 1111"


def test_provisional_batches_look_values_up_first_while_most_exist(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    values = [f"4111 1111 1111 {i:04d}" for i in range(10)]
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        stored = [_tok(vault, v, scanner) for v in values]
    # A fresh process (empty cache) sees only values that have tokens: the first batch
    # finds out when it settles, the next ones look them up before issuing anything.
    with TokenVault(path, cipher=aesgcm_cipher(KEY), cache_size=0) as vault:
        with vault.provisional_batch() as batch:
            [_tok(vault, v, scanner) for v in values]
            assert len(batch.settle(batch.take())) == 10
            assert [_tok(vault, v, scanner) for v in values] == stored
        with vault.provisional_batch() as batch:
            assert [_tok(vault, v, scanner) for v in values] == stored
            assert batch.take() == ()


def test_provisional_batch_must_be_the_outermost_and_ends_with_its_block(tmp_path: Path) -> None:
    with TokenVault(tmp_path / "v.db", cipher=aesgcm_cipher(KEY)) as vault:
        with (
            vault.batch(),
            pytest.raises(TransformError, match="must be the outermost batch"),
            vault.provisional_batch(),
        ):
            pass
        with vault.provisional_batch() as batch:
            pass
        with pytest.raises(TransformError, match="this provisional token batch has ended"):
            batch.settle(())


def test_provisional_batch_that_raises_keeps_none_of_its_tokens(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with pytest.raises(RuntimeError, match="downstream failed"), vault.provisional_batch() as b:
            lost = _tok(vault, "4111 1111 1111 1111", scanner)
            b.settle(b.take())
            raise RuntimeError("downstream failed")
        assert _stored(path) == set()
        assert _tok(vault, "4111 1111 1111 1111", scanner) != lost


def test_settled_tokens_are_checked_with_the_default_scanner_and_stored_as_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trustzones.dlp import vault as vault_module

    path = tmp_path / "v.db"
    scanner = _Flagging()
    monkeypatch.setattr(vault_module, "_default_scanner", lambda: scanner)
    values = [f"4111 1111 1111 {i:04d}" for i in range(3)]
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        with vault.provisional_batch() as batch:
            tokens = [_tok(vault, v, None) for v in values]
            scanner.flagged.add(tokens[1])
            assert batch.settle(()) == frozenset({("card", tokens[1])})
            assert scanner.asked == tokens  # each unconfirmed token, by the default scanner
        assert vault.detokenize(tokens[2], domain="card") == values[2]
    db = sqlite3.connect(path)
    try:
        kinds = set(db.execute("SELECT typeof(fingerprint), typeof(sealed) FROM tokens"))
    finally:
        db.close()
    assert kinds == {("blob", "blob")}


def test_provisional_batch_whose_tokens_cannot_all_be_stored_commits_none(
    tmp_path: Path,
) -> None:
    path = tmp_path / "v.db"
    scanner = _Flagging()
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        # The disk fills up after 300 rows: the failure comes inside one of the statements.
        vault._db.execute(
            "CREATE TEMP TRIGGER full BEFORE INSERT ON tokens"
            " WHEN (SELECT count(*) FROM tokens) >= 300 BEGIN SELECT RAISE(ABORT, 'full'); END"
        )
        values = [f"4111 1111 {i:04d} 0000" for i in range(500)]
        with pytest.raises(TransformError, match="could not be stored"):
            with vault.provisional_batch() as batch:
                for v in values:
                    _tok(vault, v, scanner)
                with pytest.raises(TransformError, match="could not store new tokens"):
                    batch.settle(batch.take())
        assert _stored(path) == set()
        vault._db.execute("DROP TRIGGER full")
        with vault.provisional_batch() as batch:
            tokens = [_tok(vault, v, scanner) for v in values]
            assert batch.settle(batch.take()) == frozenset()
        assert _stored(path) == set(tokens) and len(tokens) == 500


_Row = tuple[str, str, bytearray, bytearray, float]


def _rows(keys: list[tuple[int, int]], tag: str) -> list[_Row]:
    """Rows of the tokens table whose tokens and fingerprints come from ``keys``."""
    return [
        ("card", f"t{t}", bytearray(b"f%d" % f), bytearray(f"{tag}{i}".encode()), float(i))
        for i, (t, f) in enumerate(keys)
    ]


@given(n_existing=st.integers(0, 50), n_new=st.integers(0, 700), rng=st.randoms())
@settings(max_examples=60, deadline=None)
def test_multi_row_inserts_store_what_one_insert_per_row_stores(
    tmp_path_factory: pytest.TempPathFactory, n_existing: int, n_new: int, rng: Any
) -> None:
    # The reference: executemany (one statement per row, in order) into a copy of the
    # table. Keys come from a small space, so that some rows clash with stored ones or with
    # each other, and are ignored.
    existing, new = (
        [(rng.randrange(1000), rng.randrange(1000)) for _ in range(n)] for n in (n_existing, n_new)
    )
    path = tmp_path_factory.mktemp("ins") / "v.db"
    insert = "INSERT OR IGNORE INTO {} VALUES (?, ?, ?, ?, ?)"
    with TokenVault(path, cipher=aesgcm_cipher(KEY)) as vault:
        db = vault._db
        (schema,) = db.execute("SELECT sql FROM sqlite_master WHERE name='tokens'").fetchone()
        db.execute(schema.replace("CREATE TABLE tokens", "CREATE TABLE reference"))
        for table in ("tokens", "reference"):
            db.executemany(insert.format(table), _rows(existing, "old"))
        rows = _rows(new, "new")
        expected = db.executemany(insert.format("reference"), rows).rowcount
        db.execute("BEGIN IMMEDIATE")
        assert vault._insert_rows(rows) == expected
        db.execute("COMMIT")
        query = "SELECT rowid, * FROM {} ORDER BY rowid"
        assert list(db.execute(query.format("tokens"))) == list(
            db.execute(query.format("reference"))
        )


@given(
    cached=st.lists(st.integers(0, 20), max_size=10, unique=True),
    pending=st.lists(st.integers(21, 40), max_size=10, unique=True),  # not cached
    cache_size=st.integers(-1, 12),
)
@settings(max_examples=200, deadline=None)
def test_a_batchs_tokens_enter_the_lru_as_one_by_one(
    tmp_path_factory: pytest.TempPathFactory,
    cached: list[int],
    pending: list[int],
    cache_size: int,
) -> None:
    # The reference: _remember, token by token (what a committed batch did before).
    path = tmp_path_factory.mktemp("lru") / "v.db"
    with (
        TokenVault(path, cipher=aesgcm_cipher(KEY), cache_size=cache_size) as one_by_one,
        TokenVault(path, cipher=aesgcm_cipher(KEY), cache_size=cache_size) as at_once,
    ):
        for vault in (one_by_one, at_once):
            for i in cached:
                vault._remember(("d", b"%d" % i), f"old{i}")
        tokens = {("d", b"%d" % i): f"new{i}" for i in pending}
        for ck, token in tokens.items():
            one_by_one._remember(ck, token)
        at_once._remember_all(tokens)
        assert list(at_once._cache.items()) == list(one_by_one._cache.items())


# -- the pool of random bytes ----------------------------------------------------------------


def test_random_pool_hands_each_byte_out_once() -> None:
    from trustzones.dlp.vault import _RandomPool

    pool = _RandomPool(size=64)  # refilled every 4 takes
    taken = [pool.take(16) for _ in range(1000)]
    assert len(set(taken)) == 1000 and all(len(t) == 16 for t in taken)
    assert len(pool.take(100)) == 100  # more than the pool holds at once


def test_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    import os

    from trustzones.dlp import vault as vault_module

    vault_module._RANDOM.take(1)  # the pool holds unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: hand the parent what it would take next
        try:
            os.write(write, vault_module._RANDOM.take(32))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 32)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != vault_module._RANDOM.take(32)
