// Type-checked with `tsc --strict` in CI: the package's index.d.ts must describe this usage.
import { PieceStore, ecKey, parseKey, configureRuntime, type PieceInfo, type StoreOptions, type GcReport, type FsckReport, type FsckProblem } from 'piecestore'

async function main(): Promise<void> {
  configureRuntime({ workerThreads: 2 })
  const options: StoreOptions = {
    shards: 2,
    maxRetries: 3,
    requestTimeout: 2.5,
    connectTimeout: '1500ms',
    fsync: false,
    placement: 'jump',
    conditionalWrites: 'on',
  }
  const store: PieceStore = await PieceStore.open('/tmp/piecestore-typed-%d', options)
  const key: string = ecKey(1, 0, 2, 5)
  await store.put(key, new Uint8Array([1, 2, 3]), { overwrite: true })
  const piece: Buffer = await store.get(key)
  const part: Buffer = await store.getRange(key, 1, 2)
  const info: PieceInfo = await store.head(key)
  const when: Date = info.lastModified
  const crc: number | null = info.crc32c
  const many: Buffer[] = await store.getMany([key])
  const there: boolean = await store.exists(key)
  for await (const listed of store.list('e1_')) {
    const size: number = listed.size
    console.log(size)
  }
  const { objectId, ecIndex, version } = parseKey(key)
  const summary = await store.deletePrefix('e1_')
  console.log(piece, part, when, crc, many, there, objectId, ecIndex, version, summary.pieces, store.shardCount)
  await store.flush()
  const gc: GcReport = await store.gc({ grace: 0, garbageRatio: 0.5, onProgress: (done: number, total: number) => console.log(done, total) })
  const firstDue: Date | null = gc.doomed.firstDue
  const fsck: FsckReport = await store.fsck({ rebuildIndex: false, onProgress: (bytes: number) => console.log(bytes) })
  const problems: FsckProblem[] = fsck.problems
  console.log(gc.piecesMoved, firstDue, problems.length, fsck.rebuiltPieces)
  try {
    await store.get(key)
  } catch (e) {
    const code: string = (e as { code: string }).code
    console.log(code)
  }
  await store.close()
}

void main()
