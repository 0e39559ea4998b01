// Every error code, from the user's side; no secret in any message.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'

import { PieceStore, configureRuntime, ecKey, parseKey, segmentKey, validateKey } from '../index.js'
import { S3_KEYS, rejection, s3Url, server, tempDir } from './helpers.mjs'

function isCoded(e, code) {
  assert.ok(e instanceof Error, `not an Error: ${e}`)
  assert.equal(e.code, code, e.message)
  assert.equal(typeof e.retryable, 'boolean')
  return true
}

/** Whether `e` is the TypeError of a wrong argument type, whose message holds every `part`. */
function isTypeError(e, ...parts) {
  assert.ok(e instanceof TypeError, `not a TypeError: ${e?.constructor?.name}: ${e}`)
  assert.equal(e.code, 'ERR_INVALID_ARG_TYPE', e.message)
  for (const part of parts) assert.ok(e.message.includes(part), `${JSON.stringify(e.message)} lacks ${JSON.stringify(part)}`)
  return true
}

test('PIECE_NOT_FOUND, INVALID_KEY, PIECE_EXISTS, INVALID_RANGE name the key and the backend', async () => {
  const dir = tempDir()
  const store = new PieceStore(`file://${dir}`)
  let e = await rejection(store.get('404_s0'))
  isCoded(e, 'PIECE_NOT_FOUND')
  assert.equal(e.key, '404_s0')
  assert.match(e.message, /404_s0/)
  assert.ok(e.backend.includes(dir), e.backend)
  assert.ok(e.message.includes(dir), e.message)
  assert.equal(e.retryable, false)
  isCoded(await rejection(store.head('404_s0')), 'PIECE_NOT_FOUND')

  for (const bad of ['', '../x', 'a/../../b', '/etc/passwd', 'x'.repeat(2000), 'tab\there']) {
    e = await rejection(store.put(bad, 'data'))
    isCoded(e, 'INVALID_KEY')
    isCoded(await rejection(store.get(bad)), 'INVALID_KEY')
  }
  isCoded(await rejection(store.deletePrefix('')), 'INVALID_KEY')

  await store.put('1_s0', 'one')
  e = await rejection(store.put('1_s0', 'two'))
  isCoded(e, 'PIECE_EXISTS')
  assert.match(e.message, /1_s0/)
  assert.equal((await store.get('1_s0')).toString(), 'one', 'a refused put lost nothing')

  e = await rejection(store.getRange('1_s0', 2, 5))
  isCoded(e, 'INVALID_RANGE')
  assert.match(e.message, /1_s0/)
})

test('CORRUPT_PIECE: a flipped byte on disk is detected; other pieces still read', async () => {
  const dir = tempDir()
  // one file per piece, to flip a byte of it
  const store = new PieceStore(dir, { pack: false })
  const data = Buffer.alloc(8192, 7)
  await store.put('9_s1_p2', data)
  await store.put('9_s1_p3', data)
  const file = path.join(dir, '9_s1_p2')
  const bytes = readFileSync(file)
  bytes[4000] ^= 0x80
  writeFileSync(file, bytes)
  const e = await rejection(store.get('9_s1_p2'))
  isCoded(e, 'CORRUPT_PIECE')
  assert.equal(e.key, '9_s1_p2')
  isCoded(await rejection(store.getRange('9_s1_p2', 0, 10)), 'CORRUPT_PIECE')
  assert.ok((await store.get('9_s1_p3')).equals(data))
})

test('CORRUPT_PIECE: a flipped byte inside a pack names the piece; its neighbours still read', async () => {
  const dir = tempDir()
  const store = new PieceStore(dir, { packMaxAge: '5ms' })
  const data = Buffer.alloc(3000, 5)
  await store.put('7_s0', data)
  await store.put('8_s0', data)
  const packs = readdirSync(path.join(dir, '.piecestore', 'packs')).filter((n) => n.endsWith('.pack'))
  assert.ok(packs.length >= 1, 'small pieces are packed by default')
  let flipped = false
  for (const name of packs) {
    const file = path.join(dir, '.piecestore', 'packs', name)
    const bytes = readFileSync(file)
    const at = bytes.indexOf(Buffer.concat([Buffer.from('7_s0'), data.subarray(0, 8)]))
    if (at >= 0) {
      bytes[at + 4 + 100] ^= 0x01
      writeFileSync(file, bytes)
      flipped = true
    }
  }
  assert.ok(flipped, '7_s0 is in a pack')
  const e = await rejection(store.get('7_s0'))
  isCoded(e, 'CORRUPT_PIECE')
  assert.equal(e.key, '7_s0')
  assert.ok((await store.get('8_s0')).equals(data))
  await store.close()
})

