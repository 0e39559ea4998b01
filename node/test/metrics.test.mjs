// Operation metrics: the Prometheus text of metrics() and metricsSummary(), on memory and a
// local directory, and { metrics: false }.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { inspect } from 'node:util'

import { PieceStore } from '../index.js'
import { rejection, tempDir } from './helpers.mjs'

const OPS = ['put', 'get', 'get_range', 'head', 'delete', 'list']

function openStore(kind, options) {
  if (kind === 'memory') return new PieceStore('memory://', options)
  return new PieceStore(path.join(tempDir(), 'pieces'), options)
}

const samples = (text) => text.split('\n').filter((l) => l && !l.startsWith('#'))
const labels = (kind, op, shard = 0) => `backend="${kind}",shard="${shard}",op="${op}"`

for (const kind of ['memory', 'file']) {
  test(`${kind}: counts, bytes and errors`, async () => {
    const store = openStore(kind)
    await store.put('1_s0', 'hello')
    await store.put('2_s0', Buffer.from('abc'))
    await store.put('3_s0', new Uint8Array(0))
    assert.equal((await store.get('1_s0')).toString(), 'hello')
    assert.equal((await store.get('2_s0')).toString(), 'abc')
    assert.equal((await rejection(store.get('9_s0'))).code, 'PIECE_NOT_FOUND')
    assert.equal((await store.getRange('1_s0', 1, 2)).toString(), 'el')

    const text = store.metrics()
    assert.equal(typeof text, 'string')
    const has = (line) => assert.ok(text.includes(line + '\n'), `missing: ${line}`)
    has(`piecestore_operations_total{${labels(kind, 'put')}} 3`)
    has(`piecestore_operations_total{${labels(kind, 'get')}} 3`)
    has(`piecestore_operations_total{${labels(kind, 'get_range')}} 1`)
    has(`piecestore_operations_total{${labels(kind, 'delete')}} 0`)
    has(`piecestore_operation_errors_total{${labels(kind, 'get')},kind="PIECE_NOT_FOUND"} 1`)
    has(`piecestore_operation_bytes_total{${labels(kind, 'put')}} 8`)
    has(`piecestore_operation_bytes_total{${labels(kind, 'get')}} 8`)
    has(`piecestore_operation_bytes_total{${labels(kind, 'get_range')}} 2`)
    has(`piecestore_operation_duration_seconds_bucket{${labels(kind, 'put')},le="+Inf"} 3`)
    has(`piecestore_operation_duration_seconds_count{${labels(kind, 'get')}} 3`)

    const summary = store.metricsSummary()
    assert.deepEqual(summary.map((m) => [m.shard, m.op]), OPS.map((op) => [0, op]))
    const byOp = Object.fromEntries(summary.map((m) => [m.op, m]))
    assert.ok(summary.every((m) => m.backend === kind))
    const { put, get, get_range: range, delete: del } = byOp
    assert.deepEqual([put.count, put.bytes, put.errors], [3, 8, {}])
    assert.deepEqual([get.count, get.bytes, get.errors], [3, 8, { PIECE_NOT_FOUND: 1 }])
    assert.deepEqual([range.count, range.bytes], [1, 2])
    for (const m of [put, get]) {
      assert.ok(m.latencySumSeconds > 0)
      assert.ok(m.p50Seconds > 0 && m.p50Seconds <= m.p99Seconds && Number.isFinite(m.p99Seconds))
    }
    assert.deepEqual([del.count, del.bytes, del.errors], [0, 0, {}])
    assert.deepEqual([del.latencySumSeconds, del.p50Seconds, del.p99Seconds], [0, null, null])
    await store.close()
  })

  test(`${kind}: { metrics: false } keeps none`, async () => {
    for (const options of [{ metrics: false }, { Metrics: false }, { METRICS: false }]) {
      const store = openStore(kind, options)
      await store.put('1_s0', 'hello')
      await store.get('1_s0')
      await rejection(store.get('9_s0'))
      const text = store.metrics()
      assert.deepEqual(samples(text), [], JSON.stringify(options))
      assert.match(text, /^# TYPE piecestore_operations_total counter$/m)
      assert.deepEqual(store.metricsSummary(), [])
      await store.close()
    }
  })
}

// The core reports latency percentiles as histogram bucket bounds (it keeps no samples): each
// is the `le` bound of the first bucket of metrics() whose cumulative count reaches the rank,
// a power of two microseconds, and index.d.ts says so.
test('p50Seconds and p99Seconds are the upper bounds of the buckets holding them', async () => {
  const store = openStore('file')
  for (let i = 0; i < 50; i++) await store.put(`${i}_s0`, Buffer.alloc(100 * i, i))
  for (let i = 0; i < 50; i++) await store.get(`${i}_s0`)
  await rejection(store.get('99_s0'))
  const text = samples(store.metrics())
  const checked = store.metricsSummary().filter((m) => m.count > 0)
  assert.deepEqual(checked.map((m) => m.op).sort(), ['get', 'put'])
  for (const m of checked) {
    const prefix = `piecestore_operation_duration_seconds_bucket{${labels('file', m.op)},le="`
    const buckets = text
      .filter((l) => l.startsWith(prefix))
      .map((l) => [l.slice(prefix.length, l.indexOf('"', prefix.length)), Number(l.split(' ').pop())])
    const total = buckets.at(-1)[1]
    assert.equal(total, m.count)
    for (const [q, got] of [[0.5, m.p50Seconds], [0.99, m.p99Seconds]]) {
      const rank = Math.max(1, Math.ceil(q * total))
      const [le] = buckets.find(([, n]) => n >= rank)
      assert.equal(got, le === '+Inf' ? Infinity : Number(le), `${m.op} p${q * 100}`)
      const micros = Math.round(got * 1e6)
      assert.ok(Number.isFinite(got) && micros > 0 && (micros & (micros - 1)) === 0, `${got} s is not 2^n µs`)
    }
  }
  await store.close()
  const dts = readFileSync(new URL('../index.d.ts', import.meta.url), 'utf8')
  const doc = dts.slice(dts.indexOf('export interface OpMetrics'))
  for (const field of ['p50Seconds', 'p99Seconds']) {
    const comment = doc.slice(0, doc.indexOf(`  ${field}:`)).split('/**').pop().replace(/[\s*]+/g, ' ')
    assert.match(comment, /upper bound of the bucket holding it/, `${field}: ${comment}`)
  }
})

test('the file backend counts heads only for head and exists', async () => {
  // (On a memory store, get and getRange probe the piece's size with a head first; see the
  // memory test below.)
  const store = openStore('file')
  await store.put('1_s0', 'x')
  await store.get('1_s0')
  await store.head('1_s0')
  assert.equal(await store.exists('9_s0'), false)
  const head = store.metricsSummary().find((m) => m.op === 'head')
  assert.deepEqual([head.count, head.errors], [2, { PIECE_NOT_FOUND: 1 }])
  await store.close()
})

test('memory: gets are not counted as heads', async () => {
  const store = openStore('memory')
  await store.put('1_s0', 'x')
  await store.get('1_s0')
  await rejection(store.get('9_s0'))
  const head = store.metricsSummary().find((m) => m.op === 'head')
  assert.deepEqual([head.count, head.errors], [0, {}])
  const get = store.metricsSummary().find((m) => m.op === 'get')
  assert.deepEqual([get.count, get.errors], [2, { PIECE_NOT_FOUND: 1 }])
  await store.close()
})

test('shards are labelled; a config object can turn metrics off', async () => {
  const dir = tempDir()
  const store = new PieceStore(`${dir}/s-%d`, { shards: 3 })
  const keys = Array.from({ length: 30 }, (_, i) => `${i}_s0`)
  await store.putMany(keys.map((k) => [k, Buffer.alloc(10, 1)]))
  const perShard = [0, 0, 0]
  for (const k of keys) perShard[store.shardOf(k)]++
  const text = store.metrics()
  const summary = store.metricsSummary()
  assert.equal(summary.length, 3 * OPS.length)
  perShard.forEach((n, shard) => {
    assert.ok(text.includes(`piecestore_operations_total{${labels('file', 'put', shard)}} ${n}\n`))
    const put = summary.find((m) => m.shard === shard && m.op === 'put')
    assert.deepEqual([put.count, put.bytes], [n, 10 * n])
  })
  const listed = []
  for await (const info of store.list()) listed.push(info.key)
  assert.equal(listed.length, 30)
  const lists = store.metricsSummary().filter((m) => m.op === 'list')
  assert.deepEqual(lists.map((m) => m.count), [1, 1, 1])
  await store.close()

  const off = new PieceStore({ Store: { BucketURL: 'memory://' }, Backend: { Metrics: false } })
  await off.put('1_s0', 'x')
  assert.deepEqual(off.metricsSummary(), [])
})

test('snapshots; each store has its own counters; metrics outlive close', async () => {
  const store = openStore('memory')
  await store.put('1_s0', 'a')
  const before = store.metricsSummary()
  await store.put('2_s0', 'bc')
  const put = store.metricsSummary().find((m) => m.op === 'put')
  assert.deepEqual([put.count, put.bytes], [2, 3])
  assert.equal(before.find((m) => m.op === 'put').count, 1)
  const other = openStore('memory')
  assert.ok(other.metricsSummary().every((m) => m.count === 0))
  await store.close()
  assert.ok(store.metrics().includes(`piecestore_operations_total{${labels('memory', 'put')}} 2\n`))
})

// Puts in flight from JavaScript share write groups on the default (packed) local store: the
// first poll of a put happens on the event loop, which must not wait there for the disk, so
// the puts issued meanwhile join the next group instead of each waiting its turn.
test('file: puts in flight share write groups and do not block the event loop', async () => {
  const store = new PieceStore(path.join(tempDir(), 'pieces'))
  await store.put('warm_s0', 'open the store (its index) first')
  const n = 200
  const data = Buffer.alloc(4096, 7)
  const puts = Array.from({ length: n }, (_, i) => store.put(`${i}_s0`, data))
  // A put is durable only after an fdatasync: one that came back already settled wrote the
  // disk on the event loop. (Whether a timer gets to run meanwhile depends on the machine's
  // speed: a fast disk can finish every put before the event loop's next turn.)
  const settled = puts.filter((p) => !inspect(p).includes('<pending>')).length
  assert.equal(settled, 0, `${settled} of ${n} puts settled before returning: the event loop waited`)
  await Promise.all(puts)
  const value = (name) => samples(store.metrics())
    .filter((l) => l.startsWith(`${name}{`))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0)
  const groups = value('piecestore_pack_writes_total')
  const records = value('piecestore_pack_write_records_total')
  assert.equal(records, n + 1, 'every put is one record')
  // (How many share a group depends on the disk's and the machine's speed: on a busy CI
  // machine 200 puts took 59 groups. One group each would be 200.)
  assert.ok(groups * 2 <= n, `${n} puts in flight took ${groups} write groups: they did not share`)
  for (const i of [0, n - 1]) assert.ok((await store.get(`${i}_s0`)).equals(data))
  store.close()
})

