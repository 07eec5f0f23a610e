"""The token vault: an SQLite file in the source zone that maps tokens back to real values.

>>> import os, tempfile
>>> from trustzones.dlp.vault import TokenVault, aesgcm_cipher
>>> path = os.path.join(tempfile.mkdtemp(), "tokens.sqlite3")
>>> with TokenVault(path, cipher=aesgcm_cipher(bytes(32))) as vault:
...     token = vault.tokenize("4111111111111111", domain="pan", index_key=bytes(32))
...     assert vault.tokenize("4111111111111111", domain="pan", index_key=bytes(32)) == token
...     vault.detokenize(token, domain="pan")
'4111111111111111'

Real values are stored sealed by a pluggable :class:`VaultCipher` (the keys part seals with
the zone's keys); the associated data binds each sealed value to its domain and token, so a
row copied onto another token does not open. Lookups go through an HMAC fingerprint of the
value (``index_key``), so the file holds no plaintext and no unkeyed hash. The same value in
the same domain always gets the same token (joins keep working downstream).

``detokenize`` does not check who is asking: callers authorise first (a grant in the source
zone). One vault object may be shared by threads; several processes may open the same file
(WAL mode, ``BEGIN IMMEDIATE`` around each new token, or around each :meth:`TokenVault.batch`
from its first new token, or around the settling of a
:meth:`TokenVault.provisional_batch`).

Speed: tokens already issued are remembered in a bounded LRU keyed by the keyed fingerprint
(never by the clear value), and :meth:`TokenVault.batch` groups the new tokens of many
records into one transaction, committed when the block ends: a flow commits its batch's
tokens before it writes any record that carries one. A flow uses
:meth:`TokenVault.provisional_batch`: it hands out new format-preserving tokens before they
are checked and stores them together (a few multi-row statements) when it settles, its own
output scan standing in for the check of each token on its own; settling finds the values
that had a token already and the clashes, and replaces those tokens before anything is
committed. A new format-preserving token is one uniform draw of random bytes (from a pool
the OS CSPRNG fills 4 KiB at a time), read off as digits and letters by the value's cached
shape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trustzones._sqlite import insert_rows
from trustzones.dlp._keyed import hmac_sha256
from trustzones.dlp._native import load_native
from trustzones.dlp._validators import luhn_valid
from trustzones.errors import DecryptionFailed, TransformError, TrustzonesError

if TYPE_CHECKING:
    from trustzones.dlp.scanner import Scanner

_NATIVE = load_native()  # optional (python -m pip install ./native)
_native_token: Callable[[str, int, int, bytes], str | None] | None = (
    _NATIVE.preserving_token if _NATIVE is not None else None
)

__all__ = [
    "ProvisionalToken",
    "ProvisionalTokens",
    "TokenFormat",
    "TokenVault",
    "UnknownToken",
    "VaultCipher",
    "aesgcm_cipher",
]

TokenFormat = Literal["random", "preserve"]
_SCHEMA_VERSION = 1
_MAX_TRIES = 32
#: Provisional batches look values up first while more than this share of them turn out
#: to have a token already.
_LOOKUP_FIRST_ABOVE = 0.05
#: Fewest random characters a format-preserving token may have.
MIN_RANDOM_CHARS = 6


class UnknownToken(TrustzonesError):
    """The token is not in this vault (or not in this domain)."""


@dataclass(frozen=True, slots=True)
class VaultCipher:
    """How the vault seals stored values: ``seal(plaintext, aad)`` and ``open(sealed, aad)``.

    ``open`` must raise on a wrong key or tampered data; the vault turns any failure into
    :class:`~trustzones.errors.DecryptionFailed`.
    """

    seal: Callable[[bytes, bytes], bytes]
    open: Callable[[bytes, bytes], bytes]


def aesgcm_cipher(key: bytes) -> VaultCipher:
    """A :class:`VaultCipher` using AES-256-GCM with a random 96-bit nonce per value."""
    aead = AESGCM(key)

    def seal(plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, plaintext, aad)

    def open_(sealed: bytes, aad: bytes) -> bytes:
        return aead.decrypt(sealed[:12], sealed[12:], aad)

    return VaultCipher(seal, open_)


def _aad(domain: str, token: str) -> bytes:
    return _aad_head(domain) + token.encode()


def _aad_head(domain: str) -> bytes:
    """The part of :func:`_aad` that depends on the domain only."""
    return b"trustzones/vault/v1\x00" + domain.encode() + b"\x00"


class _RandomPool:
    """Bytes from the OS CSPRNG, read 4 KiB at a time and handed out once each.

    One system call per few hundred tokens instead of one per token: ``os.urandom`` gives up
    the GIL, and taking it back costs a thread switch whenever another thread is busy (a
    flow writes one batch from a writer thread while it tokenises the next). A forked child
    starts with an empty pool, so it never hands out its parent's bytes.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0

    def take(self, n: int) -> bytes:
        with self._lock:
            if self._pos + n > len(self._buf):
                self._buf = os.urandom(max(self._size, n))
                self._pos = 0
            out = self._buf[self._pos : self._pos + n]
            self._pos += n
            return out

    def reset(self) -> None:
        """Forget the bytes read so far (in a forked child: also a lock no thread holds)."""
        self._lock = threading.Lock()
        self._buf = b""
        self._pos = 0