test('CONFIG: bad URLs, options and values throw at construction', () => {
  for (const [store, opts] of [
    ['ftp://host/bucket', undefined],
    ['memory://', { shardz: 4 }],
    ['memory://', { maxRetries: -1 }],
    ['memory://', { requestTimeout: 'soon' }],
    ['memory://', { placement: 'sideways' }],
    ['memory://', { conditionalWrites: 'maybe' }],
    [`${tempDir()}/no-template`, { shards: 4 }],
  ]) {
    assert.throws(() => new PieceStore(store, opts), (e) => isCoded(e, 'CONFIG'), `${store} ${JSON.stringify(opts)}`)
  }
  assert.throws(() => PieceStore.fromConfig('/no/such/config.toml'), (e) => isCoded(e, 'CONFIG'))
  // Credentials never go in a URL (they would end up in logs), and are never echoed.
  assert.throws(
    () => new PieceStore('http://AKID:hunter22secret@127.0.0.1:9/b'),
    (e) => isCoded(e, 'CONFIG') && !e.message.includes('hunter22secret'),
  )
  // An option of the wrong type is a TypeError, which names the type, never the value.
  assert.throws(
    () => new PieceStore('memory://', { secretKey: 12345 }),
    (e) => isTypeError(e, 'option secretKey must be a string, got number') && !e.message.includes('12345'),
  )
  assert.throws(() => new PieceStore(42), (e) => isTypeError(e, 'store must be'))
  assert.throws(() => new PieceStore('memory://', { region: {} }), (e) => isTypeError(e, 'option region must be a string, got object'))
})

