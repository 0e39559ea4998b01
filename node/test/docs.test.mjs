// The README's Node examples and node/examples run as tests; index.d.ts is checked with
// `tsc --strict` against examples/typed.ts, and must reject a wrong program.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'

import { ROOT } from './helpers.mjs'

const NODE_DIR = path.join(ROOT, 'node')

function readmeBlocks() {
  const readme = readFileSync(path.join(ROOT, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('### Node.js'), readme.indexOf('## What it guarantees'))
  return [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1])
}

/** Runs `code` as an ES module inside the package (so `import 'piecestore'` resolves to it). */
function runModule(code, name) {
  const file = path.join(NODE_DIR, 'test', `.${name}.mjs`)
  writeFileSync(file, code)
  try {
    return execFileSync(process.execPath, [file], { cwd: NODE_DIR, timeout: 60_000 }).toString()
  } finally {
    rmSync(file, { force: true })
  }
}

test('the README has a Node example, and it runs', () => {
  const blocks = readmeBlocks()
  assert.ok(blocks.length >= 1, 'no ```js block in the README Node.js section')
  blocks.forEach((code, i) => {
    const out = runModule(code, `readme-${i}`)
    assert.match(out, /piece bytes bytes/)
    assert.match(out, /PIECE_NOT_FOUND/)
    assert.match(out, /7_s0_p2 7/)
  })
})

test('examples/quickstart.mjs runs', () => {
  const out = execFileSync(process.execPath, ['examples/quickstart.mjs'], { cwd: NODE_DIR, timeout: 60_000 }).toString()
  assert.match(out, /refused: piece "42_s0" already exists/)
  assert.match(out, /read 6 pieces of 4096 bytes/)
  assert.match(out, /deleted 7 pieces/)
})

test('index.d.ts passes tsc --strict on examples/typed.ts, and catches a wrong program', { timeout: 120_000 }, () => {
  const tsc = path.join(NODE_DIR, 'node_modules', 'typescript', 'bin', 'tsc')
  const ok = spawnSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { cwd: NODE_DIR })
  assert.equal(ok.status, 0, ok.stdout.toString() + ok.stderr.toString())
  // The same check must fail on misuse (or it checks nothing).
  const wrong = path.join(NODE_DIR, 'examples', '.wrong.ts')
  writeFileSync(
    wrong,
    "import { PieceStore } from 'piecestore'\n" +
      'async function f(s: PieceStore): Promise<void> {\n' +
      '  const n: number = await s.get(42)\n' +
      "  await s.put('k', 12)\n" +
      '  console.log(n)\n' +
      '}\nvoid f\n',
  )
  try {
    const bad = spawnSync(process.execPath, [tsc, '--strict', '--noEmit', '--module', 'NodeNext', '--moduleResolution', 'NodeNext', '--types', 'node', wrong], { cwd: NODE_DIR })
    const out = bad.stdout.toString()
    assert.notEqual(bad.status, 0, 'tsc accepted a wrong program')
    assert.match(out, /TS2345|TS2322/, out)
    assert.match(out, /\.wrong\.ts\(3,/, out)
    assert.match(out, /\.wrong\.ts\(4,/, out)
  } finally {
    rmSync(wrong, { force: true })
  }
})

// One option table: the runtime's option names (config::OPTION_NAMES, what `set_option`
// accepts) are the source; the typed `StoreOptions` of index.d.ts must name exactly those, so
// a binding's types cannot drift from the runtime (an option added to the core without a typed
// field, or a typed field the core does not know, fails here).
test('StoreOptions in index.d.ts names exactly the runtime options', async () => {
  const { optionNames } = await import('../index.js')
  const dts = readFileSync(path.join(NODE_DIR, 'index.d.ts'), 'utf8')
  const body = dts.match(/export interface StoreOptions \{([\s\S]*?)\n\}/)
  assert.ok(body, 'index.d.ts declares StoreOptions')
  const typed = [...body[1].matchAll(/^ {2}(\w+)\?:/gm)].map((m) => m[1])
  const fold = (n) => n.replace(/[_-]/g, '').toLowerCase()
  const runtime = optionNames().map(fold).sort()
  assert.ok(runtime.length > 20, `only ${runtime.length} runtime options`)
  assert.deepEqual(typed.map(fold).sort(), runtime)
})
