// Packs the npm packages a user installs without Rust, in the napi-rs layout:
//   - one platform package per target in package.json's `napi.targets` (today
//     `piecestore-linux-x64-gnu`, from npm/linux-x64-gnu/), holding the stripped addon;
//   - the main `piecestore` package: the loader (index.js) and its types, with every platform
//     package named in `optionalDependencies`, so npm fetches the one that matches the user's
//     os/cpu/libc and skips the others.
// The addon must be built first (`npm run build`, which writes piecestore.<platform>.node
// here). Usage: node scripts/pack.mjs [out-dir] (default ../target/npm-pack); prints the
// tarballs' paths, platform packages first.
import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(path.dirname(fileURLToPath(import.meta.url)))
const out = path.resolve(process.argv[2] ?? path.join(here, '..', 'target', 'npm-pack'))
const main = JSON.parse(readFileSync(path.join(here, 'package.json'), 'utf8'))
const stage = path.join(out, 'stage')
rmSync(out, { recursive: true, force: true })
mkdirSync(stage, { recursive: true })

/** `npm pack`s directory `dir` into `out`; the tarball's path. */
function pack(dir) {
  const json = execFileSync('npm', ['pack', '--json', '--pack-destination', out], { cwd: dir })
  return path.join(out, JSON.parse(json.toString())[0].filename)
}

const tarballs = []
const optional = {}
for (const dir of platformDirs()) {
  const pkg = JSON.parse(readFileSync(path.join(here, 'npm', dir, 'package.json'), 'utf8'))
  if (pkg.version !== main.version) {
    fail(`npm/${dir}/package.json is version ${pkg.version}, the main package ${main.version}: run 'npx napi version'`)
  }
  const addon = path.join(here, pkg.main)
  if (!existsSync(addon)) {
    // Only the platform this runs on can be packed here; say which one is missing.
    fail(`no ${pkg.main} here: build it first (npm run build) on ${dir}`)
  }
  const to = path.join(stage, dir)
  cpSync(path.join(here, 'npm', dir), to, { recursive: true })
  copyFileSync(addon, path.join(to, pkg.main))
  // Debug line tables are most of the release addon's size; users' stack traces stop at the
  // JavaScript boundary anyway.
  execFileSync('strip', ['--strip-unneeded', path.join(to, pkg.main)])
  tarballs.push(pack(to))
  optional[pkg.name] = pkg.version
}

const to = path.join(stage, 'piecestore')
mkdirSync(to)
// No install script: the addon comes in the platform package (install.js builds one from a
// source checkout only, and npm asks users to approve packages that run install scripts).
const files = main.files.filter((f) => !f.includes('*') && f !== 'install.js')
for (const file of files) {
  copyFileSync(path.join(here, file), path.join(to, file))
}
const published = { ...main, files, optionalDependencies: optional }
delete published.devDependencies
delete published.scripts
writeFileSync(path.join(to, 'package.json'), JSON.stringify(published, null, 2) + '\n')
tarballs.push(pack(to))
rmSync(stage, { recursive: true, force: true })
console.log(tarballs.join('\n'))

/** The platform directories under npm/, one per `napi.targets` entry. */
function platformDirs() {
  const names = {
    'x86_64-unknown-linux-gnu': 'linux-x64-gnu',
    'aarch64-unknown-linux-gnu': 'linux-arm64-gnu',
    'x86_64-apple-darwin': 'darwin-x64',
    'aarch64-apple-darwin': 'darwin-arm64',
    'x86_64-pc-windows-msvc': 'win32-x64-msvc',
  }
  return main.napi.targets.map((t) => names[t] ?? fail(`no npm directory name known for target ${t}`))
}

function fail(message) {
  console.error(`pack: ${message}`)
  process.exit(1)
}
