// Round trips on memory, a local directory and a real S3 server (moto, 4 buckets).
import { test } from 'node:test'
import assert from 'node:assert/strict'

import { PieceStore, segmentKey, ecKey, parseKey, validateKey, MAX_KEY_LEN, optionNames } from '../index.js'
import { BACKENDS, open, pattern, rejection, s3Url, server, tempDir } from './helpers.mjs'

for (const kind of BACKENDS) {
  test(`${kind}: round trips of 0 B to 64 MiB`, { timeout: 120_000 }, async (t) => {
    const store = await open(t, kind)
    for (const [i, n] of [0, 1, 4096, 1 << 20, 64 << 20].entries()) {
      const data = pattern(n, i + 1)
      const key = `${i}_s0`
      await store.put(key, data)
      const got = await store.get(key)
      assert.ok(Buffer.isBuffer(got), 'get returns a Buffer')
      assert.equal(got.length, n)
      assert.ok(got.equals(data), `${n} bytes differ`)
      const info = await store.head(key)
      assert.equal(info.key, key)
      assert.equal(info.size, n)
      assert.equal(typeof info.crc32c, 'number')
      assert.ok(info.lastModified instanceof Date)
      assert.ok(Math.abs(info.lastModified.getTime() - Date.now()) < 10 * 60_000)
    }
    await store.close()
  })

  test(`${kind}: ranges`, { timeout: 60_000 }, async (t) => {
    const store = await open(t, kind)
    const data = pattern(10_000)
    await store.put('7_s1', data)
    assert.ok((await store.getRange('7_s1', 0, 10_000)).equals(data))
    assert.ok((await store.getRange('7_s1', 1234, 100)).equals(data.subarray(1234, 1334)))
    assert.equal((await store.getRange('7_s1', 10_000, 0)).length, 0)
    assert.ok((await store.getRange('7_s1', 9_999, 1)).equals(data.subarray(9_999)))
    for (const [off, len] of [[9_999, 2], [10_001, 0], [-1, 1], [0, -5], [0.5, 1], [Number.NaN, 1], [0, Infinity]]) {
      const e = await rejection(store.getRange('7_s1', off, len))
      assert.equal(e.code, 'INVALID_RANGE', `${off}+${len}: ${e.message}`)
      assert.match(e.message, /7_s1/)
    }
    await store.close()
  })

  test(`${kind}: inputs, overwrite, exists, delete, list, batches`, { timeout: 60_000 }, async (t) => {
    const store = await open(t, kind)
    await store.put('1_s0', 'héllo')
    assert.equal((await store.get('1_s0')).toString('utf8'), 'héllo')
    await store.put('2_s0', new Uint8Array([1, 2, 3]))
    assert.deepEqual([...(await store.get('2_s0'))], [1, 2, 3])
    const view = new Uint8Array(pattern(100_000).buffer, 10, 70_000) // a view into a larger buffer
    await store.put('3_s0', view)
    assert.ok((await store.get('3_s0')).equals(Buffer.from(view)))
    // Same bytes again: fine. Different bytes: PIECE_EXISTS, unless overwrite.
    await store.put('1_s0', 'héllo')
    assert.equal((await rejection(store.put('1_s0', 'other'))).code, 'PIECE_EXISTS')
    await store.put('1_s0', 'other', { overwrite: true })
    assert.equal((await store.get('1_s0')).toString(), 'other')

    assert.equal(await store.exists('1_s0'), true)
    assert.equal(await store.exists('99_s0'), false)
    await store.delete('1_s0')
    await store.delete('1_s0') // idempotent
    assert.equal(await store.exists('1_s0'), false)

    await store.putMany([['10_s0', 'a'], ['10_s1', Buffer.from('bb')]])
    await store.putMany(new Map([['11_s0', 'ccc']]))
    await store.putMany({ '12_s0': new Uint8Array(4) })
    const got = await store.getMany(['10_s0', '10_s1', '11_s0', '12_s0'])
    assert.deepEqual(got.map((b) => b.length), [1, 2, 3, 4])
    assert.equal((await rejection(store.getMany(['10_s0', 'missing_s0']))).code, 'PIECE_NOT_FOUND')

    const listed = []
    for await (const info of store.list('1')) listed.push(info)
    assert.deepEqual(listed.map((i) => i.key).sort(), ['10_s0', '10_s1', '11_s0', '12_s0'])
    assert.deepEqual(listed.map((i) => i.size).sort(), [1, 2, 3, 4])
    const all = []
    for await (const info of store.list()) all.push(info.key)
    assert.deepEqual(all.sort(), ['10_s0', '10_s1', '11_s0', '12_s0', '2_s0', '3_s0'])
    // Breaking out of the loop early is fine.
    for await (const info of store.list()) {
      assert.ok(info.key)
      break
    }

    const summary = await store.deletePrefix('1')
    assert.deepEqual(summary, { pieces: 4, bytes: 10 })
    assert.equal(await store.exists('10_s0'), false)
    assert.equal(await store.exists('2_s0'), true)
    await store.close()
  })
}

