// Concurrency from the user's side: many promises at once, a responsive event loop during big
// puts, stores used from worker threads at once, and a clean process exit with work in flight.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { Worker } from 'node:worker_threads'
import { execFileSync } from 'node:child_process'
import cluster from 'node:cluster'
import { writeFileSync } from 'node:fs'
import path from 'node:path'

import { PieceStore } from '../index.js'
import { BACKENDS, open, pattern, tempDir } from './helpers.mjs'

for (const kind of BACKENDS) {
  test(`${kind}: 1,000 concurrent gets with Promise.all`, { timeout: 120_000 }, async (t) => {
    const store = await open(t, kind)
    const keys = Array.from({ length: 100 }, (_, i) => `${i}_s0`)
    await store.putMany(keys.map((k, i) => [k, pattern(4096, i + 1)]))
    const wanted = Array.from({ length: 1000 }, (_, i) => i % 100)
    const got = await Promise.all(wanted.map((i) => store.get(keys[i])))
    got.forEach((b, j) => assert.ok(b.equals(pattern(4096, wanted[j] + 1)), `get ${j}`))
    await store.close()
  })

  test(`${kind}: the event loop keeps running during a 64 MiB put and get`, { timeout: 120_000 }, async (t) => {
    const store = await open(t, kind)
    const data = pattern(64 << 20)
    let ticks = 0
    const timer = setInterval(() => ticks++, 1)
    // Gaps between ticks show a blocked loop; measure the longest one while the put runs.
    let last = performance.now()
    let longest = 0
    const probe = setInterval(() => {
      const now = performance.now()
      longest = Math.max(longest, now - last)
      last = now
    }, 1)
    const started = performance.now()
    await store.put('big_s0', data)
    const got = await store.get('big_s0')
    const took = performance.now() - started
    clearInterval(timer)
    clearInterval(probe)
    assert.ok(got.equals(data))
    // Not a timing assertion: the loop must have run at all while the work was in flight, and
    // no single stall may take most of the operation (the work ran elsewhere).
    assert.ok(ticks > 0, `no timer tick in ${took.toFixed(0)} ms`)
    assert.ok(longest < Math.max(took * 0.5, 50), `event loop stalled ${longest.toFixed(1)} ms of ${took.toFixed(0)} ms`)
    await store.close()
  })
}

test('stores used from worker threads at once', { timeout: 120_000 }, async () => {
  const dir = tempDir()
  const addon = path.resolve(import.meta.dirname ?? path.dirname(new URL(import.meta.url).pathname), '..', 'index.js')
  const code = `
    const { workerData, parentPort } = require('node:worker_threads')
    const { PieceStore } = require(workerData.addon)
    ;(async () => {
      const store = new PieceStore(workerData.dir)
      const mem = new PieceStore('memory://')
      // Each worker's environment gives its stores their own get and put, as the main thread's.
      if (!Object.hasOwn(mem, 'get') || !Object.hasOwn(store, 'put')) throw new Error('no own get/put in a worker')
      for (let i = 0; i < 200; i++) {
        const key = workerData.id + '_s' + i
        const data = Buffer.alloc(1000 + i, workerData.id)
        await store.put(key, data)
        await mem.put(key, data)
        const got = await store.get(key)
        if (!got.equals(data) || !(await mem.get(key)).equals(data)) throw new Error('mismatch at ' + key)
      }
      parentPort.postMessage('done')
    })().catch((e) => parentPort.postMessage('error: ' + e.code + ' ' + e.message))
  `
  const run = (id) =>
    new Promise((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { id, dir, addon } })
      w.on('message', resolve)
      w.on('error', reject)
    })
  const results = await Promise.all([1, 2, 3, 4].map(run))
  assert.deepEqual(results, ['done', 'done', 'done', 'done'])
  // The main thread's store sees what the workers wrote.
  const store = new PieceStore(dir)
  let n = 0
  for await (const info of store.list()) {
    assert.ok(info.size >= 1000)
    n++
  }
  assert.equal(n, 800)
})

