// The packages a user installs without Rust: scripts/pack.mjs packs the platform package
// (the stripped addon) and the main package (the loader, naming the platform package in
// optionalDependencies); a fresh project installs both tarballs with npm, with no cargo or
// rustc on PATH, and stores and reads pieces through the addon npm put in node_modules.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'

import { ROOT } from './helpers.mjs'

const NODE_DIR = path.join(ROOT, 'node')

/** PATH without the directories holding cargo or rustc. */
function pathWithoutRust() {
  return process.env.PATH.split(path.delimiter)
    .filter((d) => d && !existsSync(path.join(d, 'cargo')) && !existsSync(path.join(d, 'rustc')))
    .join(path.delimiter)
}

test('the packed platform and main packages install and run with no Rust on PATH', { timeout: 300_000 }, (t) => {
  const work = mkdtempSync(path.join(tmpdir(), 'piecestore-npm-'))
  t.after(() => rmSync(work, { recursive: true, force: true }))
  const out = path.join(work, 'tarballs')
  const tarballs = execFileSync(process.execPath, [path.join(NODE_DIR, 'scripts', 'pack.mjs'), out])
    .toString().trim().split('\n')
  assert.equal(tarballs.length, 2, tarballs.join(', '))
  const [platform, main] = tarballs
  assert.match(path.basename(platform), /^piecestore-linux-x64-gnu-\d+\.\d+\.\d+\.tgz$/)
  assert.match(path.basename(main), /^piecestore-\d+\.\d+\.\d+\.tgz$/)
  // The main package carries no addon and no install script; the platform package a stripped
  // addon (the unstripped release build is several times larger).
  const mainFiles = execFileSync('tar', ['tzf', main]).toString().split('\n').filter(Boolean).sort()
  assert.deepEqual(mainFiles, ['package/index.d.ts', 'package/index.js', 'package/package.json'])
  const mainPkg = JSON.parse(execFileSync('tar', ['xzOf', main, 'package/package.json']).toString())
  assert.equal(mainPkg.scripts, undefined)
  assert.deepEqual(mainPkg.optionalDependencies, { 'piecestore-linux-x64-gnu': mainPkg.version })
  const built = statSync(path.join(NODE_DIR, 'piecestore.linux-x64-gnu.node')).size
  const platformFiles = execFileSync('tar', ['tzvf', platform]).toString()
  const addonLine = platformFiles.split('\n').find((l) => l.endsWith('package/piecestore.linux-x64-gnu.node'))
  assert.ok(addonLine, platformFiles)
  const packedSize = Number(addonLine.trim().split(/\s+/)[2])
  assert.ok(packedSize > 0 && packedSize < built, `packed addon ${packedSize} B, built ${built} B`)

  const project = path.join(work, 'app')
  const env = { ...process.env, PATH: pathWithoutRust() }
  assert.throws(() => execFileSync('cargo', ['--version'], { env, stdio: 'ignore' }), 'cargo is still on PATH')
  mkdirSync(project)
  execFileSync('npm', ['init', '-y'], { cwd: project, env, stdio: 'ignore' })
  execFileSync('npm', ['install', '--no-audit', '--no-fund', platform, main], { cwd: project, env, stdio: 'pipe' })
  const dir = path.join(work, 'store')
  writeFileSync(path.join(project, 'app.mjs'), `
    import { createRequire } from 'node:module'
    import { PieceStore } from 'piecestore'
    const require = createRequire(import.meta.url)
    const store = new PieceStore(${JSON.stringify(`file://${dir}`)})
    await store.put('7_s0', Buffer.from('from a packed install'))
    const got = await store.get('7_s0')
    const keys = []
    for await (const info of store.list('')) keys.push(info.key)
    await store.close()
    console.log(JSON.stringify({ got: got.toString(), keys, addon: require.resolve('piecestore-linux-x64-gnu') }))
  `)
  const result = JSON.parse(execFileSync(process.execPath, ['app.mjs'], { cwd: project, env }).toString())
  assert.equal(result.got, 'from a packed install')
  assert.deepEqual(result.keys, ['7_s0'])
  assert.equal(result.addon, path.join(project, 'node_modules', 'piecestore-linux-x64-gnu', 'piecestore.linux-x64-gnu.node'))
  // The piece is on the disk, where another process finds it.
  const again = execFileSync(process.execPath, ['--input-type=module', '-e', `
    import { PieceStore } from 'piecestore'
    const store = new PieceStore(${JSON.stringify(`file://${dir}`)})
    process.stdout.write(await store.get('7_s0'))`], { cwd: project, env }).toString()
  assert.equal(again, 'from a packed install')
})