test('wrong argument types throw a TypeError at once, naming the call, the argument and what it accepts', () => {
  const store = new PieceStore('memory://')
  const cases = [
    [() => store.put(123, 'x'), 'put: key must be a string, got number'],
    [() => store.put('1_s0', 123), 'put: data must be a Buffer, Uint8Array or string, got number'],
    [() => store.put('1_s0', new ArrayBuffer(4)), 'put: data must be a Buffer, Uint8Array or string, got ArrayBuffer'],
    [() => store.put('1_s0', new Uint16Array(4)), 'got Uint16Array'],
    [() => store.put('1_s0', [1, 2]), 'got array'],
    [() => store.put('1_s0', 'x', 5), 'put: options must be an object', 'got number'],
    [() => store.put('1_s0', 'x', { overwrite: 1 }), 'put: options.overwrite must be a boolean, got number'],
    [() => store.get(1), 'get: key must be a string, got number'],
    [() => store.get(Promise.resolve('1_s0')), 'get: key must be a string, got Promise'],
    [() => store.get(Buffer.from('1_s0')), 'get: key must be a string, got Buffer'],
    [() => store.get(new Uint8Array(4)), 'get: key must be a string, got Uint8Array'],
    [() => store.getRange(7, 0, 1), 'getRange: key must be a string, got number'],
    [() => store.getRange('1_s0', '0', 1), 'getRange: offset must be a number, got string'],
    [() => store.getRange('1_s0', 0, null), 'getRange: length must be a number, got null'],
    [() => store.getRange('1_s0', 0n, 1), 'getRange: offset must be a number, got bigint'],
    [() => store.head({}), 'head: key must be a string, got object'],
    [() => store.exists(), 'exists: key must be a string, got undefined'],
    [() => store.delete(true), 'delete: key must be a string, got boolean'],
    [() => store.deletePrefix(Symbol('p')), 'deletePrefix: prefix must be a string, got symbol'],
    [() => store.getMany('1_s0'), 'getMany: keys must be an array of strings, got string'],
    [() => store.getMany(['1_s0', 2]), 'getMany: keys[1] must be a string, got number'],
    [() => store.putMany(5), 'putMany: items must be an array or iterable of [key, data] pairs, or an object of key to data, got number'],
    [() => store.putMany([['1_s0', 'x'], 'y']), 'putMany: items[1] must be a [key, data] pair, got string'],
    [() => store.putMany([[1, 'x']]), 'putMany: the key of items[0] must be a string, got number'],
    [() => store.putMany(new Map([['1_s0', 7]])), 'putMany: the data of items[0] must be a Buffer, Uint8Array or string, got number'],
    [() => store.putMany({ '1_s0': () => 'x' }), 'putMany: items["1_s0"] must be a Buffer, Uint8Array or string, got function'],
    [() => store.putMany({ '1_s0': 'x' }, { overwrite: 'yes' }), 'putMany: options.overwrite must be a boolean, got string'],
    [() => store.list(5), 'list: prefix must be a string, got number'],
    [() => store.shardOf(5), 'shardOf: key must be a string, got number'],
    [() => new PieceStore(42), 'PieceStore: store must be a URL or path string, or an object laid out like config.toml, got number'],
    [() => new PieceStore(['memory://']), 'PieceStore: store must be', 'got array'],
    [() => new PieceStore('memory://', 5), 'PieceStore: options must be an object', 'got number'],
    [() => new PieceStore('memory://', { maxRetries: 'many' }), 'PieceStore: option maxRetries must be a number, got string'],
    [() => new PieceStore('memory://', { MaxRetries: '3' }), 'option MaxRetries must be a number, got string'],
    [() => new PieceStore('memory://', { conditionalWrites: 1 }), 'option conditionalWrites must be a boolean or one of the strings "auto", "on", "off", got number'],
    [() => new PieceStore('memory://', { requestTimeout: true }), 'option requestTimeout must be a number of seconds or a duration string such as "1500ms", got boolean'],
    [() => new PieceStore({ Store: { BucketURL: 1n } }), 'PieceStore: store.Store.BucketURL must be an object, array, string, number or boolean, got bigint'],
    [() => PieceStore.fromConfig(7), 'PieceStore.fromConfig: path must be a string, got number'],
    [() => PieceStore.fromConfig('/no/such/config.toml', { fsync: 'no' }), 'PieceStore.fromConfig: option fsync must be a boolean, got string'],
    [() => PieceStore.open(7), 'PieceStore.open: store must be'],
    [() => PieceStore.open('memory://', { pack: 1 }), 'PieceStore.open: option pack must be a boolean, got number'],
    [() => validateKey(5), 'validateKey: key must be a string, got number'],
    [() => parseKey(null), 'parseKey: key must be a string, got null'],
    [() => segmentKey('42', 0), 'segmentKey: objectId must be a number, got string'],
    [() => ecKey(42, 0, '1'), 'ecKey: ecIndex must be a number, got string'],
    [() => ecKey(42, 0, 1, '2'), 'ecKey: version must be a number, got string'],
    [() => configureRuntime(4), 'configureRuntime: options must be an object', 'got number'],
    [() => configureRuntime({ workerThreads: '4' }), 'configureRuntime: options.workerThreads must be a number, got string'],
  ]
  for (const [call, ...parts] of cases) assert.throws(call, (e) => isTypeError(e, ...parts), parts[0])
})