_RANDOM = _RandomPool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RANDOM.reset)


def _random_token(prefix: str) -> str:
    return prefix + base64.urlsafe_b64encode(_RANDOM.take(16)).rstrip(b"=").decode()


_TOKEN_ATTEMPTS = 64


def _preserving_token(
    value: str, keep_last: int, scanner: Scanner | None = None, field: str | None = None
) -> str:
    """A random string shaped like ``value`` (see :func:`_one_preserving_token`) in which
    ``scanner`` (default: the default scanner) finds nothing: neither the whole token nor
    any part of it (a 16-digit run inside a 19-digit token, say) may pass as a card number,
    an SSN or another sensitive value, or the flow's own output scan would hold it back as
    a leak."""
    if scanner is None:
        from trustzones.dlp.scanner import default_scanner

        scanner = default_scanner()
    for _ in range(_TOKEN_ATTEMPTS):
        token = _one_preserving_token(value, keep_last)
        if not _flagged(scanner, token, field):
            return token
    raise ValueError(
        f"no format-preserving token free of detectable patterns after {_TOKEN_ATTEMPTS} tries"
    )


_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: The kind of each ASCII character: ``d`` digit, ``l`` lower case, ``u`` upper case letter,
#: ``.`` anything else (kept as it is).
_ASCII_KIND = str.maketrans(
    {
        chr(c): "d"
        if chr(c) in _DIGITS
        else "l"
        if chr(c) in _LOWER
        else "u"
        if chr(c) in _UPPER
        else "."
        for c in range(128)
    }
)
#: Per kind: the alphabet, and the first random byte value rejected so that ``byte % len``
#: stays uniform.
_ALPHABETS = {"d": (_DIGITS, 250), "l": (_LOWER, 234), "u": (_UPPER, 234)}


def _kind(ch: str) -> str:
    """The kind (see ``_ASCII_KIND``) of a letter or digit in any script."""
    if ch.isdigit() or ch.isnumeric():
        return "d"
    return "l" if ch.islower() else "u"


def _one_preserving_token(value: str, keep_last: int) -> str:
    """A random string shaped like ``value``: each digit and letter (any script) replaced by
    a random ASCII one of its kind (the last ``keep_last`` of them kept), everything else
    kept. A Luhn-valid digit string gets a Luhn-invalid token, so a token is never
    mistaken for a card number."""
    if value.isascii():
        if _native_token is not None:
            # The same shape and alphabets, each random character from one pool byte (the
            # bytes that would bias it skipped): ~10x faster. None when the value has too few
            # random positions or the bytes run out: the Python path decides (and explains).
            token = _native_token(value, keep_last, MIN_RANDOM_CHARS, _RANDOM.take(len(value) + 16))
            if token is not None:
                return token
        return _ascii_preserving_token(value, keep_last)
    # Every letter and digit, in any script, is a position: a full-width digit left in
    # place would leak.
    kinds = "".join(_kind(ch) if ch.isalnum() else "." for ch in value)
    n_alnum = len(kinds) - kinds.count(".")
    n_random = _random_count(n_alnum, keep_last)
    out = list(value)
    # One call to the CSPRNG per token; bytes that would bias the choice are skipped.
    pool = _RANDOM.take(n_random + 16)
    k = 0
    left = n_random
    last_random = -1
    for i, kind in enumerate(kinds):
        if kind == ".":
            continue
        alphabet, limit = _ALPHABETS[kind]
        while True:
            if k == len(pool):
                pool = _RANDOM.take(16)
                k = 0
            b = pool[k]
            k += 1
            if b < limit:
                break
        out[i] = alphabet[b % len(alphabet)]
        if kind == "d":
            last_random = i
        left -= 1
        if not left:
            break
    token = "".join(out)
    digits = "".join(str(unicodedata.digit(ch)) for ch in token if ch.isdigit())
    all_digits = len(digits) == n_alnum and kinds.count("d") == n_alnum
    if all_digits and 13 <= len(digits) <= 19 and luhn_valid(digits):
        # Change the last random digit so that the Luhn check fails.
        out[last_random] = str((int(out[last_random]) + 1) % 10)
        token = "".join(out)
    return token


