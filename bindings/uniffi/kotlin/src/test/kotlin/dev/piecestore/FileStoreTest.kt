package dev.piecestore

import java.nio.file.Files
import java.nio.file.Path
import kotlin.io.path.exists
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.io.TempDir

/** File stores: pieces survive closing and reopening the store. */
class FileStoreTest {
    @TempDir
    lateinit var dir: Path

    @Test
    fun `pieces survive a reopen`() {
        val big = pattern(1024 * 1024 + 3, 9)
        fileStore(dir).use { s ->
            s.putBlocking("dur/0", ByteArray(0))
            s.putBlocking("dur/small", pattern(33))
            runBlocking { s.put("dur/big", big) }
            s.closeBlocking()
        }
        fileStore(dir).use { s ->
            assertEquals(0, s.getBlocking("dur/0").size)
            assertContentEquals(pattern(33), s.getBlocking("dur/small"))
            assertContentEquals(big, runBlocking { s.get("dur/big") })
            assertEquals(listOf("dur/0", "dur/big", "dur/small"), s.listBlocking("dur/").map { it.key }.sorted())
            assertEquals(big.size.toULong(), s.headBlocking("dur/big").size)
            // Immutability holds across a reopen too.
            assertFailsWith<PieceStoreException.AlreadyExists> { s.putBlocking("dur/small", pattern(33, 1)) }
        }
        // A plain directory path is a spec too.
        PieceStore.open(dir.toAbsolutePath().toString()).use { s ->
            assertContentEquals(pattern(33), s.getBlocking("dur/small"))
            assertTrue(s.toString().contains(dir.fileName.toString()), s.toString())
        }
    }

    @Test
    fun `a file store from a toml file`() {
        val data = dir.resolve("data")
        val config = dir.resolve("config.toml")
        Files.writeString(config, "[PieceStore]\n[PieceStore.Store]\nBucketURL = \"file://${data.toAbsolutePath()}\"\n")
        PieceStore.open(config.toString()).use { s ->
            s.putBlocking("from/toml", pattern(77))
            s.closeBlocking()
        }
        assertTrue(data.exists())
        // A config with only the original's tables keeps the original's layout: the file holds
        // exactly the piece, and a URL reads it back when told that layout.
        assertContentEquals(pattern(77), Files.readAllBytes(data.resolve("from/toml")))
        PieceStore.open("file://${data.toAbsolutePath()}", mapOf("layout" to "original")).use {
            assertContentEquals(pattern(77), it.getBlocking("from/toml"))
        }
    }

    @Test
    fun `the example runs`() {
        dev.piecestore.example.main(arrayOf(dir.resolve("example").toString()))
        fileStore(dir.resolve("example")).use { s -> assertEquals(emptyList(), s.listBlocking()) }
    }
}
