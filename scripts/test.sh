#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the two S3-compatible test servers
# (moto in a venv under target/, s3s-fs into ~/.cargo/bin), Debian's chromium (for the bench
# report's screenshot test) and PostgreSQL's binaries when missing (the shared pack index's
# tests start a throwaway cluster), then lints and runs every test.
# The test harness starts the servers itself on 127.0.0.1. Then builds the Python package twice
# (the 3.11+ abi3 wheel with zero-copy gets, and the 3.9+ abi3 wheel) and runs pytest on each,
# and installs the Node package the README's way into a fresh project and runs `node --test`.
# Then the C ABI's example, the Go module's `go vet` + `go test` (static and dynamic linking),
# and the UniFFI binding: its generated Kotlin compiled and tested on the JVM (Maven fetches
# the Kotlin compiler and JNA), its generated Python, and Swift generated (no Swift toolchain).
set -euo pipefail
cd "$(dirname "$0")/.."

# Each step's header says when it started (minutes:seconds since this script did), so a log
# shows where a run's time went.
step() { printf '== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

# A cold run writes about 10 GB under target/ (debug and release builds, two wheels, the Node
# addon): say up front when the disk is short of that, rather than failing mid-build.
avail_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
step "disk: $((avail_kb / 1024 / 1024)) GiB free here"
if [ "$avail_kb" -lt $((10 * 1024 * 1024)) ]; then
  echo "warning: under 10 GiB free; a cold run may fail with 'No space left on device'" >&2
fi

# $PATH without the directories that hold cargo or rustc: what a user without Rust has (the
# no-Rust installs of the Python wheel, the Node packages and the Go module run under it).
no_rust_path() {
  local dir out=""
  local IFS=:
  for dir in $PATH; do
    [ -n "$dir" ] && [ ! -x "$dir/cargo" ] && [ ! -x "$dir/rustc" ] && out="${out:+$out:}$dir"
  done
  printf '%s' "$out"
}

venv=target/test-venv
if ! "$venv/bin/moto_server" --help >/dev/null 2>&1; then
  step "installing moto[server] 5.2.5 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]==5.2.5'
fi
export PATH="$PWD/$venv/bin:$HOME/.cargo/bin:$PATH"

if [ "$(s3s-fs --version 2>/dev/null)" != "s3s-fs 0.14.1" ]; then
  step "installing s3s-fs 0.14.1 (about 2 minutes)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet
fi

if ! command -v chromium >/dev/null 2>&1; then
  # The HTML report of `piecestore bench` is rendered and screenshotted in headless Chromium.
  step "installing chromium (Debian's package) for the bench report test"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends chromium >/dev/null; }
fi

if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # The PostgreSQL pack index's tests start a throwaway cluster of their own (initdb +
  # postgres on 127.0.0.1, under the temp dir), as the `postgres` user when run as root.
  step "installing PostgreSQL (Debian's package) for the shared pack index tests"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y -q --no-install-recommends postgresql >/dev/null 2>&1 ||
    { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends postgresql >/dev/null; }
