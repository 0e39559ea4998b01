#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the two S3-compatible test servers
# (moto in a venv under target/, s3s-fs into ~/.cargo/bin), then lints and runs every test.
# The test harness starts the servers itself on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
  echo "== installing moto[server] 5.2.5 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
export PATH="$PWD/$venv/bin:$HOME/.cargo/bin:$PATH"

if [ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs 0.14.1" ]; then
  echo "== installing s3s-fs 0.14.1 (about 2 minutes)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
# CI=true makes a missing test server a failure instead of a skip.
CI="${CI:-true}" cargo test --workspace
