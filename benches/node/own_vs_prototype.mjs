// A store's own `get` (bindings/node/src/fast.rs) against the prototype's `get`, in one
// process on one memory store: 6 rounds of 20,000 4 KiB gets each way, one call at a time,
// alternating which goes first in a round (the first pass of a round is slower for either).
// Prints µs per get for each round.
//
// Run (from the repository root):
//   (cd benches/node && npm install) && node benches/node/own_vs_prototype.mjs
import { PieceStore } from 'piecestore'

const N = 20_000
const store = new PieceStore('memory://')
const data = Buffer.alloc(4096, 3)
const protoGet = PieceStore.prototype.get
const out = { own: [], prototype: [] }
for (let round = 0; round < 6; round++) {
  const keys = Array.from({ length: N }, (_, i) => `${round}_s${i}`)
  for (const k of keys) await store.put(k, data)
  for (const way of round % 2 ? ['own', 'prototype'] : ['prototype', 'own']) {
    const t = performance.now()
    for (const k of keys) {
      const b = way === 'own' ? await store.get(k) : await protoGet.call(store, k)
      if (b.length !== 4096) throw new Error(`short read: ${b.length}`)
    }
    out[way].push(`${(((performance.now() - t) * 1000) / N).toFixed(2)}${way === (round % 2 ? 'own' : 'prototype') ? ' (first)' : ''}`)
  }
}
await store.close()
console.log(`4 KiB memory get, µs per call, round by round:\n  own:       ${out.own.join(', ')}\n  prototype: ${out.prototype.join(', ')}`)