test('a worker terminated mid-operation does not take the process down', { timeout: 120_000 }, async () => {
  const addon = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'index.js')
  const code = `
    const { workerData, parentPort } = require('node:worker_threads')
    const { PieceStore } = require(workerData.addon)
    const store = new PieceStore(workerData.dir)
    const big = Buffer.alloc(16 << 20, 1)
    for (let i = 0; i < 8; i++) store.put('w_s' + i, big)
    parentPort.postMessage('started')
  `
  for (let round = 0; round < 5; round++) {
    const w = new Worker(code, { eval: true, workerData: { addon, dir: tempDir() } })
    await new Promise((resolve) => w.once('message', resolve))
    await w.terminate()
  }
  // Still usable here.
  const store = new PieceStore('memory://')
  await store.put('1_s0', 'alive')
  assert.equal((await store.get('1_s0')).toString(), 'alive')
})

test('cluster: worker processes share one packed store', { timeout: 120_000 }, async () => {
  const addon = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'index.js')
  const dir = path.join(tempDir(), 'pieces')
  const primary = new PieceStore(dir) // packed: the default for a directory
  await primary.put('primary_s0', 'from the primary')
  const script = path.join(tempDir(), 'worker.cjs')
  writeFileSync(script, `
    const { PieceStore } = require(${JSON.stringify(addon)})
    const id = Number(process.env.WORKER)
    const store = new PieceStore(${JSON.stringify(dir)})
    ;(async () => {
      for (let j = 0; j < 40; j++) await store.put(id + '_s' + j, 'worker ' + id + ' piece ' + j)
      // Same bytes from every worker: Ok for all. Other bytes: exactly one wins.
      await store.put('shared_s0', 'the same bytes')
      let won = 1
      try { await store.put('contested_s0', 'worker ' + id) } catch (e) {
        if (e.code !== 'PIECE_EXISTS') throw e
        won = 0
      }
      await store.close()
      process.send({ won }, () => process.exit(0))
    })().catch((e) => { console.error(e); process.exit(1) })
  `)
  cluster.setupPrimary({ exec: script, silent: false })
  const results = await Promise.all(
    [1, 2, 3, 4].map(
      (id) =>
        new Promise((resolve, reject) => {
          const w = cluster.fork({ WORKER: String(id) })
          let msg = null
          w.on('message', (m) => { msg = m })
          w.on('exit', (code) => (code === 0 && msg ? resolve(msg) : reject(new Error(`worker ${id} exited with ${code}`))))
        }),
    ),
  )
  assert.equal(results.reduce((n, r) => n + r.won, 0), 1, 'exactly one worker wins the contested key')
  for (let id = 1; id <= 4; id++) {
    for (let j = 0; j < 40; j++) {
      assert.equal((await primary.get(`${id}_s${j}`)).toString(), `worker ${id} piece ${j}`)
    }
  }
  assert.equal((await primary.get('shared_s0')).toString(), 'the same bytes')
  assert.match((await primary.get('contested_s0')).toString(), /^worker [1-4]$/)
  assert.equal((await primary.get('primary_s0')).toString(), 'from the primary')
  let n = 0
  for await (const _ of primary.list()) n++
  assert.equal(n, 4 * 40 + 3)
  await primary.close()
})

test('the process exits cleanly with operations in flight', { timeout: 120_000 }, () => {
  const addon = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..', 'index.js')
  const script = `
    const { PieceStore } = require(${JSON.stringify(addon)})
    const store = new PieceStore(${JSON.stringify(tempDir())})
    const big = Buffer.alloc(8 << 20, 1)
    for (let i = 0; i < 8; i++) store.put('x_s' + i, big).then(() => {}, () => {})
    store.get('x_s0').then(() => {}, () => {})
    process.exitCode = 0
    setImmediate(() => process.exit(0))
  `
  for (let i = 0; i < 10; i++) {
    execFileSync(process.execPath, ['-e', script], { stdio: 'pipe', timeout: 60_000 })
  }
})

test('wrong argument types throw at once, before any promise', () => {
  const store = new PieceStore('memory://')
  assert.throws(() => store.put('1_s0', 42))
  assert.throws(() => store.put('1_s0', { length: 3 }))
  assert.throws(() => store.get(42))
  assert.throws(() => store.getMany('1_s0'))
  assert.throws(() => store.putMany([['1_s0']]))
})
