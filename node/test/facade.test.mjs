// The Node column of bindings/FACADE.tsv against the addon: every name it gives exists on
// PieceStore (or its prototype), and every public method or getter of PieceStore is in the table.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync } from 'node:fs'
import path from 'node:path'

import { PieceStore } from '../index.js'
import { ROOT } from './helpers.mjs'

function column(name) {
  const lines = readFileSync(path.join(ROOT, 'bindings', 'FACADE.tsv'), 'utf8')
    .split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'))
  const header = lines[0].split('\t')
  assert.deepEqual(header, ['core', 'python', 'node', 'go', 'uniffi', 'note'])
  const i = header.indexOf(name)
  return new Map(lines.slice(1).map((l) => {
    const cells = l.split('\t')
    assert.equal(cells.length, header.length, l)
    return [cells[0], cells[i].split(',')]
  }))
}

const has = (n) => n === 'constructor' ? typeof PieceStore === 'function' : (n in PieceStore || n in PieceStore.prototype)

test('every Node name in bindings/FACADE.tsv exists', () => {
  let named = 0
  for (const [core, names] of column('node')) {
    for (const n of names) {
      if (n === '-' || n === 'MISSING') continue
      assert.ok(has(n), `PieceStore.${n} (for ${core}) is gone`)
      named++
    }
  }
  assert.ok(named >= 20, `${named}`)
})

test('every public method and getter of PieceStore is in bindings/FACADE.tsv', () => {
  const named = new Set([...column('node').values()].flat())
  const own = [
    ...Object.getOwnPropertyNames(PieceStore.prototype),
    ...Object.getOwnPropertyNames(PieceStore).filter((n) => typeof PieceStore[n] === 'function'),
  ].filter((n) => n !== 'constructor' && !n.startsWith('_'))
  const unlisted = own.filter((n) => !named.has(n))
  assert.deepEqual(unlisted, [], `PieceStore members missing from bindings/FACADE.tsv: ${unlisted}`)
})