def _random_count(n_alnum: int, keep_last: int) -> int:
    n_random = n_alnum - keep_last if keep_last else n_alnum
    if n_random < MIN_RANDOM_CHARS:
        raise ValueError(
            f"a format-preserving token needs at least {MIN_RANDOM_CHARS} random letters or "
            f"digits; this value has {max(n_random, 0)}"
        )
    return n_random


@dataclass(frozen=True, slots=True)
class _Shape:
    """Where the random characters of an ASCII value's token go (see ``_shape``)."""

    #: (start, end, alphabet index, offset into that alphabet's random text) per run of
    #: random positions of one kind, in order.
    runs: tuple[tuple[int, int, int, int], ...]
    #: How many random digits, lower and upper case letters the token gets.
    counts: tuple[int, int, int]
    #: 10**digits: the digits are the draw modulo this.
    digit_space: int
    #: How many different tokens there are (10**digits * 26**letters), the bytes drawn for
    #: one, and the first draw rejected so that ``draw % space`` stays uniform.
    space: int
    draw_bytes: int
    draw_limit: int
    #: Every letter and digit is a digit, 13 to 19 of them: the token must fail Luhn.
    luhn: bool
    #: The last random position (a digit when ``luhn``).
    last_random: int


_KIND_INDEX = {"d": 0, "l": 1, "u": 2}
_NOT_DIGITS = bytes(c for c in range(256) if not 48 <= c <= 57)
#: Shapes by (kinds, keep_last): a value's shape only (which positions are digits,
#: letters or kept), never its characters. Bounded: cleared when full.
_SHAPES: dict[tuple[str, int], _Shape] = {}
_SHAPES_MAX = 4096


