// Test fixtures: stores on memory, a temp directory, and real S3-compatible servers started on
// 127.0.0.1 (moto, and s3s-fs where credentials must be checked), as the core's suite does.
// Under CI=true a missing server fails the test instead of skipping it.
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, existsSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { fileURLToPath } from 'node:url'

import { PieceStore } from '../index.js'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')
export const S3_KEYS = { accessKey: 'node-test-access', secretKey: 'node-secret-do-not-print' }

// Every temp directory a test process made is removed when it exits (a server still running in
// one is killed right after), so repeated runs do not fill the disk: the round-trip tests write
// over 100 MiB to each file store.
const made = []
process.on('exit', () => {
  for (const d of made) rmSync(d, { recursive: true, force: true })
})

export function tempDir(prefix = 'ps-node-') {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix))
  made.push(d)
  return d
}

function findBinary(name) {
  const candidates = [
    path.join(ROOT, 'target', 'test-venv', 'bin', name),
    path.join(os.homedir(), '.cargo', 'bin', name),
  ]
  for (const c of candidates) if (existsSync(c)) return c
  try {
    return execFileSync('which', [name]).toString().trim() || null
  } catch {
    return null
  }
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

async function waitForPort(port, child, name) {
  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited with ${child.exitCode}`)
    const up = await new Promise((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.end()
        resolve(true)
      })
      s.on('error', () => resolve(false))
    })
    if (up) return
    if (Date.now() > deadline) throw new Error(`${name} did not start on 127.0.0.1:${port}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

const servers = new Map()

/**
 * Starts `kind` ('moto' or 's3s-fs') once per test process; resolves to
 * `{ endpoint, accessKey, secretKey }`, or null (the test skips) when the server is not
 * installed outside CI.
 */
export async function server(t, kind = 'moto') {
  if (!servers.has(kind)) servers.set(kind, start(kind))
  const s = await servers.get(kind)
  if (!s) {
    if (process.env.CI === 'true') throw new Error(`${kind} not found (bash scripts/test.sh installs it)`)
    t.skip(`${kind} not installed`)
  }
  return s
}

async function start(kind) {
  const exe = findBinary(kind === 'moto' ? 'moto_server' : 's3s-fs')
  if (!exe) return null
  const port = await freePort()
  let args
  let keys = S3_KEYS
  if (kind === 'moto') {
    args = ['-H', '127.0.0.1', '-p', String(port)]
  } else {
    keys = { accessKey: randomBytes(10).toString('hex').toUpperCase(), secretKey: randomBytes(20).toString('hex') }
    args = ['--host', '127.0.0.1', '--port', String(port), '--access-key', keys.accessKey, '--secret-key', keys.secretKey, tempDir('ps-s3s-')]
  }
  const child = spawn(exe, args, { stdio: 'ignore' })
  child.unref()
  process.on('exit', () => child.kill())
  await waitForPort(port, child, kind)
  return { endpoint: `http://127.0.0.1:${port}`, ...keys, kind }
}

/** A fresh bucket-set URL on the server (the buckets are created at open: `create_bucket`). */
export function s3Url(s, shards = 4) {
  const name = `node-${randomBytes(6).toString('hex')}`
  return shards
    ? `${s.endpoint}/${name}-%d?shards=${shards}&create_bucket=true`
    : `${s.endpoint}/${name}?create_bucket=true`
}

export const BACKENDS = ['memory', 'file', 's3']

/** A new store on `kind`: memory, a temp directory, or a 4-bucket set on moto. */
export async function open(t, kind) {
  if (kind === 'memory') return new PieceStore('memory://')
  if (kind === 'file') return new PieceStore(path.join(tempDir(), 'pieces'))
  const s = await server(t, 'moto')
  return new PieceStore(s3Url(s), { region: 'us-east-1', accessKey: s.accessKey, secretKey: s.secretKey })
}

/** Deterministic bytes of length `n` (not all equal, so a shifted read would show). */
export function pattern(n, seed = 1) {
  const b = Buffer.allocUnsafe(n)
  let x = seed * 2654435761 >>> 0
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0
    b[i] = x >>> 24
  }
  return b
}

/** Awaits `p` and returns the error it rejects with (fails if it resolves). */
export async function rejection(p) {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected the promise to reject, but it resolved')
}
