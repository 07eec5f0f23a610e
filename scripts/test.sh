#!/usr/bin/env bash
# Install everything the tests need, then run the whole suite. Used by .ci/run.
# Servers (Kafka brokers from Maven jars, OpenBao) are started by the test fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'
if [ -f scripts/kafka.py ]; then
  python3 scripts/kafka.py fetch            # resolve broker jars from Maven Central (cached)
fi
python3 -m ruff check --quiet src tests benchmarks scripts
python3 -m pytest "$@"