test('numbers out of range throw a RangeError; a bad range rejects with INVALID_RANGE', async () => {
  const isRangeError = (...parts) => (e) => {
    assert.ok(e instanceof RangeError, `not a RangeError: ${e}`)
    assert.equal(e.code, 'ERR_OUT_OF_RANGE')
    for (const part of parts) assert.ok(e.message.includes(part), `${JSON.stringify(e.message)} lacks ${JSON.stringify(part)}`)
    return true
  }
  assert.throws(() => segmentKey(-1, 0), isRangeError('segmentKey: objectId must be a non-negative integer, got -1'))
  assert.throws(() => segmentKey(1.5, 0), isRangeError('objectId', 'got 1.5'))
  assert.throws(() => ecKey(1, 2 ** 32, 0), isRangeError('ecKey: segment must be an integer from 0 to 4294967295, got 4294967296'))
  assert.throws(() => segmentKey(1, 0, -2), isRangeError('segmentKey: version must be a non-negative integer'))
  assert.throws(() => configureRuntime({ maxBlockingThreads: -1 }), isRangeError('configureRuntime: options.maxBlockingThreads'))
  // The right types: no throw (undefined and null leave an optional argument out).
  assert.equal(segmentKey(42, 1, undefined), '42_s1')
  assert.equal(ecKey(42, 1, 2, null), '42_s1_p2')

  const store = new PieceStore('memory://')
  await store.put('1_s0', 'abc')
  for (const [offset, length] of [[-1, 1], [0.5, 1], [0, NaN], [0, Infinity]]) {
    isCoded(await rejection(store.getRange('1_s0', offset, length)), 'INVALID_RANGE')
  }
})

test('every accepted argument type still works: Buffer, Uint8Array, string; arrays, Maps, iterables, objects', async () => {
  const store = new PieceStore('memory://')
  await store.put('1_s0', Buffer.from('buf'))
  await store.put('2_s0', new Uint8Array([1, 2, 3]))
  await store.put('3_s0', 'text', undefined)
  await store.put('3_s0', 'other', { overwrite: true })
  await store.put('4_s0', 'x', null)
  await store.putMany([['5_s0', 'a']])
  await store.putMany(new Map([['6_s0', Buffer.from('b')]]))
  await store.putMany({ '7_s0': new Uint8Array([7]) }, { overwrite: undefined })
  await store.putMany((function* () { yield ['8_s0', 'gen'] })())
  await store.putMany(new Set([['9_s0', 'set']]))
  const got = await store.getMany(['1_s0', '2_s0', '3_s0', '5_s0', '6_s0', '7_s0', '8_s0', '9_s0'])
  assert.deepEqual(got.map((b) => [...b]), [
    [...Buffer.from('buf')], [1, 2, 3], [...Buffer.from('other')], [...Buffer.from('a')],
    [...Buffer.from('b')], [7], [...Buffer.from('gen')], [...Buffer.from('set')],
  ])
  const listed = []
  for await (const info of store.list(null)) listed.push(info.key)
  assert.equal(listed.length, 9)
  // Options given as undefined or null are left unset.
  const s = new PieceStore('memory://', { shards: undefined, region: null })
  assert.equal(s.shardCount, 1)
  assert.ok(new PieceStore('memory://', null))
})

test('BUCKET_NOT_FOUND: a missing bucket is named, on open and on first use', { timeout: 60_000 }, async (t) => {
  const s = await server(t, 'moto')
  const url = s3Url(s, 2)
  const opts = { region: 'us-east-1', ...S3_KEYS, createBucket: false }
  let e = await rejection(PieceStore.open(url, opts))
  isCoded(e, 'BUCKET_NOT_FOUND')
  assert.match(e.message, /shard/)
  const lazy = new PieceStore(url, opts) // no I/O in the constructor
  e = await rejection(lazy.get('1_s0'))
  isCoded(e, 'BUCKET_NOT_FOUND')
  for (const secret of Object.values(S3_KEYS)) assert.ok(!e.message.includes(secret))
})

test('UNAUTHORIZED: wrong credentials, and no secret in the error', { timeout: 60_000 }, async (t) => {
  const s = await server(t, 's3s-fs')
  const wrong = `${s.secretKey}WRONG`
  const opts = { region: 'us-east-1', accessKey: s.accessKey, secretKey: wrong, maxRetries: 0 }
  const e = await rejection(PieceStore.open(`${s.endpoint}/bucket`, opts))
  isCoded(e, 'UNAUTHORIZED')
  const all = `${e.message} ${e.stack} ${JSON.stringify(e)}`
  assert.ok(!all.includes(wrong) && !all.includes(s.secretKey), all)
  // And on a call, with the bucket check off.
  const store = new PieceStore(`${s.endpoint}/bucket`, { ...opts, checkBucket: false })
  isCoded(await rejection(store.get('1_s0')), 'UNAUTHORIZED')
})