def _shape(kinds: str, keep_last: int) -> _Shape:
    n_alnum = len(kinds) - kinds.count(".")
    n_random = _random_count(n_alnum, keep_last)
    runs: list[tuple[int, int, int, int]] = []
    counts = [0, 0, 0]
    left = n_random
    last_random = -1
    for i, kind in enumerate(kinds):
        if not left:
            break
        if kind == ".":
            continue
        a = _KIND_INDEX[kind]
        if runs and runs[-1][1] == i and runs[-1][2] == a:
            s, _e, _a, off = runs[-1]
            runs[-1] = (s, i + 1, a, off)
        else:
            runs.append((i, i + 1, a, counts[a]))
        counts[a] += 1
        last_random = i
        left -= 1
    digit_space = 10 ** counts[0]
    space = digit_space * 26 ** (counts[1] + counts[2])
    # One byte more than the space needs: a draw is rejected less than once in 256.
    draw_bytes = (space.bit_length() + 7) // 8 + 1
    draw_limit = (256**draw_bytes // space) * space
    luhn = kinds.count("d") == n_alnum and 13 <= n_alnum <= 19
    return _Shape(
        tuple(runs),
        (counts[0], counts[1], counts[2]),
        digit_space,
        space,
        draw_bytes,
        draw_limit,
        luhn,
        last_random,
    )


def _ascii_preserving_token(value: str, keep_last: int) -> str:
    """:func:`_one_preserving_token` for an ASCII value: the positions come from its cached
    shape, and all the random characters from one uniform draw below the number of possible
    tokens (rejection sampling on CSPRNG bytes), read off as base-10 and base-26 digits, so
    every character is uniform and independent of the others."""
    kinds = value.translate(_ASCII_KIND)
    key = (kinds, keep_last)
    shape = _SHAPES.get(key)
    if shape is None:
        shape = _shape(kinds, keep_last)
        if len(_SHAPES) >= _SHAPES_MAX:
            _SHAPES.clear()
        _SHAPES[key] = shape
    limit = shape.draw_limit
    while True:
        x = int.from_bytes(_RANDOM.take(shape.draw_bytes))
        if x < limit:
            x %= shape.space
            break
    nd, nl, nu = shape.counts
    x, d = divmod(x, shape.digit_space)
    digits = str(d).zfill(nd) if nd else ""
    if shape.luhn:
        # All the letters and digits are digits, the random ones first: the token's digits
        # are ``digits`` and the kept tail's. Change the last random digit so that the
        # Luhn check fails.
        tail = value[shape.last_random + 1 :].encode().translate(None, _NOT_DIGITS).decode()
        if luhn_valid(digits + tail):
            digits = f"{digits[:-1]}{(int(digits[-1]) + 1) % 10}"
    texts = [digits, "", ""]
    for a, n, letters in ((1, nl, _LOWER), (2, nu, _UPPER)):
        if n:
            chars = []
            for _ in range(n):
                x, r = divmod(x, 26)
                chars.append(letters[r])
            texts[a] = "".join(chars)
    parts = []
    prev = 0
    for s, e, a, off in shape.runs:
        parts.append(value[prev:s])
        parts.append(texts[a][off : off + e - s])
        prev = e
    parts.append(value[prev:])
    return "".join(parts)


def _flagged(scanner: Scanner, token: str, field: str | None) -> bool:
    """Whether ``scanner`` finds anything in ``token``, as it would in ``field`` (a field's
    name is context: a dashed 16-digit card run inside a 19-digit token counts as a card in
    ``card.number`` and not alone)."""
    if field is None:
        return scanner.detects(token)
    return bool(scanner.scan_text(token, field=field))


def _default_scanner() -> Scanner:
    from trustzones.dlp.scanner import default_scanner

    return default_scanner()


class _NewValue(NamedTuple):
    """A value that needs a new token, and how to make it (a named tuple: cheap to make)."""

    value: str
    domain: str
    fp: bytes
    format: TokenFormat
    prefix: str
    keep_last: int
    scanner: Scanner | None
    field: str | None

    def __repr__(self) -> str:  # never the value
        return f"_NewValue(domain={self.domain!r}, format={self.format!r})"


#: Builds a :class:`_NewValue` from a tuple without the named tuple's Python-level ``__new__``.
_NEW = tuple.__new__

#: A provisional token: (domain, token).
ProvisionalToken = tuple[str, str]


class ProvisionalTokens:
    """The caller's handle on a :meth:`TokenVault.provisional_batch`."""

    def __init__(self, vault: TokenVault) -> None:
        self._vault = vault

    def take(self) -> tuple[ProvisionalToken, ...]:
        """The provisional tokens handed out since the last call (repeats included)."""
        v = self._vault
        with v._lock:
            taken = tuple(v._taken)
            v._taken.clear()
            return taken

    def settle(self, confirmed: Collection[ProvisionalToken]) -> frozenset[ProvisionalToken]:
        """Check (unless ``confirmed``) and store every provisional token; return those that
        were replaced (see :meth:`TokenVault.provisional_batch`). Raises
        :class:`~trustzones.errors.TransformError` when they cannot be stored."""
        v = self._vault
        with v._lock:
            if v._provisional is None:
                raise TransformError("this provisional token batch has ended")
            return frozenset(v._settle(confirmed))


class TokenVault:
    """Tokens and their sealed values in one SQLite file. Use as a context manager.

    ``cache_size`` bounds the in-memory LRU of issued tokens (keyed by fingerprint; 0
    turns it off). Tokens never change once issued, so the cache stays right when other
    processes add tokens to the same file.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, cipher: VaultCipher, cache_size: int = 65_536
    ) -> None:
        self.path = Path(path)
        self._cipher = cipher
        # Re-entrant: a batch holds it from start to commit (see :meth:`batch`).
        self._lock = threading.RLock()
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        #: Per (index key, domain): the HMAC's inner and outer hash states (RFC 2104).
        #: Per (index key, domain): the keyed digest and the message prefix ``domain NUL``.
        self._hmacs: dict[tuple[bytes, str], tuple[Callable[[bytes], bytes], bytes]] = {}
        self._batch_depth = 0
        self._in_tx = False
        #: Tokens inserted by the open batch transaction, not yet committed.
        self._pending: dict[tuple[str, bytes], str] = {}
        #: Why the open batch can no longer commit (its tokens may be lost).
        self._batch_error: str | None = None
        #: In a provisional batch: its unsettled tokens, by (domain, token), and those
        #: handed out since the caller last took them. None outside one.
        self._provisional: dict[tuple[str, str], _NewValue] | None = None
        self._taken: list[tuple[str, str]] = []
        #: Provisional batches: whether to look a value up before issuing a provisional
        #: token, from how many values turned out to have one (decaying average), and how
        #: many lookups in this batch found one.
        self._lookup_first = False
        self._existing_rate = 0.0
        self._looked_up = 0
        try:
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed token is on disk before anything that carries it is written
            # (NORMAL could lose the last commits to a power cut while the destination,
            # which syncs its own, keeps records whose tokens then never existed).
            self._db.execute("PRAGMA synchronous=FULL")
            # Tokens and fingerprints are random keys: once the indexes outgrow SQLite's
            # default 2 MiB page cache, nearly every insert rereads pages. Up to 64 MiB of
            # cache (filled only as pages are used) made inserts ~30% cheaper in a 40,000-
            # token vault (8.0 instead of 11.5 us of CPU per row, batches of 500).
            self._db.execute("PRAGMA cache_size=-65536")
            # Random keys dirty pages all over the indexes, and a checkpoint writes each one
            # back once however often it changed since the last: checkpointing every 10,000
            # WAL pages (the WAL file then grows to ~40 MiB) instead of 1,000 made commits
            # ~20% cheaper in a 40,000-token vault and ~27% in a 200,000-token one (batches
            # of 500: 5.5 and 19 instead of 7.0 and 26 us of CPU per token).
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS tokens ("
                " domain TEXT NOT NULL,"
                " token TEXT NOT NULL,"
                " fingerprint BLOB NOT NULL,"
                " sealed BLOB NOT NULL,"
                " created_at REAL NOT NULL,"
                " PRIMARY KEY (domain, token),"
                " UNIQUE (domain, fingerprint))"
            )
            self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise TransformError(
                f"cannot open the token vault {self.path}: {exc}; check that the zone's data "
                "directory exists and is writable"
            ) from exc

    def __enter__(self) -> TokenVault:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def fingerprint(value: str, *, domain: str, index_key: bytes) -> bytes:
        """The keyed lookup fingerprint of a value: HMAC-SHA-256(index_key, domain NUL value)."""
        return hmac.new(
            index_key, domain.encode() + b"\x00" + value.encode(), hashlib.sha256
        ).digest()

    def _fingerprint(self, value: str, domain: str, index_key: bytes) -> bytes:
        """:meth:`fingerprint`, with the keyed HMAC set up once per (key, domain)."""
        keyed = self._hmacs.get((index_key, domain))
        if keyed is None:
            keyed = (hmac_sha256(index_key), domain.encode() + b"\x00")
            if len(self._hmacs) < 64:
                self._hmacs[(index_key, domain)] = keyed
        digest, prefix = keyed
        return digest(prefix + value.encode())

    def _remember(self, ck: tuple[str, bytes], token: str) -> None:
        if self._cache_size <= 0:
            return
        cache = self._cache
        cache[ck] = token
        if len(cache) > self._cache_size:
            cache.popitem(last=False)

    def _remember_all(self, tokens: dict[tuple[str, bytes], str]) -> None:
        """:meth:`_remember` each of ``tokens`` in order, with one update of the LRU. None of
        them may be cached (a batch's new tokens: their values missed the cache, and the
        batch holds the lock from then to its end)."""
        if self._cache_size <= 0:
            return
        cache = self._cache
        cache.update(tokens)
        for _ in range(len(cache) - self._cache_size):
            cache.popitem(last=False)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Group the new tokens made inside the block into one transaction, committed when
        the block ends (rolled back when it raises).

        Every token handed out inside the block is durable once the block has exited
        normally; write records that carry them only after that. If the transaction cannot
        commit, or a new token could not be stored, leaving the block raises
        :class:`~trustzones.errors.TransformError` (fail closed: the tokens handed out may
        not exist). The vault is held for this thread until the block ends (other threads
        wait); the file's write lock is taken at the first new token and held to the end.
        Blocks nest; the outermost one commits.
        """
        with self._lock:
            self._batch_depth += 1
            ok = False
            try:
                yield
                ok = True
            finally:
                self._batch_depth -= 1
                if self._batch_depth == 0:
                    self._end_batch(commit=ok)

    @contextmanager
    def provisional_batch(self) -> Iterator[ProvisionalTokens]:
        """A :meth:`batch` whose new tokens are provisional until it is settled.

        For a caller that scans what it writes anyway (a flow scans its whole output): a new
        format-preserving token is handed out *before* it is checked for detectable patterns,
        and no new token is stored until :meth:`ProvisionalTokens.settle`. While most values
        turn out to be new, a value missing from the cache is not even looked up in the
        file first. The caller

        1. takes, after each record, the provisional tokens that record received
           (:meth:`ProvisionalTokens.take`);
        2. scans its records with the same scanner the tokens would be checked with;
        3. settles, naming the tokens found in records whose scan found nothing: those count
           as checked (the scanner saw them in the field they are written to, as the check of
           a token alone does when ``tokenize`` is told its ``field``); every other one is
           checked now;
           all are stored together. A token that fails its check, whose value has a
           token already (issued meanwhile by another process, or not looked up), or that
           another value holds already, is replaced (by the value's stored token, or a new,
           checked, stored one), and ``settle`` returns the replaced tokens: the caller
           transforms the records that received them again (they now get the replacements)
           and scans them again.

        The file's write lock is taken when settling and held until the block ends. When the
        block ends, tokens not yet settled are settled with nothing confirmed; if one of them
        had to be replaced, the batch fails closed (records carrying it may exist) and
        nothing is committed. Must be the outermost batch; plain batches may nest inside it.
        """
        with self._lock:
            if self._batch_depth:
                raise TransformError(
                    "a provisional token batch must be the outermost batch of its vault"
                )
            self._provisional = {}
            self._taken = []
            self._looked_up = 0
            try:
                with self.batch():
                    yield ProvisionalTokens(self)
            finally:
                self._provisional = None
                self._taken = []

    def _end_batch(self, *, commit: bool) -> None:
        error = None
        if commit and self._provisional and self._batch_error is None:
            try:
                if self._settle(()):
                    error = "a token already handed out failed its check"
            except TransformError:
                pass  # the reason is in _batch_error
        error, self._batch_error = self._batch_error or error, None
        pending, self._pending = self._pending, {}
        in_tx, self._in_tx = self._in_tx, False
        if in_tx:
            if commit and error is None:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error as exc:
                    error = f"commit failed ({type(exc).__name__})"
                    self._rollback()
            else:
                self._rollback()
        if error is not None:
            if not commit:
                return  # the block is raising already
            raise TransformError(
                f"token vault {self.path}: the new tokens of this batch could not be stored "
                f"({error}); nothing that carries them may be written. Check the vault file "
                "and run again."
            )
        if commit and pending:
            self._remember_all(pending)

    def _rollback(self) -> None:
        with suppress(sqlite3.Error):  # no transaction left to roll back
            self._db.execute("ROLLBACK")

    def tokenize(
        self,
        value: str,
        *,
        domain: str,
        index_key: bytes,
        format: TokenFormat = "random",
        prefix: str = "tok_",
        keep_last: int = 0,
        scanner: Scanner | None = None,
        field: str | None = None,
    ) -> str:
        """The token of ``value`` in ``domain``, created (random, or shaped like the value
        when ``format="preserve"``) and stored sealed on first use. A new format-preserving
        token is one in which ``scanner`` (default: the default scanner; a flow passes its
        own) finds nothing, read as the content of ``field`` when it is given (the path the
        token is written to: its name is context for the scanner)."""
        fp = self._fingerprint(value, domain, index_key)
        ck = (domain, fp)
        with self._lock:
            token = self._cache.get(ck)
            if token is not None:
                self._cache.move_to_end(ck)
                return token
            if self._batch_depth:
                token = self._pending.get(ck)
                if token is not None:
                    if self._provisional and (domain, token) in self._provisional:
                        self._taken.append((domain, token))
                    return token
                provisional = self._provisional
                if provisional is not None and not self._lookup_first:
                    # Mostly new values lately: settling finds the few that exist.
                    if self._batch_error is not None:
                        raise TransformError(f"domain {domain!r}: the token vault batch has failed")
                    new = _NEW(
                        _NewValue, (value, domain, fp, format, prefix, keep_last, scanner, field)
                    )
                    return self._provisional_token(provisional, new, ck)
            row = self._db.execute(
                "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
            ).fetchone()
            if row is not None:
                token = str(row[0])
                self._remember(ck, token)
                self._looked_up += 1
                return token
            new = _NewValue(value, domain, fp, format, prefix, keep_last, scanner, field)
            if self._batch_depth:
                return self._tokenize_in_batch(new)
            for _ in range(_MAX_TRIES):
                token = self._new_token(new, check=True)
                sealed = self._cipher.seal(value.encode(), _aad(domain, token))
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, fp)
                    ).fetchone()
                    if row is not None:  # another process tokenized it meanwhile
                        self._db.execute("COMMIT")
                        token = str(row[0])
                        self._remember(ck, token)
                        return token
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?, ?)",
                        (domain, token, fp, sealed, time.time()),
                    )
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if cur.rowcount == 1:
                    self._remember(ck, token)
                    return token
        raise self._no_free_token(domain)

    def _tokenize_in_batch(self, new: _NewValue) -> str:
        """A new token inside the batch transaction (called with the lock held)."""
        domain = new.domain
        ck = (domain, new.fp)
        if self._batch_error is not None:
            raise TransformError(f"domain {domain!r}: the token vault batch has failed")
        try:
            provisional = self._provisional
            if provisional is not None:
                return self._provisional_token(provisional, new, ck)
            if not self._in_tx:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_tx = True
                # Holding the write lock now: another process may have added it meanwhile.
                row = self._db.execute(
                    "SELECT token FROM tokens WHERE domain=? AND fingerprint=?", (domain, new.fp)
                ).fetchone()
                if row is not None:
                    token = str(row[0])
                    self._remember(ck, token)
                    return token
            token = self._store_checked(new)
        except sqlite3.Error as exc:
            # The transaction may be gone with the tokens already handed out in it.
            self._batch_error = f"{type(exc).__name__} while storing a token"
            raise TransformError(
                f"domain {domain!r}: the token vault could not store a new token "
                f"({type(exc).__name__})"
            ) from None
        self._pending[ck] = token
        return token

    def _provisional_token(
        self,
        provisional: dict[tuple[str, str], _NewValue],
        new: _NewValue,
        ck: tuple[str, bytes],
    ) -> str:
        """A new provisional token for ``new``: not checked, not looked up or stored yet
        (see :meth:`provisional_batch`). Called with the lock held."""
        domain = new.domain
        token = self._new_token(new, check=False)
        while (domain, token) in provisional:  # unique within the batch
            token = self._new_token(new, check=False)
        key = (domain, token)
        provisional[key] = new
        self._pending[ck] = token
        self._taken.append(key)
        return token

    def _store_checked(self, new: _NewValue) -> str:
        """A new, checked token for ``new``, inserted in the open batch transaction."""
        for _ in range(_MAX_TRIES):
            token = self._new_token(new, check=True)
            sealed = self._cipher.seal(new.value.encode(), _aad(new.domain, token))
            # No other writer while we hold the write lock, and this fingerprint is not
            # stored: only a clash of random tokens can make the insert a no-op.
            cur = self._db.execute(
                "INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?, ?)",
                (new.domain, token, new.fp, sealed, time.time()),
            )
            if cur.rowcount == 1:
                return token
        raise self._no_free_token(new.domain)

    def _settle(self, confirmed: Collection[tuple[str, str]]) -> set[tuple[str, str]]:
        """Check and store the provisional tokens (see :meth:`provisional_batch`); the
        replaced ones. Called with the lock held; takes the file's write lock (held until
        the batch ends)."""
        provisional = self._provisional
        if not provisional:
            return set()
        self._provisional = {}
        self._taken = []
        if self._batch_error is not None:
            raise TransformError("the token vault batch has failed")
        replaced: set[tuple[str, str]] = set()
        rows = []
        now = time.time()
        seal = self._cipher.seal
        default_scanner: Scanner | None = None
        heads: dict[str, bytes] = {}
        for key, new in provisional.items():
            value, domain, fp, fmt, _prefix, _keep_last, scanner, field = new
            token = key[1]
            if fmt == "preserve" and key not in confirmed:
                if scanner is None:
                    if default_scanner is None:
                        default_scanner = _default_scanner()
                    scanner = default_scanner
                if _flagged(scanner, token, field):
                    replaced.add(key)
                    continue
            head = heads.get(domain)
            if head is None:
                head = heads[domain] = _aad_head(domain)
            # Blobs as bytearrays: the sqlite3 module stores them as it stores bytes, but it
            # looks for an adapter for each bytes parameter (two failed attribute lookups
            # that build AttributeErrors), not for a bytearray.
            sealed = seal(value.encode(), head + token.encode())
            rows.append((domain, token, bytearray(fp), bytearray(sealed), now))
        existing = 0
        try:
            if not self._in_tx:
                self._db.execute("BEGIN IMMEDIATE")
                self._in_tx = True
            # 1. Store them all. A row is ignored when its value has a token already (issued
            #    by another batch or process since, or never looked up) or when its random
            #    token is another value's (a clash): both are found and replaced below.
            stored = self._insert_rows(rows)
            if stored != len(rows):
                for domain, token, row_fp, _sealed, _at in rows:
                    row = self._db.execute(
                        "SELECT fingerprint FROM tokens WHERE domain=? AND token=?",
                        (domain, token),
                    ).fetchone()
                    if row is None or bytes(row[0]) != row_fp:
                        replaced.add((domain, token))
            # 2. Replace: by the value's existing token, or a new checked, stored one.
            for key in replaced:
                new = provisional[key]
                row = self._db.execute(
                    "SELECT token FROM tokens WHERE domain=? AND fingerprint=?",
                    (new.domain, new.fp),
                ).fetchone()
                if row is not None:
                    existing += 1
                    self._pending[(new.domain, new.fp)] = str(row[0])
                else:
                    self._pending[(new.domain, new.fp)] = self._store_checked(new)
        except sqlite3.Error as exc:
            self._batch_error = f"{type(exc).__name__} while storing tokens"
            raise TransformError(
                f"the token vault could not store new tokens ({type(exc).__name__})"
            ) from None
        except TransformError:
            self._batch_error = "no free token for a replacement"
            raise
        # 3. Look values up before issuing provisional tokens only while many turn out to
        #    exist (a cold cache after a restart): a lookup costs less than transforming a
        #    record again, but more than nothing when values are new.
        seen = len(provisional) + self._looked_up
        rate = (existing + self._looked_up) / seen
        self._existing_rate = 0.5 * self._existing_rate + 0.5 * rate
        self._lookup_first = self._existing_rate > _LOOKUP_FIRST_ABOVE
        self._looked_up = 0
        return replaced

    def _insert_rows(self, rows: list[tuple[str, str, bytearray, bytearray, float]]) -> int:
        """``INSERT OR IGNORE`` ``rows`` in order, with multi-row statements; how many were
        stored."""
        return insert_rows(self._db, "INSERT OR IGNORE INTO tokens", 5, rows)

    def _new_token(self, new: _NewValue, *, check: bool) -> str:
        if new.format == "preserve":
            try:
                if not check:
                    return _one_preserving_token(new.value, new.keep_last)
                return _preserving_token(new.value, new.keep_last, new.scanner, new.field)
            except ValueError as exc:
                raise TransformError(f"domain {new.domain!r}: {exc}") from None
        return _random_token(new.prefix)

    @staticmethod
    def _no_free_token(domain: str) -> TransformError:
        return TransformError(
            f"domain {domain!r}: no free token after {_MAX_TRIES} tries; the value has too "
            "few characters for a format-preserving token"
        )

    def detokenize(self, token: str, *, domain: str) -> str:
        """The real value behind ``token``. Callers check the principal's grant first."""
        with self._lock:
            if self._provisional and (domain, token) in self._provisional:
                return self._provisional[(domain, token)].value
            row = self._db.execute(
                "SELECT sealed FROM tokens WHERE domain=? AND token=?", (domain, token)
            ).fetchone()
        if row is None:
            raise UnknownToken(f"no such token in domain {domain!r} of vault {self.path}")
        try:
            return self._cipher.open(bytes(row[0]), _aad(domain, token)).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError, TrustzonesError) as exc:
            raise DecryptionFailed("token vault entry could not be opened") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM tokens").fetchone()[0])