test('a Buffer from get never aliases a stored piece', async () => {
  const store = new PieceStore('memory://')
  const src = pattern(200_000)
  await store.put('1_s0', src)
  src.fill(0) // the caller reuses its buffer once the put resolved
  const a = await store.get('1_s0')
  assert.ok(a.equals(pattern(200_000)), 'a later write to the put buffer changed the piece')
  a.fill(1) // and writes into what get returned
  assert.ok((await store.get('1_s0')).equals(pattern(200_000)), 'a write to a got Buffer changed the piece')
})

test('small pieces come as slices of a shared slab that no write or transfer can spoil', async () => {
  const store = new PieceStore('memory://')
  // Sizes across the pooled limit (4 KiB), odd ones to test the alignment of each slice.
  const sizes = Array.from({ length: 60 }, (_, i) => [1, 7, 100, 1000, 4095, 4096, 4097, 9000][i % 8] + (i % 3))
  const datas = sizes.map((n, i) => pattern(n, i + 1))
  for (const [i, d] of datas.entries()) await store.put(`${i}_s0`, d)
  const got = []
  for (let i = 0; i < datas.length; i++) got.push(await store.get(`${i}_s0`))
  const slabs = new Set(got.filter((g) => g.length <= 4096).map((g) => g.buffer))
  assert.ok(slabs.size < got.filter((g) => g.length <= 4096).length, 'small pieces should share slabs')
  for (const g of got) {
    assert.ok(Buffer.isBuffer(g))
    if (g.length <= 4096) assert.equal(g.byteOffset % 8, 0, 'each slice starts 8-byte aligned')
  }
  // Writing into one piece changes neither its neighbours in the slab nor the stored piece.
  got[0].fill(0xee)
  got[1].fill(0xee)
  for (let i = 2; i < got.length; i++) assert.ok(got[i].equals(datas[i]), `piece ${i} changed`)
  assert.ok((await store.get('0_s0')).equals(datas[0]))
  // A transfer of a slab (postMessage, structuredClone) copies it: the other pieces keep their bytes.
  const slab = got[2].buffer
  const copy = structuredClone(slab, { transfer: [slab] })
  assert.equal(copy.byteLength, slab.byteLength)
  assert.equal(slab.byteLength, copy.byteLength, 'the slab was detached')
  for (let i = 2; i < got.length; i++) assert.ok(got[i].equals(datas[i]), `piece ${i} changed after a transfer`)
  // And the gets after it still read right.
  for (let i = 0; i < datas.length; i++) assert.ok((await store.get(`${i}_s0`)).equals(datas[i]))
})

