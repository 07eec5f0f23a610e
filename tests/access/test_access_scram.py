"""SCRAM: RFC 5802 (SHA-1) and RFC 7677 (SHA-256) exchanges, SHA-512 checked by a second,
literal implementation of the RFC's Hi() loop, Kafka's credential string format."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from trustzones.access import ScramCredential, ScramServerExchange, salted_password
from trustzones.errors import AuthenticationFailed

# (mechanism, salt, client nonce, server nonce, client proof, server signature)
RFC_EXCHANGES = [
    pytest.param(
        "SCRAM-SHA-1",
        "QSXCR+Q6sek8bf92",
        "fyko+d2lbbFgONRv9qkxdawL",
        "3rfcNHYJY1ZVvWVs7j",
        "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        id="rfc5802-sha1",
    ),
    pytest.param(
        "SCRAM-SHA-256",
        "W22ZaJ0SNY7soEsUEjb6gQ==",
        "rOprNGfwEbeRWgbNEkqO",
        "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        id="rfc7677-sha256",
    ),
]


def _rfc_credential(mechanism: str, salt_b64: str) -> ScramCredential:
    # the RFC examples use 4096 iterations and the password "pencil" for user "user"
    return ScramCredential._derive("pencil", mechanism, 4096, base64.b64decode(salt_b64))


@pytest.mark.parametrize(("mech", "salt", "cnonce", "snonce", "proof", "signature"), RFC_EXCHANGES)
def test_rfc_exchange_is_accepted_and_server_signature_matches(
    mech: str, salt: str, cnonce: str, snonce: str, proof: str, signature: str
) -> None:
    credential = _rfc_credential(mech, salt)
    exchange = ScramServerExchange(mech, {"user": credential}.get, server_nonce=snonce)
    server_first = exchange.server_first(f"n,,n=user,r={cnonce}")
    assert server_first == f"r={cnonce}{snonce},s={salt},i=4096"
    server_final = exchange.server_final(f"c=biws,r={cnonce}{snonce},p={proof}")
    assert server_final == f"v={signature}"
    assert exchange.username == "user"


@pytest.mark.parametrize(("mech", "salt", "cnonce", "snonce", "proof", "signature"), RFC_EXCHANGES)
def test_rfc_exchange_with_a_flipped_proof_bit_is_refused(
    mech: str, salt: str, cnonce: str, snonce: str, proof: str, signature: str
) -> None:
    del signature
    raw = bytearray(base64.b64decode(proof))
    raw[0] ^= 1
    bad = base64.b64encode(bytes(raw)).decode()
    exchange = ScramServerExchange(
        mech, {"user": _rfc_credential(mech, salt)}.get, server_nonce=snonce
    )
    exchange.server_first(f"n,,n=user,r={cnonce}")
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        exchange.server_final(f"c=biws,r={cnonce}{snonce},p={bad}")


def test_wrong_nonce_and_channel_binding_are_refused() -> None:
    mech, salt, cnonce, snonce, proof, _ = RFC_EXCHANGES[1].values
    credential = _rfc_credential(str(mech), str(salt))
    exchange = ScramServerExchange(str(mech), {"user": credential}.get, server_nonce=str(snonce))
    exchange.server_first(f"n,,n=user,r={cnonce}")
    with pytest.raises(AuthenticationFailed):
        exchange.server_final(f"c=biws,r={cnonce}XX,p={proof}")
    # channel binding ("p=") is not offered, so such a client-first message is refused
    other = ScramServerExchange(str(mech), {"user": credential}.get)
    with pytest.raises(AuthenticationFailed):
        other.server_first(f"p=tls-unique,,n=user,r={cnonce}")


def test_unknown_user_gets_a_plausible_challenge_and_then_fails() -> None:
    exchange = ScramServerExchange("SCRAM-SHA-512", {}.get, server_nonce="srv")
    first = exchange.server_first("n,,n=mallory,r=abc")
    assert first.startswith("r=abcsrv,s=") and first.endswith(",i=4096")
    with pytest.raises(AuthenticationFailed):
        exchange.server_final("c=biws,r=abcsrv,p=" + base64.b64encode(b"x" * 64).decode())


def _literal_hi(password: bytes, salt: bytes, iterations: int, name: str) -> bytes:
    # RFC 5802 §2.2, written out: U1 = HMAC(str, salt + INT(1)), Ui = HMAC(str, Ui-1),
    # Hi = U1 XOR U2 XOR ... XOR Ui. A second implementation to check pbkdf2_hmac use.
    u = hmac.new(password, salt + b"\x00\x00\x00\x01", name).digest()
    out = bytearray(u)
    for _ in range(iterations - 1):
        u = hmac.new(password, u, name).digest()
        out = bytearray(a ^ b for a, b in zip(out, u, strict=True))
    return bytes(out)


def test_sha512_credential_matches_a_literal_implementation_of_the_rfc() -> None:
    salt = bytes(range(32))
    credential = ScramCredential.derive(
        "correct horse battery staple", mechanism="SCRAM-SHA-512", iterations=4096, salt=salt
    )
    salted = _literal_hi(b"correct horse battery staple", salt, 4096, "sha512")
    assert salted == salted_password("correct horse battery staple", salt, 4096, "SCRAM-SHA-512")
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    assert credential.stored_key == hashlib.sha512(client_key).digest()
    assert credential.server_key == hmac.new(salted, b"Server Key", "sha512").digest()
    assert len(credential.stored_key) == 64


def test_sha512_exchange_runs_end_to_end_with_a_client_computed_here() -> None:
    credential = ScramCredential.derive("s3cret!", mechanism="SCRAM-SHA-512", iterations=4096)
    exchange = ScramServerExchange("SCRAM-SHA-512", {"alice": credential}.get)
    first = exchange.server_first("n,,n=alice,r=clientnonce")
    attrs = dict(part.split("=", 1) for part in first.split(","))
    salt, iterations = base64.b64decode(attrs["s"]), int(attrs["i"])
    salted = _literal_hi(b"s3cret!", salt, iterations, "sha512")
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth = f"n=alice,r=clientnonce,{first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha512(client_key).digest(), auth, "sha512").digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True)))
    final = exchange.server_final(f"{without_proof},p={proof.decode()}")
    expected = hmac.new(hmac.new(salted, b"Server Key", "sha512").digest(), auth, "sha512")
    assert final == "v=" + base64.b64encode(expected.digest()).decode()


def test_password_verification_good_and_bad() -> None:
    credential = ScramCredential.derive("hunter2hunter2", iterations=4096)
    assert credential.mechanism == "SCRAM-SHA-512"
    assert credential.verify_password("hunter2hunter2")
    assert not credential.verify_password("hunter2hunter3")
    assert not credential.verify_password("")


def test_kafka_credential_string_round_trips_and_holds_no_password() -> None:
    credential = ScramCredential.derive("pw-for-kafka", iterations=8192, salt=b"salty")
    text = credential.to_kafka_string()
    assert text.startswith(f"salt={base64.b64encode(b'salty').decode()},stored_key=")
    assert text.endswith(",iterations=8192")
    assert "pw-for-kafka" not in text
    again = ScramCredential.from_kafka_string(text, mechanism="SCRAM-SHA-512")
    assert again == credential
    with pytest.raises(ValueError, match="exactly salt"):
        ScramCredential.from_kafka_string("salt=AA==,iterations=4096", mechanism="SCRAM-SHA-512")


@pytest.mark.parametrize("iterations", [4095, 16385, 1])
def test_iterations_outside_kafkas_limits_are_refused(iterations: int) -> None:
    with pytest.raises(ValueError, match="between 4096 and 16384"):
        ScramCredential.derive("pw", iterations=iterations)


def test_repr_shows_no_key_material() -> None:
    credential = ScramCredential.derive("pw", iterations=4096)
    assert credential.stored_key.hex() not in repr(credential)
    assert "stored_key" not in repr(credential)
