#!/usr/bin/env bash
# The Python package's tests: builds the package into a virtual environment (made once
# under target/, with maturin, pytest and numpy from PyPI) and runs its pytest suite
# against real strata-server processes. Arguments go to pytest.
#
#   PYTHON=python3.12 python/test.sh -k mooncake
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${STRATA_PY_VENV:-$root/target/python-venv}
if [ ! -x "$venv/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  'maturin>=1.7,<2' 'pytest>=7' pytest-timeout numpy ruff
# Python's own compiler checks: undefined names, unused imports, syntax.
"$venv/bin/ruff" check -q --select F,E9 python/
cargo build -q -p strata-server --bin strata-server -p strata-bench --bin strata-bench
# The wheel a user's `pip install ./python` builds, in the test profile (the workspace's
# dependencies are already built so), installed as a user installs it.
rm -rf target/wheels/python-test
"$venv/bin/maturin" build -q --profile dev -m python/Cargo.toml \
  -o target/wheels/python-test -i "$venv/bin/python"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps \
  target/wheels/python-test/strata_kv-*.whl
STRATA_SERVER_BIN="$root/target/debug/strata-server" "$venv/bin/python" -m pytest -q \
  -p no:cacheprovider --rootdir python python/tests "$@"
