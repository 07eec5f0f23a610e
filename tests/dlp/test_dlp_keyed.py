"""The keyed HMAC of the hot paths (vault fingerprints, watermark tags) is the standard one."""

from __future__ import annotations

import hashlib
import hmac

from hypothesis import given, settings
from hypothesis import strategies as st

from trustzones.dlp import TokenVault
from trustzones.dlp._keyed import hmac_sha256


def test_the_native_core_is_the_default() -> None:
    import trustzones_native

    digest = hmac_sha256(b"k" * 32)
    assert getattr(digest, "__self__", None).__class__ is trustzones_native.HmacSha256


@settings(max_examples=300, deadline=None)
@given(key=st.binary(max_size=200), message=st.binary(max_size=300))
def test_both_paths_give_the_standard_hmac(key: bytes, message: bytes) -> None:
    expected = hmac.new(key, message, hashlib.sha256).digest()
    assert hmac_sha256(key)(message) == expected
    assert hmac_sha256(key, native=False)(message) == expected


_utf8_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(value=_utf8_text, domain=_utf8_text, key=st.binary(min_size=16, max_size=80))
def test_the_vault_fingerprint_is_the_documented_hmac(value: str, domain: str, key: bytes) -> None:
    vault = TokenVault.__new__(TokenVault)  # the fingerprint needs no file
    vault._hmacs = {}
    expected = TokenVault.fingerprint(value, domain=domain, index_key=key)
    assert vault._fingerprint(value, domain, key) == expected
    assert vault._fingerprint(value, domain, key) == expected  # set up once, then cached
