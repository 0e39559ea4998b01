// One call at a time in a loop, as a newcomer writes it: 20,000 4 KiB puts then gets on a
// memory store, best of 3 rounds, µs per call. For before/after comparisons of one addon
// against another (swap the built `.node` file between runs).
//
// Run (from the repository root):
//   (cd benches/node && npm install) && node benches/node/memory_loop.mjs
import { PieceStore } from 'piecestore'

const N = 20_000
const store = await PieceStore.open('memory://')
const data = Buffer.alloc(4096, 7)
let put = Infinity
let get = Infinity
for (let r = 0; r < 3; r++) {
  const keys = Array.from({ length: N }, (_, i) => `${r}${i}_s0`)
  let t = process.hrtime.bigint()
  for (const k of keys) await store.put(k, data)
  put = Math.min(put, Number(process.hrtime.bigint() - t) / N / 1000)
  t = process.hrtime.bigint()
  for (const k of keys) await store.get(k)
  get = Math.min(get, Number(process.hrtime.bigint() - t) / N / 1000)
}
await store.close()
console.log(`memory://, 4 KiB, one at a time: put ${put.toFixed(2)} µs, get ${get.toFixed(2)} µs`)
