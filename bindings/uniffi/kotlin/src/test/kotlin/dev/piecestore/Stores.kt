package dev.piecestore

import java.nio.file.Path

/** A fresh in-memory store. */
fun memoryStore(): PieceStore = PieceStore.open("memory://")

/** A file store in `dir`, as a `file://` URL. */
fun fileStore(dir: Path): PieceStore = PieceStore.open("file://${dir.toAbsolutePath()}")

/** `n` bytes of a repeatable pattern that differs with `seed`. */
fun pattern(n: Int, seed: Int = 0): ByteArray = ByteArray(n) { ((it * 31 + seed * 7) xor (it ushr 8)).toByte() }
