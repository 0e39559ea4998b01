// Runs when the package is installed. Installed with its platform package (the
// `piecestore-<platform>` package named in optionalDependencies, holding the prebuilt addon: see
// scripts/pack.mjs), or from a tarball that carries the addon itself, this does nothing.
// Installed from a source checkout (`npm install ./node`), it builds the addon with cargo
// (Rust 1.88 or later) and places it beside index.js, where the loader finds it.
'use strict'

const { execFileSync } = require('node:child_process')
const { copyFileSync, existsSync } = require('node:fs')
const path = require('node:path')

/** The platform part of the addon's file name, as the napi-rs loader (index.js) spells it. */
function platformName() {
  const { platform, arch } = process
  if (platform === 'linux') {
    const glibc = process.report && process.report.getReport().header.glibcVersionRuntime
    return `linux-${arch}-${glibc ? 'gnu' : 'musl'}`
  }
  if (platform === 'win32') return `win32-${arch}-msvc`
  return `${platform}-${arch}`
}

const addon = path.join(__dirname, `piecestore.${platformName()}.node`)
const manifest = path.join(__dirname, '..', 'bindings', 'node', 'Cargo.toml')

if (!process.env.PIECESTORE_BUILD_FROM_SOURCE) {
  if (existsSync(addon)) process.exit(0)
  // Installed from the registry (or `npm pack`'s tarballs): npm installed the platform package
  // named in optionalDependencies that matches this machine, and the loader requires it.
  try {
    require.resolve(`piecestore-${platformName()}/package.json`)
    process.exit(0)
  } catch {
    // Not installed: build from source below, if this is a checkout.
  }
}
if (!existsSync(manifest)) {
  console.error(
    `piecestore: no prebuilt addon for ${platformName()} in this package, and no Rust source ` +
      `(${manifest}) to build one from. Install from a PieceStore checkout: npm install ./node`
  )
  process.exit(1)
}

/**
 * The machine's own target triple, as cargo builds for it (`rustc -vV`), or null when rustc
 * cannot say (cargo then reports the missing toolchain below).
 *
 * The build names it with `--target` because `napi build` (the package's `build` script, and
 * CI's check of the generated loader) always does: cargo then keeps both builds under
 * target/<triple>/release, and the second reuses the first's compiled dependencies instead of
 * building them all again (minutes on a small machine).
 */
function hostTriple() {
  try {
    const info = execFileSync('rustc', ['-vV'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString()
    const host = /^host: (\S+)$/m.exec(info)
    return host ? host[1] : null
  } catch {
    return null
  }
}

console.error('piecestore: building the native addon with cargo (release; a few minutes the first time)')
const args = ['build', '--release', '--manifest-path', manifest, '--message-format=json-render-diagnostics']
const triple = process.env.CARGO_BUILD_TARGET ? null : hostTriple()
if (triple) args.push('--target', triple)
let out
try {
  out = execFileSync(
    'cargo',
    args,
    { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 256 * 1024 * 1024 }
  )
} catch (e) {
  console.error(`piecestore: cargo build failed (${e.message}); is Rust 1.88+ installed (https://rustup.rs)?`)
  process.exit(1)
}
let built = null
for (const line of out.toString().split('\n')) {
  if (!line.startsWith('{')) continue
  const msg = JSON.parse(line)
  if (msg.reason === 'compiler-artifact' && msg.target && msg.target.name === 'piecestore_node') {
    built = msg.filenames.find((f) => /\.(so|dylib|dll)$/.test(f)) || built
  }
}
if (!built) {
  console.error('piecestore: cargo did not report the addon library it built')
  process.exit(1)
}
copyFileSync(built, addon)
console.error(`piecestore: built ${path.basename(addon)}`)
