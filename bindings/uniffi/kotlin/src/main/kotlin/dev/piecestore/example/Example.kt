// A tour of the Kotlin API: a file store in a temporary directory (or the directory given as
// the first argument), blocking calls, a suspend call, and the error classes.
package dev.piecestore.example

import dev.piecestore.PieceStore
import dev.piecestore.PieceStoreException
import kotlinx.coroutines.runBlocking
import java.nio.file.Files
import java.nio.file.Path

fun main(args: Array<String>) {
    val dir: Path = args.firstOrNull()?.let { Path.of(it) } ?: Files.createTempDirectory("piecestore-example")

    // `use` frees the native handle at the end (the garbage collector would, later).
    PieceStore.open("file://${dir.toAbsolutePath()}").use { store ->
        // Blocking calls: for Java and plain threads.
        store.putBlocking("42_s0", "hello, pieces".toByteArray())
        println(String(store.getBlocking("42_s0"))) // hello, pieces
        println(String(store.getRangeBlocking("42_s0", 7UL, 6UL))) // pieces

        // A different piece under an existing key is an error; the same bytes again are not.
        store.putBlocking("42_s0", "hello, pieces".toByteArray())
        try {
            store.putBlocking("42_s0", "other bytes".toByteArray())
        } catch (e: PieceStoreException.AlreadyExists) {
            println("already exists: ${e.key}")
        }

        try {
            store.getBlocking("43_s0")
        } catch (e: PieceStoreException.NotFound) {
            println("not found: ${e.key} (${e.detail})")
        }

        // Suspend calls: from coroutines; they run on the core's runtime, not on this thread.
        runBlocking {
            store.put("42_s1", ByteArray(64 * 1024) { it.toByte() })
            val info = store.head("42_s1")
            println("${info.key}: ${info.size} bytes, crc32c ${info.crc32c}")
        }

        for (info in store.listBlocking("42_")) {
            println("listed ${info.key} (${info.size} bytes, stored ${info.lastModified})")
        }

        val removed = store.deletePrefixBlocking("42_")
        println("deleted ${removed.pieces} pieces, ${removed.bytes} bytes")
        store.closeBlocking()
    }
}
