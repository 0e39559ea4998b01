// A tour of the piecestore npm package. Run: node examples/quickstart.mjs [store-url]
import { mkdtempSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

import { PieceStore, ecKey, segmentKey } from 'piecestore'

const url = process.argv[2] ?? `file://${mkdtempSync(path.join(os.tmpdir(), 'piecestore-quickstart-'))}`
const store = new PieceStore(url, { fsync: true })

// Pieces are immutable: the same bytes again are fine, other bytes are refused.
const key = segmentKey(42, 0)
await store.put(key, Buffer.from('segment zero'))
await store.put(key, Buffer.from('segment zero'))
try {
  await store.put(key, 'something else')
} catch (e) {
  if (e.code !== 'PIECE_EXISTS') throw e
  console.log(`refused: ${e.message}`)
}

// Erasure-coded pieces of one segment, written and read concurrently.
const parts = Array.from({ length: 6 }, (_, i) => [ecKey(42, 1, i), Buffer.alloc(4096, i)])
await store.putMany(parts)
const read = await store.getMany(parts.map(([k]) => k))
console.log(`read ${read.length} pieces of ${read[0].length} bytes`)

for await (const info of store.list('42_')) {
  console.log(`${info.key}\t${info.size}\t${info.crc32c ?? '-'}`)
}
const { pieces, bytes } = await store.deletePrefix('42_')
console.log(`deleted ${pieces} pieces (${bytes} bytes)`)
await store.close()
