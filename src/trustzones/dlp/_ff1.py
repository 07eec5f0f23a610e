"""NIST SP 800-38G FF1 format-preserving encryption on AES (``cryptography``).

Algorithm 7 (FF1.Encrypt) and Algorithm 8 (FF1.Decrypt) of SP 800-38G, for radix 2..65536
given as an alphabet string, with the rev. 1 requirement that radix^minlen >= 1,000,000.
The PRF is CBC-MAC with a zero IV; P is the same for every round, so its encryption is
computed once and each round encrypts only Q (CBC chaining from CIPH(P)).

This is the reference. When the native core ``trustzones_native`` is installed, the rounds
run there instead (the ``fpe`` crate on RustCrypto ``aes``); the checks and their errors
stay here, and the tests hold both to the NIST samples and to each other.
"""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trustzones.dlp._native import NativeFF1, load_native

__all__ = ["FF1", "MIN_DOMAIN"]

#: SP 800-38G rev. 1: radix ** minlen must be at least one million.
MIN_DOMAIN = 1_000_000
_MAXLEN = 2**32 - 1
_MASK128 = (1 << 128) - 1


class FF1:
    """FF1 with one AES key and one alphabet (its length is the radix). ``native``: use
    the native core (default: when it is installed); the result is the same."""

    def __init__(
        self, key: bytes, alphabet: str = "0123456789", *, native: bool | None = None
    ) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("FF1 needs an AES key of 16, 24 or 32 bytes")
        radix = len(alphabet)
        if radix < 2 or radix > 65536 or len(set(alphabet)) != radix:
            raise ValueError("FF1 alphabet must have 2..65536 distinct characters")
        self.alphabet = alphabet
        self.radix = radix
        self._index = {ch: i for i, ch in enumerate(alphabet)}
        minlen = 2
        while radix**minlen < MIN_DOMAIN:
            minlen += 1
        self.minlen = minlen
        # ECB on single blocks is the block cipher CIPH of the spec; the CBC-MAC chaining
        # is done here. Never used to encrypt data directly.
        self._ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305
        self._decimal = alphabet == "0123456789"
        self._setup_cache: dict[
            tuple[int, bytes], tuple[int, int, int, int, int, int, int, int]
        ] = {}
        module = load_native() if native is None or native else None
        if native and module is None:
            raise ValueError("the native FF1 needs trustzones_native (pip install ./native)")
        self._native: NativeFF1 | None = module.FF1(key, radix) if module is not None else None

    @property
    def native(self) -> bool:
        """Whether the rounds run in the native core."""
        return self._native is not None

    def _ciph(self, block: int) -> int:
        return int.from_bytes(self._ecb.update(block.to_bytes(16, "big")), "big")

    def _setup(self, n: int, tweak: bytes) -> tuple[int, int, int, int, int, int, int, int]:
        """Per (length, tweak) constants, cached: steps 1-5 of Algorithm 7 plus the CBC-MAC
        state after every block of P || Q that does not depend on the round."""
        key = (n, tweak)
        hit = self._setup_cache.get(key)
        if hit is not None:
            return hit
        radix, t = self.radix, len(tweak)
        u = n // 2
        v = n - u
        blen = math.ceil(math.ceil(v * math.log2(radix)) / 8)
        d = 4 * math.ceil(blen / 4) + 4
        p = bytes([1, 2, 1]) + radix.to_bytes(3, "big") + bytes([10, u % 256])
        p += n.to_bytes(4, "big") + t.to_bytes(4, "big")
        state = self._ciph(int.from_bytes(p, "big"))
        # Q = T || [0]^pad || [i] || [NUM(B)]^b; its length is a multiple of 16.
        prefix = tweak + bytes((-t - blen - 1) % 16)
        qlen = len(prefix) + 1 + blen
        tail_len = 16 * math.ceil((1 + blen) / 16)
        const = prefix[: qlen - tail_len]
        for j in range(0, len(const), 16):
            state = self._ciph(state ^ int.from_bytes(const[j : j + 16], "big"))
        tail_prefix = int.from_bytes(prefix[qlen - tail_len :], "big") << (8 * (1 + blen))
        hit = (u, v, blen, d, state, tail_prefix, tail_len, radix**u)
        if len(self._setup_cache) < 256:
            self._setup_cache[key] = hit
        return hit

    def _rounds(self, x: str, tweak: bytes, decrypt: bool) -> str:
        n, radix = len(x), self.radix
        if n < self.minlen or n > _MAXLEN:
            raise ValueError(
                f"FF1 input must have {self.minlen} or more numerals (radix {radix}), got {n}"
            )
        if self._native is not None:
            return self._native_rounds(self._native, x, tweak, decrypt)
        u, v, blen, d, state, tail_prefix, tail_len, mod_u = self._setup(n, tweak)
        mod_v = mod_u * radix if v > u else mod_u
        num_a, num_b = self._num(x[:u]), self._num(x[u:])
        shift_i = 8 * blen
        shift_y = 128 - 8 * d
        ciph = self._ciph
        for i in range(9, -1, -1) if decrypt else range(10):
            # Step 6i-ii: R = PRF(P || Q), Q ending in [i] || [NUM(B)]^b (Algorithm 8: A).
            q = tail_prefix | (i << shift_i) | (num_a if decrypt else num_b)
            r = state
            for k in range(tail_len - 16, -1, -16):
                r = ciph(r ^ ((q >> (8 * k)) & _MASK128))
            # Step 6iii-iv: y = NUM(first d bytes of R || CIPH(R ^ [1]) || CIPH(R ^ [2]) ...).
            if d <= 16:
                y = r >> shift_y
            else:
                s = r.to_bytes(16, "big")
                j = 1
                while len(s) < d:
                    s += ciph(r ^ j).to_bytes(16, "big")
                    j += 1
                y = int.from_bytes(s[:d], "big")
            # Step 6v-ix.
            modulus = mod_u if i % 2 == 0 else mod_v
            if decrypt:
                num_a, num_b = (num_b - y) % modulus, num_a
            else:
                num_a, num_b = num_b, (num_a + y) % modulus
        return self._str(num_a, u) + self._str(num_b, v)

    def _native_rounds(self, native: NativeFF1, x: str, tweak: bytes, decrypt: bool) -> str:
        if self._decimal:
            return native.decrypt_digits(x, tweak) if decrypt else native.encrypt_digits(x, tweak)
        index = self._index
        numerals = [index[ch] for ch in x]
        out = (
            native.decrypt_numerals(numerals, tweak)
            if decrypt
            else native.encrypt_numerals(numerals, tweak)
        )
        alphabet = self.alphabet
        return "".join([alphabet[i] for i in out])

    def _num(self, text: str) -> int:
        if self._decimal:
            return int(text)
        radix, index = self.radix, self._index
        x = 0
        for ch in text:
            x = x * radix + index[ch]
        return x

    def _str(self, x: int, m: int) -> str:
        if self._decimal:
            return str(x).zfill(m)
        radix, alphabet = self.radix, self.alphabet
        out = [""] * m
        for i in range(m - 1, -1, -1):
            x, digit = divmod(x, radix)
            out[i] = alphabet[digit]
        return "".join(out)

    def _check(self, text: str) -> str:
        if not all(ch in self._index for ch in text):
            raise ValueError("FF1 input has a character outside the alphabet")
        return text

    def encrypt(self, text: str, tweak: bytes = b"") -> str:
        """Encrypt a string over the alphabet; the result has the same length."""
        return self._rounds(self._check(text), tweak, False)

    def decrypt(self, text: str, tweak: bytes = b"") -> str:
        """Invert :meth:`encrypt` with the same key, alphabet and tweak."""
        return self._rounds(self._check(text), tweak, True)
