// PieceStore's Node package against the opendal npm package, in one run: memory and local
// files, 4 KiB and 1 MiB, put and get ops/s; plus the Rust core's own 4 KiB latency measured
// in the same run (benches/examples/core_latency.rs), to read off the binding's overhead.
//
// Run (from the repository root):
//   (cd benches/node && npm install) && node benches/node/bench.mjs
import { execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import { PieceStore } from 'piecestore'
import { Operator } from 'opendal'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
const BASE = process.env.PIECESTORE_BENCH_DIR ?? os.tmpdir()
const SIZES = [
  [4 << 10, '4 KiB', 10_000],
  [1 << 20, '1 MiB', 300],
]
const CONCURRENCY = 32

function payload(n) {
  const b = Buffer.allocUnsafe(n)
  for (let i = 0; i < n; i++) b[i] = (i * 31) % 251
  return b
}

// Every directory the run made, removed when it ends (a run writes several GiB).
const made = []
process.on('exit', () => {
  for (const d of made) rmSync(d, { recursive: true, force: true })
})

function dir(tag) {
  const d = mkdtempSync(path.join(BASE, `ps-node-bench-${tag}-`))
  made.push(d)
  return d
}

/** Both libraries behind the same two calls. */
function clients(backend) {
  const out = []
  if (backend === 'memory') {
    out.push(['piecestore', () => { const s = new PieceStore('memory://'); return { put: (k, d) => s.put(k, d), get: (k) => s.get(k) } }])
    out.push(['opendal', () => { const o = new Operator('memory', {}); return { put: (k, d) => o.write(k, d), get: (k) => o.read(k) } }])
  } else {
    // Like with like: one file per piece (pack: false), as opendal writes; then the default
    // (packed) local store, where packing is the point.
    out.push(['piecestore (fsync)', () => { const s = new PieceStore(dir('ps'), { pack: false }); return { put: (k, d) => s.put(k, d), get: (k) => s.get(k) } }])
    out.push(['piecestore (fsync: false)', () => { const s = new PieceStore(dir('psnf'), { fsync: false, pack: false }); return { put: (k, d) => s.put(k, d), get: (k) => s.get(k) } }])
    out.push(['piecestore (packed, the default)', () => { const s = new PieceStore(dir('psp')); return { put: (k, d) => s.put(k, d), get: (k) => s.get(k) } }])
    out.push(['opendal fs', () => { const o = new Operator('fs', { root: dir('od') }); return { put: (k, d) => o.write(k, d), get: (k) => o.read(k) } }])
  }
  return out
}

/** Ops/s of `n` calls one at a time (each awaited: 1 / latency). */
async function sequential(n, op) {
  const t = performance.now()
  for (let i = 0; i < n; i++) await op(i)
  return n / ((performance.now() - t) / 1000)
}

/** Ops/s of `n` calls with `CONCURRENCY` in flight. */
async function concurrent(n, op) {
  let next = 0
  const t = performance.now()
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (next < n) await op(next++)
  }))
  return n / ((performance.now() - t) / 1000)
}

async function measure(make, size, n) {
  const data = payload(size)
  const best = { put: 0, get: 0, putC: 0, getC: 0 }
  for (let round = 0; round < 3; round++) {
    const c = make()
    best.put = Math.max(best.put, await sequential(n, (i) => c.put(`${round}a_s${i}`, data)))
    best.get = Math.max(best.get, await sequential(n, async (i) => {
      const b = await c.get(`${round}a_s${i}`)
      if (b.length !== size) throw new Error(`short read: ${b.length}`)
    }))
    best.putC = Math.max(best.putC, await concurrent(n, (i) => c.put(`${round}b_s${i}`, data)))
    best.getC = Math.max(best.getC, await concurrent(n, (i) => c.get(`${round}b_s${i}`)))
  }
  return best
}

const fmt = (x) => Math.round(x).toLocaleString('en-US')
const us = (opsPerSec) => (1e6 / opsPerSec).toFixed(2)

console.log(`node ${process.version}, ${os.cpus().length} cores; best of 3 rounds; concurrent = ${CONCURRENCY} in flight\n`)
console.log('| backend | size | library | put ops/s | get ops/s | put ops/s (concurrent) | get ops/s (concurrent) |')
console.log('|---|---|---|---:|---:|---:|---:|')
for (const backend of ['memory', 'file']) {
  for (const [size, label, n] of SIZES) {
    for (const [name, make] of clients(backend)) {
      const r = await measure(make, size, n)
      console.log(`| ${backend} | ${label} | ${name} | ${fmt(r.put)} | ${fmt(r.get)} | ${fmt(r.putC)} | ${fmt(r.getC)} |`)
    }
  }
}

// The binding's per-operation latency beside the Rust core's, measured the same way as
// benches/examples/core_latency.rs does (keys built before the clock starts, then a plain
// `await` per call, best of 3 rounds of LATENCY_OPS) on the same kind of store: memory://, and
// a local store with one file per piece (fsync, pack: false) on each side. The Node package
// copies each put's Buffer into the store, so the store holds LATENCY_OPS distinct pieces; the
// like-for-like core run is `copy` mode (it copies too). The no-copy core run, which puts one
// shared buffer 20,000 times and so reads always-cached bytes, is shown beside it.
const LATENCY_OPS = 20_000

async function latencyOf(store, size, n) {
  const data = payload(size)
  let put = Infinity
  let get = Infinity
  for (let round = 0; round < 3; round++) {
    const keys = Array.from({ length: n }, (_, i) => `${round}_s${i}`)
    let t = performance.now()
    for (const k of keys) await store.put(k, data)
    put = Math.min(put, ((performance.now() - t) * 1000) / n)
    t = performance.now()
    for (const k of keys) {
      const b = await store.get(k)
      if (b.length !== size) throw new Error(`short read: ${b.length}`)
    }
    get = Math.min(get, ((performance.now() - t) * 1000) / n)
  }
  return { put, get }
}

function coreLatency(url, mode) {
  const args = ['run', '-q', '--release', '-p', 'piecestore-benches', '--example', 'core_latency', '--', url, '4096', String(LATENCY_OPS)]
  if (mode) args.push(mode)
  return JSON.parse(execFileSync('cargo', args, { cwd: ROOT }).toString())
}

console.log('\n4 KiB latency, one operation at a time: the Node package against the Rust core itself\n')
console.log('| backend | op | Node (µs) | Rust core, copying (µs) | ratio | Rust core, one shared buffer (µs) | ratio |')
console.log('|---|---|---:|---:|---:|---:|---:|')
for (const backend of ['memory', 'file']) {
  const nodeDir = dir('lat')
  const store = backend === 'memory' ? new PieceStore('memory://') : new PieceStore(nodeDir, { pack: false })
  const node = await latencyOf(store, 4096, LATENCY_OPS)
  await store.close()
  rmSync(nodeDir, { recursive: true, force: true })
  const runs = {}
  for (const mode of ['copy', '']) {
    const d = dir('core')
    runs[mode || 'shared'] = coreLatency(backend === 'memory' ? 'memory://' : `file://${d}?pack=false`, mode)
    rmSync(d, { recursive: true, force: true })
  }
  for (const op of ['put', 'get']) {
    const n = node[op]
    const c = runs.copy[`${op}_us`]
    const s = runs.shared[`${op}_us`]
    console.log(`| ${backend}${backend === 'file' ? ' (fsync, pack: false)' : ''} | ${op} | ${n.toFixed(2)} | ${c.toFixed(2)} | ${(n / c).toFixed(2)}× | ${s.toFixed(2)} | ${(n / s).toFixed(2)}× |`)
  }
}