fi

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The UniFFI crate's generator binary needs its `cli` feature.
cargo clippy -p piecestore-uniffi --features cli --all-targets --quiet -- -D warnings
step "supply chain: cargo deny over both lockfiles (scripts/audit.sh, security/README.md)"
bash scripts/audit.sh
step "cargo test"
# CI=true makes a missing test server a failure instead of a skip.
export CI="${CI:-true}"
# The packed store's model test on s3s-fs and moto spends most of its time waiting for the
# server: s3s-fs answers many GETs about 40 ms late, and moto is slow. Its three runs there
# took 583 s one after the other, with 139 s of CPU. They run in the background, one thread
# each, beside the rest of the suite. (The crash tests on those servers wait as much, but they
# kill their writers at random times within a few hundred milliseconds: under more load the
# writers get nothing acknowledged and the test, rightly, fails. They stay in the suite.)
cargo test --workspace --no-run --quiet
model_bin=$(cargo test -p piecestore-tests --test pack_model --no-run --message-format=json --quiet |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target") or {}
    if m.get("executable") and t.get("kind") == ["test"] and t.get("name") == "pack_model":
        print(m["executable"])')
# Run where cargo runs it: in the package's directory.
(cd tests && "$model_bin" --test-threads 3 packed_s3s_fs_store packed_moto_store) \
  >target/pack_model-on-servers.log 2>&1 &
model_pid=$!
suite_rc=0 model_rc=0
cargo test --workspace -- --skip packed_s3s_fs_store --skip packed_moto_store || suite_rc=$?
wait "$model_pid" || model_rc=$?
step "cargo test: pack_model on s3s-fs and moto (it ran beside the rest)"
cat target/pack_model-on-servers.log
if [ "$suite_rc" -ne 0 ] || [ "$model_rc" -ne 0 ]; then
  echo "cargo test failed: exit status $suite_rc; pack_model on s3s-fs and moto $model_rc"
  exit 1
fi
# The filters above must still pick these three tests (renamed ones would run nowhere).
grep -q "test result: ok. 3 passed" target/pack_model-on-servers.log ||
  { echo "the filters no longer pick pack_model's 3 tests on servers: fix scripts/test.sh"; exit 1; }

step "python: build the package (release) and run pytest"
# From here to the C ABI, every release build names the host's triple, so they all share one
# build of the dependencies under target/<triple>/release: `napi build` always passes
# --target, and maturin, node/install.js and cargo honour CARGO_BUILD_TARGET. (Without it the
# Node addon compiled every dependency a second time: 8 minutes of a cold run.)
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_BUILD_TARGET="$host"
# awscli: python/tests/test_serve.py drives `piecestore serve` with the aws CLI (boto3 and
# cryptography, for its TLS test, come with moto). grpcio and its tools, status, health and
# reflection clients: python/tests/test_grpc.py drives serve's gRPC API with stubs generated
# from proto/ at test time.
"$venv/bin/pip" install --quiet --disable-pip-version-check \
  'maturin==1.16.0' 'pytest==9.2.0' 'mypy==2.4.1' 'awscli==1.46.3' \
  'grpcio==1.85.3' 'grpcio-tools==1.85.1' 'grpcio-status==1.85.3' \
  'grpcio-health-checking==1.85.1' 'grpcio-reflection==1.85.1'
# The one command the README documents, without build isolation (maturin is already here).
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps ./python
# grpcurl: python/tests/test_grpc.py lists and calls serve's gRPC services through reflection.
GOBIN="$PWD/target/tools" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
CI="${CI:-true}" "$venv/bin/pytest" -q -p no:cacheprovider python/tests

step "python: the CPython 3.9+ abi3 wheel, manylinux-checked, installed with no Rust on PATH"
# The wheel a user downloads: maturin tags it with the oldest manylinux policy its symbols
# allow and `--auditwheel check` fails the build if it links a library outside that policy.
# It goes into a new venv whose PATH has no cargo or rustc (bytes from get instead of
# zero-copy buffers on 3.9+), and the whole pytest suite runs against it.
py39=target/test-venv-abi3-py39
rm -rf target/wheels-abi3-py39 "$py39"
(cd python && "../$venv/bin/maturin" build --release --features abi3-py39 \
  --auditwheel check --out ../target/wheels-abi3-py39 --quiet)
wheel=$(ls target/wheels-abi3-py39/piecestore-*-cp39-abi3-manylinux_*.whl) ||
  { echo "no manylinux-tagged abi3 wheel in target/wheels-abi3-py39: $(ls target/wheels-abi3-py39)"; exit 1; }
echo "wheel: $(basename "$wheel")"
python3 -m venv "$py39"
"$py39/bin/pip" install --quiet --disable-pip-version-check 'pytest==9.2.0' 'mypy==2.4.1'
(
  PATH="$(no_rust_path)"
  if command -v cargo || command -v rustc; then echo "cargo or rustc still on PATH"; exit 1; fi
  "$py39/bin/pip" install --quiet --disable-pip-version-check --no-deps "$wheel"
  "$py39/bin/python" -c "import piecestore; assert not piecestore.zero_copy_get()"
)
# moto_server comes from the first venv, on PATH.
CI="${CI:-true}" "$py39/bin/pytest" -q -p no:cacheprovider python/tests

step "node: the README's install (npm install ./node builds the addon) in a fresh project"
rm -f node/piecestore.*.node
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
(cd "$fresh" && npm init -y >/dev/null && npm install --no-audit --no-fund "$OLDPWD/node" >/dev/null)
(cd "$fresh" && node -e "
  const { PieceStore } = require('piecestore')
  new PieceStore('memory://').put('1_s0', 'cjs').then(() => console.log('require: ok'))" &&
  node --input-type=module -e "
  import { PieceStore } from 'piecestore'
  const s = new PieceStore('memory://'); await s.put('1_s0', 'esm')
  console.log('import: ' + (await s.get('1_s0')).toString())")

step "node: dev tools; the generated loader and index.d.ts must be up to date"
(cd node && npm ci --no-audit --no-fund --ignore-scripts >/dev/null &&
  npx napi build --platform --release --manifest-path ../bindings/node/Cargo.toml \
    --output-dir . --js index.js --dts index.d.ts >/dev/null)
git diff --exit-code -- node/index.js node/index.d.ts ||
  { echo "node/index.js or node/index.d.ts is stale: run 'npm run build' in node/ and commit"; exit 1; }

step "node: node --test"
# moto_server comes from the first venv and s3s-fs from ~/.cargo/bin, both on PATH.
(cd node && CI="${CI:-true}" node --test test/)

step "C ABI: the release library, and examples/example.c built against the header and run"
# (The header's staleness is checked by cargo test: bindings/c/tests/header.rs.)
cargo build --release -q -p piecestore-c
cc -Wall -Wextra -Werror bindings/c/examples/example.c -I bindings/c/include \
  "target/$host/release/libpiecestore_c.a" -lpthread -ldl -lm -o target/c-example
target/c-example memory://
cdir=$(mktemp -d)
target/c-example "file://$cdir"
rm -rf "$cdir"

step "go: go vet and go test (the release library linked statically)"
# The Go binding links the checkout's target/release (its README's build command): put the
# library just built for the host's triple there.
mkdir -p target/release
cp "target/$host/release/libpiecestore_c.a" "target/$host/release/libpiecestore_c.so" target/release/
# s3s-fs from ~/.cargo/bin is on PATH: the tests start it on 127.0.0.1.
(cd bindings/go && go vet ./... && CI="${CI:-true}" go test -count=1 ./...)
step "go: dynamic linking (-tags piecestore_dynamic), and the benchmark builds"
(cd bindings/go && go vet -tags piecestore_dynamic ./... &&
  go test -tags piecestore_dynamic -count=1 -run 'Example' ./...)
(cd benches/go && go vet ./... && go build -o /dev/null .)
step "go: the released module (prebuilt static library inside) from a module proxy, go alone"
# What a Go user without Rust does: `go get` the module (here from the GOPROXY directory
# release.sh writes, as from a module proxy) and `go build` a program of their own
# (bindings/go/testdata/consumer), with no cargo or rustc on PATH.
bash bindings/go/release.sh --out target/go-module --proxy target/go-proxy
gomod=$(sed -n 's/^module //p' bindings/go/go.mod)
goversion=$(tail -1 "target/go-proxy/$gomod/@v/list")
consumer=$(mktemp -d)
cp bindings/go/testdata/consumer/go.mod bindings/go/testdata/consumer/main.go "$consumer/"
(
  export PATH="$(no_rust_path)" GOPROXY="file://$PWD/target/go-proxy" GOSUMDB=off \
    GOFLAGS=-modcacherw GOMODCACHE="$consumer/modcache"
  cd "$consumer"
  if command -v cargo || command -v rustc; then echo "cargo or rustc still on PATH"; exit 1; fi
  go get "$gomod@$goversion"
  go build -o consumer .
  got=$(./consumer "file://$consumer/store")
  [ "$got" = "from the released module; 1 listed" ] || { echo "consumer printed: $got"; exit 1; }
  echo "consumer: $got"
)
rm -rf "$consumer"
step "go: minio-go against piecestore serve (target/debug/piecestore, built by cargo test)"
(cd server/tests/minio-go && go vet ./... && CI="${CI:-true}" go test -count=1 ./...)

step "uniffi: the generated Kotlin on the JVM, the generated Python, Swift generated"
# A debug build: back to cargo's default target, so it reuses cargo test's target/debug.
unset CARGO_BUILD_TARGET
bash bindings/uniffi/test.sh

step "fuzz: every target for ${PIECESTORE_FUZZ_SECS:-20} s (fuzz/README.md; the build takes minutes)"
PIECESTORE_FUZZ_SECS="${PIECESTORE_FUZZ_SECS:-20}" bash scripts/fuzz.sh
step "done: target/ holds $(du -sh target 2>/dev/null | cut -f1)"
