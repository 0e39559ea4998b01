// The README's Node examples and node/examples run as tests; index.d.ts is checked with
// `tsc --strict` against examples/typed.ts, and must reject a wrong program.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { readFileSync, writeFileSync, rmSync } from 'node:fs'
import path from 'node:path'

import { ROOT, tempDir } from './helpers.mjs'

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

/** `[name, [type members]]` for each field of `StoreOptions` in index.d.ts. */
function storeOptionTypes() {
  const dts = readFileSync(path.join(NODE_DIR, 'index.d.ts'), 'utf8')
  const body = dts.match(/export interface StoreOptions \{([\s\S]*?)\n\}/)
  assert.ok(body, 'index.d.ts declares StoreOptions')
  return [...body[1].matchAll(/^ {2}(\w+)\?: (.+)$/gm)].map((m) => [m[1], m[2].split('|').map((t) => t.trim())])
}

// The JavaScript type each member of a declared type stands for.
const category = (member) => (/^(['"]).*\1$/.test(member) ? 'string' : member)

// Each option's TS type must match what the runtime accepts: every value of the declared type
// is accepted (literal types stand for themselves; plain `string` and `number` options take a
// valid sample below), and a value of any other type is a TypeError that names the option and
// says what it accepts.
test('StoreOptions in index.d.ts types every option as the runtime accepts it', async () => {
  const { PieceStore } = await import('../index.js')
  const dir = tempDir()
  const duration = '1500ms'
  const strings = {
    bucketUrl: 'memory://',
    accessKey: 'AKIDEXAMPLE',
    secretKey: 'secret-example',
    sessionToken: 'token-example',
    region: 'us-east-1',
    endpoint: 'http://127.0.0.1:9',
    indexDir: dir,
    indexUrl: 'postgres://user@127.0.0.1:9/pieces',
    minRetryDelay: duration,
    maxRetryDelay: duration,
    retryTimeout: duration,
    requestTimeout: duration,
    connectTimeout: duration,
    getTimeout: duration,
    putTimeout: duration,
    deleteTimeout: duration,
    listTimeout: duration,
    packMaxAge: duration,
    gcGrace: duration,
    gcInterval: duration,
    packThreshold: '512KiB',
    packTargetSize: '64MiB',
    cacheMemory: '1MiB',
    cacheDisk: path.join(dir, 'cache'),
    cacheDiskSize: '64MiB',
    cacheMaxPiece: '1MiB',
  }
  const numbers = {
    shards: 1, gcGarbageRatio: 0.25, packThreshold: 4096, packTargetSize: 1 << 20,
    cacheMemory: 1 << 20, cacheDiskSize: 1 << 26, cacheMaxPiece: 1 << 20,
  }
  const wrong = { boolean: true, number: 7, string: 'x', object: {} }
  // The store a value is tried on (no I/O happens): an S3-family storage needs an S3 URL,
  // and credentials (here: none needed).
  const base = (name, value) =>
    name === 'storage' && !['file', 'memory'].includes(value)
      ? ['http://127.0.0.1:9/pieces', { noSignRequest: true }]
      : ['memory://', {}]
  const fields = storeOptionTypes()
  assert.ok(fields.length > 20, `only ${fields.length} typed options`)
  for (const [name, members] of fields) {
    const declared = new Set(members.map(category))
    for (const c of declared) assert.ok(['boolean', 'number', 'string'].includes(c), `${name}: unexpected type ${c}`)
    for (const member of members) {
      let values
      if (member === 'boolean') values = [true, false]
      else if (member === 'number') values = [numbers[name] ?? 1]
      else if (member === 'string') values = [strings[name]]
      else values = [member.slice(1, -1)]
      assert.ok(values[0] !== undefined, `no sample string for option ${name}: add one`)
      for (const value of values) {
        const what = `${name}: ${JSON.stringify(value)} (${member})`
        let store
        const [url, context] = base(name, value)
        assert.doesNotThrow(() => { store = new PieceStore(url, { ...context, [name]: value }) }, what)
        await store.close()
      }
    }
    for (const [type, value] of Object.entries(wrong)) {
      if (declared.has(type)) continue
      assert.throws(
        () => new PieceStore('memory://', { [name]: value }),
        (e) => {
          assert.ok(e instanceof TypeError, `${name} = ${type}: ${e}`)
          assert.ok(e.message.includes(`option ${name} must be `), e.message)
          assert.ok(e.message.endsWith(`, got ${type}`), e.message)
          for (const c of declared) assert.ok(e.message.includes(c), `${e.message} does not say it takes a ${c}`)
          return true
        },
        `${name} = ${type}`,
      )
    }
  }
})