test('clearCache() empties both tiers; false without a cache', async () => {
  const dir = tempDir()
  const opts = { cacheMemory: '1MiB', cacheDisk: path.join(dir, 'cache') }
  const store = new PieceStore(path.join(dir, 'pieces'), opts)
  await store.put('1_s0', 'cached piece')
  await store.get('1_s0')
  assert.equal((await store.get('1_s0')).toString(), 'cached piece')
  assert.equal(await store.clearCache(), true)
  assert.equal((await store.get('1_s0')).toString(), 'cached piece')
  let text = store.metrics()
  assert.ok(text.includes('piecestore_cache_hits_total{tier="memory"} 1'), text)
  assert.ok(text.includes('piecestore_cache_fetches_total 2'), text)
  assert.equal(await store.clearCache(), true)
  await store.close()
  const again = new PieceStore(path.join(dir, 'pieces'), { cacheMemory: 0, cacheDisk: opts.cacheDisk })
  assert.equal((await again.get('1_s0')).toString(), 'cached piece')
  text = again.metrics()
  assert.ok(!text.includes('piecestore_cache_hits_total{tier="disk"} 1'), text)
  assert.ok(text.includes('piecestore_cache_fetches_total 1'), text)
  await again.close()
  const plain = new PieceStore(path.join(dir, 'pieces'))
  assert.equal(await plain.clearCache(), false)
  await plain.close()
})

test('cache options, and cache hits in metrics()', async () => {
  const dir = tempDir()
  const store = new PieceStore(path.join(dir, 'pieces'), {
    cacheMemory: '1MiB', cacheDisk: path.join(dir, 'cache'), cacheDiskSize: 64 << 20,
  })
  await store.put('1_s0', 'cached piece')
  assert.equal((await store.get('1_s0')).toString(), 'cached piece')
  assert.equal((await store.get('1_s0')).toString(), 'cached piece')
  const text = store.metrics()
  assert.ok(text.includes('piecestore_cache_hits_total{tier="memory"} 1'), text)
  assert.ok(text.includes('piecestore_cache_fetches_total 1'), text)
  assert.match(store.toString(), /PieceStore\(/)
  await store.close()
  const again = new PieceStore(path.join(dir, 'pieces'), { cacheMemory: 0, cacheDisk: path.join(dir, 'cache') })
  assert.equal((await again.get('1_s0')).toString(), 'cached piece')
  assert.ok(again.metrics().includes('piecestore_cache_hits_total{tier="disk"} 1'))
  assert.throws(() => new PieceStore('memory://', { cacheAdmit: 'sometimes' }), (e) => e.code === 'CONFIG')
})
