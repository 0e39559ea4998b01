// flush, gc and fsck from JavaScript: a packed store's upkeep, with reports and progress.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { randomBytes } from 'node:crypto'
import { readdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'

import { PieceStore } from '../index.js'
import { tempDir } from './helpers.mjs'

const pieces = Array.from({ length: 24 }, (_, i) => randomBytes(100 + i * 37))

function packs(root) {
  const dir = path.join(root, '.piecestore', 'packs')
  return readdirSync(dir).filter((f) => f.endsWith('.pack')).map((f) => path.join(dir, f))
}

/** Lets queued progress calls (posted from the library's threads) reach the event loop. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 50))

test('gc reclaims deleted pieces, reports what it did and its progress', async () => {
  const dir = tempDir()
  const store = new PieceStore(`file://${dir}`)
  await store.putMany(pieces.map((p, i) => [`gc/${i}_s0`, p]))
  let report = await store.gc({ grace: 0 })
  assert.equal(report.packsBefore, 1)
  assert.equal(report.packsCompacted, 0)
  for (let i = 0; i < 20; i++) await store.delete(`gc/${i}_s0`)
  await store.gc({ grace: 0, dryRun: true })
  assert.equal(packs(dir).length, 1, 'a dry run changes nothing')
  const seen = []
  report = await store.gc({ grace: 0, garbageRatio: 0.5, onProgress: (done, total) => seen.push([done, total]) })
  assert.equal(report.packsCompacted, 1, JSON.stringify(report))
  assert.equal(report.piecesMoved, 4)
  assert.equal(report.packsDeleted, 1)
  assert.ok(report.bytesReclaimed > 0)
  assert.equal(report.doomed.packs, 0)
  assert.equal(report.doomed.firstDue, null)
  await settle()
  assert.ok(seen.length > 0, 'onProgress was never called')
  assert.ok(seen.every(([d, t]) => d >= 0 && d <= t), JSON.stringify(seen))
  assert.equal(packs(dir).length, 1)
  for (let i = 20; i < 24; i++) assert.deepEqual(await store.get(`gc/${i}_s0`), pieces[i])
  await store.close()
})

test('gc with a grace period keeps the compacted pack until it is over', async () => {
  const dir = tempDir()
  const store = new PieceStore(`file://${dir}`)
  await store.putMany(pieces.slice(0, 10).map((p, i) => [`g/${i}_s0`, p]))
  for (let i = 0; i < 9; i++) await store.delete(`g/${i}_s0`)
  let report = await store.gc({ grace: 3600 })
  assert.equal(report.packsCompacted, 1)
  assert.equal(report.packsDeleted, 0)
  assert.equal(report.doomed.packs, 1)
  assert.ok(report.doomed.firstDue instanceof Date && report.doomed.firstDue > new Date(), `${report.doomed.firstDue}`)
  assert.equal(report.doomed.graceSeconds, 3600)
  assert.equal(packs(dir).length, 2)
  report = await store.gc({ grace: 0 })
  assert.equal(report.packsDeleted, 1)
  assert.equal(packs(dir).length, 1)
  assert.deepEqual(await store.get('g/9_s0'), pieces[9])
  await store.close()
})

test('gc and fsck refuse bad options before any work', async () => {
  const store = new PieceStore(`file://${tempDir()}`)
  assert.throws(() => store.gc({ garbageRatio: 1.5 }), (e) => e instanceof RangeError && /garbageRatio/.test(e.message))
  assert.throws(() => store.gc({ grace: -1 }), (e) => e instanceof RangeError && /grace/.test(e.message))
  assert.throws(() => store.gc({ grace: '1h' }), (e) => e instanceof TypeError && /grace/.test(e.message))
  assert.throws(() => store.gc({ onProgress: 5 }), (e) => e instanceof TypeError && /onProgress/.test(e.message))
  assert.throws(() => store.gc(7), (e) => e instanceof TypeError)
  assert.throws(() => store.fsck({ rebuildIndex: 'yes' }), (e) => e instanceof TypeError && /rebuildIndex/.test(e.message))
  await store.close()
})

test('fsck reports damage in its report, and the damaged piece is never returned', async () => {
  const dir = tempDir()
  let store = new PieceStore(`file://${dir}`)
  await store.putMany(pieces.slice(0, 6).map((p, i) => [`f/${i}_s0`, p]))
  await store.flush()
  const read = []
  let report = await store.fsck({ onProgress: (n) => read.push(n) })
  assert.deepEqual(report.problems, [])
  assert.equal(report.packs, 1)
  assert.equal(report.packedPieces, 6)
  assert.equal(report.rebuiltPieces, null)
  await settle()
  assert.equal(read.at(-1), report.bytes, JSON.stringify(read))
  const [pack] = packs(dir)
  const raw = readFileSync(pack)
  const at = raw.indexOf(pieces[4].subarray(0, 64))
  assert.ok(at >= 0)
  raw[at + 10] ^= 0xff
  writeFileSync(pack, raw)
  report = await store.fsck()
  assert.ok(report.problems.length > 0, JSON.stringify(report))
  assert.ok(report.problems[0].pack && report.problems[0].what)
  await store.close()
  // A fresh store's view (the first still held its open pack's bytes in memory).
  store = new PieceStore(`file://${dir}`)
  await assert.rejects(store.get('f/4_s0'), (e) => e.code === 'CORRUPT_PIECE')
  assert.deepEqual(await store.get('f/3_s0'), pieces[3])
  report = await store.fsck({ rebuildIndex: true })
  assert.notEqual(report.rebuiltPieces, null)
  assert.ok(report.problemsBeforeRebuild.length > 0)
  await store.close()
})

test('unpacked and memory stores have nothing to collect; a closed store rejects', async () => {
  for (const store of [new PieceStore(`file://${tempDir()}`, { pack: false }), new PieceStore('memory://')]) {
    await store.put('u/1_s0', Buffer.alloc(100, 1))
    await store.flush()
    const gc = await store.gc({ grace: 0 })
    assert.equal(gc.packsBefore, 0)
    const fsck = await store.fsck()
    assert.deepEqual(fsck.problems, [])
    assert.equal(fsck.packs, 0)
    await store.close()
    for (const call of [() => store.flush(), () => store.gc(), () => store.fsck()]) {
      await assert.rejects(call(), (e) => e.code === 'CLOSED')
    }
  }
})

test('inventory() says what a sharded store holds, its orphans and its progress', async () => {
  const dir = tempDir()
  const store = new PieceStore(`${dir}/s-%d`, { shards: 2, pack: false })
  const sizes = [0, 1, 100, 4096, 5000]
  await store.putMany(sizes.map((n, i) => [`inv/${i}_s0`, Buffer.alloc(n, i)]))
  // A valid key on the other shard than its own (misplaced), and the temp file of a write
  // that never finished (the original Go piecestore's `.name.tmpN`).
  const key = 'inv/99_s0'
  const other = 1 - store.shardOf(key)
  const wrong = new PieceStore(`${dir}/s-${other}?pack=false`)
  await wrong.put(key, 'elsewhere')
  await wrong.close()
  writeFileSync(path.join(dir, 's-0', '.7_s0.tmp3'), 'x')
  const inv = await store.inventory({ maxOrphanSamples: 5 })
  assert.equal(inv.pieces, sizes.length, JSON.stringify(inv))
  assert.equal(inv.bytes, sizes.reduce((a, b) => a + b, 0))
  assert.equal(inv.minSize, 0)
  assert.equal(inv.maxSize, 5000)
  assert.equal(inv.sizes.reduce((a, b) => a + b.pieces, 0), sizes.length)
  assert.deepEqual(inv.sizes.find((b) => b.max === 4096), { min: 2049, max: 4096, pieces: 1, bytes: 4096 })
  assert.equal(inv.shards.length, 2)
  assert.equal(inv.shards.reduce((a, s) => a + s.pieces, 0), sizes.length)
  assert.ok(inv.shards[1].backend.endsWith('s-1'), inv.shards[1].backend)
  assert.ok(inv.bytesSkew >= 1, String(inv.bytesSkew))
  assert.equal(inv.orphans.misplaced, 1)
  assert.equal(inv.orphans.misplacedBytes, 'elsewhere'.length)
  assert.equal(inv.orphans.temp, 1)
  assert.equal(inv.orphans.otherBytes, 1)
  const samples = inv.orphans.samples.map((s) => `${s.shard}:${s.key}`).sort()
  assert.deepEqual(samples, [`${other}:${key}`, '0:.7_s0.tmp3'].sort())
  assert.equal(inv.packs, null)
  // Progress: the objects listed so far, every 1,000.
  const many = new PieceStore(`file://${tempDir()}`, { pack: false, fsync: false })
  await many.putMany(Array.from({ length: 1100 }, (_, i) => [`m/${i}_s0`, '']))
  const listed = []
  assert.equal((await many.inventory({ onProgress: (n) => listed.push(n) })).pieces, 1100)
  await settle()
  assert.deepEqual(listed, [1000])
  await many.close()
  // A packed store reports its packs; bad options are refused before any work.
  const packed = new PieceStore(`file://${tempDir()}`)
  await packed.putMany(pieces.slice(0, 6).map((p, i) => [`p/${i}_s0`, p]))
  const p = await packed.inventory()
  assert.equal(p.pieces, 6)
  assert.equal(p.packs.pieces, 6)
  assert.ok(p.packs.fill > 0 && p.packs.fill <= 1, String(p.packs.fill))
  await assert.rejects(async () => packed.inventory({ maxOrphanSamples: -1 }), RangeError)
  assert.throws(() => packed.inventory('five'), TypeError)
  await packed.close()
  await store.close()
})

test('migrateTo() copies every piece verified, skips what is there, lists failures', async () => {
  const src = new PieceStore(`file://${tempDir()}`)
  const dest = new PieceStore(`file://${tempDir()}`, { pack: false })
  await src.putMany(pieces.slice(0, 8).map((p, i) => [`mig/${i}_s0`, p]))
  await dest.put('mig/0_s0', pieces[0])
  const dry = await src.migrateTo(dest, { dryRun: true })
  assert.deepEqual([dry.copied, dry.skipped, dry.failed], [7, 1, 0])
  assert.equal(await dest.exists('mig/1_s0'), false)
  const seen = []
  const r = await src.migrateTo(dest, { concurrency: 2, onProgress: (done, total) => seen.push([done, total]) })
  assert.deepEqual([r.totalPieces, r.copied, r.skipped, r.failed], [8, 7, 1, 0])
  assert.equal(r.copiedBytes, pieces.slice(1, 8).reduce((a, p) => a + p.length, 0))
  assert.deepEqual(r.failures, [])
  for (let i = 0; i < 8; i++) assert.ok((await dest.get(`mig/${i}_s0`)).equals(pieces[i]))
  await settle()
  assert.deepEqual(seen.at(-1), [8, 8])
  assert.deepEqual([(await src.migrateTo(dest)).skipped], [8])
  await src.put('mig/9_s0', 'source bytes')
  await dest.put('mig/9_s0', 'other bytes!')
  const conflict = await src.migrateTo(dest)
  assert.equal(conflict.failed, 1)
  assert.deepEqual(conflict.failures.map((f) => [f.key, f.code]), [['mig/9_s0', 'PIECE_EXISTS']])
  assert.match(conflict.failures[0].message, /mig\/9_s0/)
  // The core's bounds: 4096 runs, and anything else is refused before the promise exists.
  assert.equal((await src.migrateTo(dest, { concurrency: 4096, dryRun: true })).failed, 0)
  for (const bad of [0, 4097, 2.5, -1, 1e6]) {
    await assert.rejects(async () => src.migrateTo(dest, { concurrency: bad }), (e) => {
      assert.ok(e instanceof RangeError, String(e))
      assert.match(e.message, new RegExp(`concurrency must be a whole number from 1 to 4096, got ${bad}`))
      return true
    })
  }
  assert.throws(() => src.migrateTo('file:///elsewhere'))
  await src.close()
  await dest.close()
})