test('a large piece from a file store is returned whole (zero-copy path)', async () => {
  const store = new PieceStore(`file://${tempDir()}`)
  const data = pattern(3 << 20)
  await store.put('5_s0', data)
  const got = await store.get('5_s0')
  got[0] ^= 0xff // writable, and ours alone
  got[0] ^= 0xff
  assert.ok(got.equals(data))
})

test('sharded stores, placement and the key helpers', async () => {
  const dir = tempDir()
  const store = new PieceStore(`${dir}/s-%d`, { shards: 4 })
  assert.equal(store.shardCount, 4)
  assert.equal(store.shardLabels.length, 4)
  assert.equal(store.placement, 'fnv-mod')
  // Whether and how small pieces are packed is visible, also in the string form.
  assert.match(store.packing, /^on: pieces under 1MiB packed into packs of 64MiB/)
  assert.match(String(store), /^PieceStore\(file:\/\/.*s-0, shards=4, placement=fnv-mod, packing="on: /)
  const unpacked = new PieceStore(`${dir}/plain?pack=false`)
  assert.equal(unpacked.packing, 'off (one object per piece)')
  assert.match(`${unpacked}`, /packing="off \(one object per piece\)"/)
  const key = ecKey(42, 0, 3)
  assert.equal(key, '42_s0_p3')
  assert.equal(ecKey(42, 0, 3, 7), 'e42_s0_p3_v7')
  assert.equal(segmentKey(42, 1), '42_s1')
  assert.equal(segmentKey(42, 1, 2), 's42_s1_v2')
  assert.deepEqual(parseKey('e42_s0_p3_v7'), { objectId: 42, segment: 0, ecIndex: 3, version: 7 })
  assert.deepEqual(parseKey('42_s1'), { objectId: 42, segment: 1, ecIndex: null, version: null })
  assert.throws(() => parseKey('nope'), (e) => e.code === 'INVALID_KEY')
  assert.throws(() => segmentKey(-1, 0))
  assert.ok(store.shardOf(key) >= 0 && store.shardOf(key) < 4)
  await store.put(key, 'x')
  const byPath = new PieceStore(`${dir}/s-${store.shardOf(key)}`)
  assert.equal((await byPath.get(key)).toString(), 'x')
  validateKey(key)
  assert.throws(() => validateKey('../x'), (e) => e.code === 'INVALID_KEY')
  assert.ok(MAX_KEY_LEN >= 200)
  assert.ok(optionNames().includes('MaxRetries'))
})

test('config objects and config.toml files', async () => {
  const { writeFileSync } = await import('node:fs')
  const dir = tempDir()
  const cfg = `${dir}/config.toml`
  writeFileSync(cfg, `[Other]\nignored = true\n[PieceStore]\nShards = 2\n[PieceStore.Store]\nBucketURL = "${dir}/f-%d"\n`)
  const a = PieceStore.fromConfig(cfg)
  assert.equal(a.shardCount, 2)
  await a.put('1_s0', 'cfg')
  const b = new PieceStore(cfg)
  assert.equal((await b.get('1_s0')).toString(), 'cfg')
  const c = new PieceStore({ PieceStore: { Shards: 2, Store: { BucketURL: `${dir}/f-%d` } } })
  assert.equal((await c.get('1_s0')).toString(), 'cfg')
  const d = new PieceStore({ Shards: 2, Store: { BucketURL: `${dir}/f-%d` } })
  assert.equal((await d.get('1_s0')).toString(), 'cfg')
  // A URL is PieceStore's own layout unless told: the original's files are refused, not misread.
  let refused
  try {
    await PieceStore.open(`${dir}/f-%d`, { shards: 2 })
  } catch (err) {
    refused = err
  }
  assert.ok(refused?.code === 'CONFIG' && /layout=original/.test(refused.message), String(refused))
  const e = await PieceStore.open(`${dir}/f-%d`, { shards: 2, layout: 'original', fsync: false, maxRetries: 1, requestTimeout: 2.5 })
  assert.equal((await e.get('1_s0')).toString(), 'cfg')
})

test('s3s-fs: unsignedPayload puts without hashing the body, and s3s-fs (which checks SigV4) accepts them', { timeout: 60_000 }, async (t) => {
  const s = await server(t, 's3s-fs')
  const store = new PieceStore(s3Url(s, 0), {
    accessKey: s.accessKey, secretKey: s.secretKey, unsignedPayload: true, pack: false,
  })
  const data = pattern(1 << 20, 9)
  await store.put('9_s0', data)
  assert.ok((await store.get('9_s0')).equals(data))
  await store.close()
})

test('get and put are each store\'s own functions (not enumerable); the prototype\'s do the same', async () => {
  const { writeFileSync } = await import('node:fs')
  const dir = tempDir()
  writeFileSync(`${dir}/config.toml`, `[PieceStore.Store]\nBucketURL = "${dir}/f"\n`)
  const made = [
    ['new', new PieceStore('memory://')],
    ['open', await PieceStore.open('memory://')],
    ['fromConfig', PieceStore.fromConfig(`${dir}/config.toml`)],
  ]
  for (const [how, store] of made) {
    assert.ok(store instanceof PieceStore, how)
    for (const name of ['get', 'put']) {
      const own = Object.getOwnPropertyDescriptor(store, name)
      assert.equal(typeof own?.value, 'function', `${how}: own ${name}`)
      assert.equal(own.enumerable, false, `${how}: ${name} is not enumerable`)
      assert.equal(own.writable && own.configurable, true, `${how}: ${name} can be replaced`)
      assert.notEqual(own.value, PieceStore.prototype[name])
    }
    assert.deepEqual(Object.keys(store), [], how)
    // The prototype's methods and the own ones read and write the same pieces, alike.
    await PieceStore.prototype.put.call(store, '1_s0', 'by the prototype')
    await store.put('2_s0', Buffer.from('by its own put'))
    assert.equal((await store.get('1_s0')).toString(), 'by the prototype')
    assert.equal((await PieceStore.prototype.get.call(store, '2_s0')).toString(), 'by its own put')
    // Detached from the object, as a bound function.
    const { get, put } = store
    await put('3_s0', 'detached')
    assert.equal((await get('3_s0')).toString(), 'detached')
    assert.equal((await rejection(put('3_s0', 'other bytes'))).code, 'PIECE_EXISTS')
    await store.put('3_s0', 'other bytes', { overwrite: true })
    assert.equal((await get('3_s0')).toString(), 'other bytes')
    assert.equal((await rejection(get('../x'))).code, 'INVALID_KEY')
    assert.equal((await rejection(store.get('4_s0'))).code, 'PIECE_NOT_FOUND')
    // Both throw the same TypeErrors for arguments of the wrong type, or none at all.
    for (const call of [(f) => f.call(store), (f) => f.call(store, 5)]) {
      const messages = [store.get, PieceStore.prototype.get].map((f) => {
        try { call(f) } catch (e) { return `${e.constructor.name} ${e.code}: ${e.message}` }
      })
      assert.equal(messages[0], messages[1])
      assert.match(messages[0], /^TypeError ERR_INVALID_ARG_TYPE: get: key must be a string, got (undefined|number)$/)
    }
    assert.throws(() => store.put('5_s0', 'x', 5), /put: options must be an object such as \{ overwrite: true \}, got number/)
    // An exception thrown while an argument is read comes through as it was, on both paths.
    const throwing = { get overwrite () { throw new RangeError('from a getter') } }
    for (const f of [store.put, PieceStore.prototype.put]) {
      assert.throws(() => f.call(store, '5_s0', 'x', throwing), (e) => e instanceof RangeError && e.message === 'from a getter')
    }
    assert.equal((await rejection(store.get('5_s0'))).code, 'PIECE_NOT_FOUND')
    assert.throws(() => put('5_s0', 7), /put: data must be a Buffer, Uint8Array or string, got number/)
    // Keys around the one-call conversion's 256 bytes, in 2-byte characters (a file name
    // cannot be this long: memory stores only).
    if (how !== 'fromConfig') {
      for (const n of [126, 127, 128, 200]) {
        const long = `${'é'.repeat(n)}_s0`
        await store.put(long, `key of ${n}`)
        assert.equal((await store.get(long)).toString(), `key of ${n}`)
        assert.equal((await store.head(long)).key, long)
      }
    }
    await store.close()
    assert.equal((await rejection(get('1_s0'))).code, 'CLOSED')
  }
})

test('a subclass\'s get and put are its own: a store\'s own functions do not shadow them', async () => {
  class Counted extends PieceStore {
    constructor (...args) {
      super(...args)
      this.calls = []
    }

    async get (key) {
      this.calls.push(`get ${key}`)
      return super.get(key)
    }

    async put (key, data, options) {
      this.calls.push(`put ${key}`)
      return super.put(key, data, options)
    }
  }
  const store = new Counted('memory://')
  assert.ok(store instanceof Counted && store instanceof PieceStore)
  assert.equal(Object.getOwnPropertyDescriptor(store, 'get'), undefined)
  await store.put('1_s0', 'counted')
  assert.equal((await store.get('1_s0')).toString(), 'counted')
  assert.deepEqual(store.calls, ['put 1_s0', 'get 1_s0'])
  // A subclass that keeps the methods gets own functions, as PieceStore's objects do.
  class Plain extends PieceStore {}
  const plain = new Plain('memory://')
  assert.equal(typeof Object.getOwnPropertyDescriptor(plain, 'get')?.value, 'function')
  await plain.put('2_s0', 'plain')
  assert.equal((await plain.get('2_s0')).toString(), 'plain')
  await store.close()
  await plain.close()
})

test('a method stubbed on the prototype is called by the stores made after it', async () => {
  const original = PieceStore.prototype.get
  const seen = []
  PieceStore.prototype.get = function (key) {
    seen.push(key)
    return original.call(this, key)
  }
  try {
    for (const store of [new PieceStore('memory://'), await PieceStore.open('memory://')]) {
      assert.equal(Object.getOwnPropertyDescriptor(store, 'get'), undefined)
      await store.put('1_s0', 'stubbed')
      assert.equal((await store.get('1_s0')).toString(), 'stubbed')
    }
    assert.deepEqual(seen, ['1_s0', '1_s0'])
  } finally {
    PieceStore.prototype.get = original
  }
  assert.equal(typeof Object.getOwnPropertyDescriptor(new PieceStore('memory://'), 'get')?.value, 'function')
})

test('keys convert alike on both paths: 4-byte characters across 256 bytes, lone surrogates', async () => {
  const store = new PieceStore('memory://')
  const keys = []
  for (let n = 248; n <= 258; n++) keys.push(`${'a'.repeat(n)}\u{1F600}_s0`)
  keys.push('lone\uD800_s0', `${'b'.repeat(254)}\uDC00_s0`)
  for (const [i, key] of keys.entries()) {
    await store.put(key, `piece ${i}`)
    assert.equal((await PieceStore.prototype.get.call(store, key)).toString(), `piece ${i}`, `key ${i}`)
    await PieceStore.prototype.put.call(store, key, `piece ${i}`)
    assert.equal((await store.get(key)).toString(), `piece ${i}`, `key ${i}`)
  }
  // A lone surrogate reads as U+FFFD, as Node-API converts it, on both paths.
  assert.equal((await store.get('lone\uFFFD_s0')).toString(), `piece ${keys.length - 2}`)
  assert.equal((await PieceStore.prototype.get.call(store, 'lone\uFFFD_s0')).toString(), `piece ${keys.length - 2}`)
  await store.close()
})
