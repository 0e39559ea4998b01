// Every error code, from the user's side; no secret in any message.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, readdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'

import { PieceStore } from '../index.js'
import { S3_KEYS, rejection, s3Url, server, tempDir } from './helpers.mjs'

function isCoded(e, code) {
  assert.ok(e instanceof Error, `not an Error: ${e}`)
  assert.equal(e.code, code, e.message)
  assert.equal(typeof e.retryable, 'boolean')
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
    ['memory://', { maxRetries: 'many' }],
    ['memory://', { requestTimeout: 'soon' }],
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
  assert.throws(
    () => new PieceStore('memory://', { secretKey: 12 }),
    (e) => isCoded(e, 'CONFIG') && !e.message.includes('12'),
  )
  // Wrong argument types are TypeErrors-style napi errors, thrown at once.
  assert.throws(() => new PieceStore(42))
  assert.throws(() => new PieceStore('memory://', { region: {} }))
})

test('CONFIG: a missing bucket is named, on open and on first use', { timeout: 60_000 }, async (t) => {
  const s = await server(t, 'moto')
  const url = s3Url(s, 2)
  const opts = { region: 'us-east-1', ...S3_KEYS, createBucket: false }
  let e = await rejection(PieceStore.open(url, opts))
  isCoded(e, 'CONFIG')
  assert.match(e.message, /shard/)
  const lazy = new PieceStore(url, opts) // no I/O in the constructor
  e = await rejection(lazy.get('1_s0'))
  isCoded(e, 'CONFIG')
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
