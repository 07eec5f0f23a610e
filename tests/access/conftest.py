"""Fixtures of the access tests; the helpers live in access_helpers.py (a unique name, so
test modules can import it whatever other parts' conftest files are loaded)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import jwt
import pytest
from access_helpers import NOW, AuditRecorder, Idp, Pki, ecommerce_directory, make_ca
from cryptography.hazmat.primitives.asymmetric import ec

from trustzones.access import Directory


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def directory() -> Directory:
    return ecommerce_directory()


@pytest.fixture
def audit() -> AuditRecorder:
    return AuditRecorder()


@pytest.fixture(scope="session")
def pki() -> Pki:
    return make_ca("trustzones test client CA")


@pytest.fixture(scope="session")
def other_pki() -> Pki:
    return make_ca("somebody else's CA")


@pytest.fixture(scope="session")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Idp:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk.update({"kid": "k1", "use": "sig", "alg": "ES256"})
    path: Path = tmp_path_factory.mktemp("oidc") / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return Idp("https://idp.example", "trustzones", key, "k1", path)