test('BACKEND: an unreachable endpoint is a retryable backend error', { timeout: 60_000 }, async () => {
  const store = new PieceStore('http://127.0.0.1:9/bucket', {
    accessKey: 'AKIDUNREACHABLE',
    secretKey: 'unreachable-secret',
    region: 'us-east-1',
    maxRetries: 1,
    minRetryDelay: 0.01,
    checkBucket: false,
  })
  const e = await rejection(store.put('1_s0', 'x'))
  isCoded(e, 'BACKEND')
  assert.equal(e.retryable, true)
  assert.match(e.message, /127\.0\.0\.1:9/)
  assert.ok(!e.message.includes('unreachable-secret'))
})

test('close() frees a memory store\'s pieces at once, while the store object lives on', async () => {
  // 40 MiB pieces: the core copies each into one allocation above glibc's largest mmap
  // threshold (32 MiB), so each is its own mapping and freeing it shows in the resident set
  // at once. One JavaScript buffer serves every put.
  const piece = Buffer.alloc(40 << 20, 7)
  const store = new PieceStore('memory://')
  for (let i = 0; i < 4; i++) await store.put(`${i}_s0`, piece)
  // (No get: the Buffer it returns shares the piece's memory until it is garbage-collected.)
  assert.equal((await store.head('3_s0')).size, piece.length)
  const held = process.memoryUsage().rss
  await store.close()
  const freed = held - process.memoryUsage().rss
  // 160 MiB held; allow for the allocator's slack.
  assert.ok(freed > 120 * 2 ** 20, `close() freed only ${(freed / 2 ** 20).toFixed(1)} MiB of 160 MiB`)
  isCoded(await rejection(store.get('0_s0')), 'CLOSED')
})

test('CLOSED: every call after close() rejects; close twice is fine', async () => {
  const store = new PieceStore('memory://')
  await store.put('1_s0', 'x')
  await store.close()
  assert.equal(store.closed, true)
  const calls = [
    () => store.get('1_s0'),
    () => store.put('2_s0', 'y'),
    () => store.getRange('1_s0', 0, 1),
    () => store.head('1_s0'),
    () => store.exists('1_s0'),
    () => store.delete('1_s0'),
    () => store.getMany(['1_s0']),
    () => store.putMany({ '3_s0': 'z' }),
    () => store.deletePrefix('1'),
    async () => {
      for await (const i of store.list()) assert.fail(`listed ${i.key} after close`)
    },
  ]
  for (const call of calls) isCoded(await rejection(call()), 'CLOSED')
  await store.close()
})

test('getStream: a large piece in chunks, verified; corruption rejects in place of the last chunk', async () => {
  const dir = tempDir()
  const store = new PieceStore(dir, { pack: false })
  const data = randomBytes((3 << 20) + 5)
  await store.put('8_s0', data)
  const reader = await store.getStream('8_s0')
  assert.equal(reader.info.key, '8_s0')
  assert.equal(reader.info.size, data.length)
  const chunks = []
  for await (const chunk of reader) chunks.push(chunk)
  assert.ok(chunks.length >= 3, `${chunks.length} chunks`)
  assert.ok(Buffer.concat(chunks).equals(data))
  // A flipped byte: the chunks before it may come, then the iteration rejects.
  const file = path.join(dir, '8_s0')
  const bytes = readFileSync(file)
  bytes[(2 << 20) + 17] ^= 0x01
  writeFileSync(file, bytes)
  const bad = await store.getStream('8_s0')
  const got = []
  const e = await rejection((async () => { for await (const chunk of bad) got.push(chunk) })())
  isCoded(e, 'CORRUPT_PIECE')
  assert.ok(Buffer.concat(got).length < data.length, 'the last chunk never came')
  isCoded(await rejection(store.getStream('8_s9')), 'PIECE_NOT_FOUND')
  isCoded(await rejection(store.getStream('../x')), 'INVALID_KEY')
  await store.close()
})
