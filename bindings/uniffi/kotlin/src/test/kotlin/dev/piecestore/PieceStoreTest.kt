package dev.piecestore

import java.time.Duration
import java.time.Instant
import java.util.zip.CRC32C
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking

class PieceStoreTest {
    private val sizes = listOf(0, 1, 4096, 1024 * 1024 + 17)

    @Test
    fun `round trip of 0 B, small and 1 MiB+ pieces, blocking`(): Unit = memoryStore().use { s ->
        for (n in sizes) {
            val data = pattern(n, n)
            s.putBlocking("rt/$n", data)
            assertContentEquals(data, s.getBlocking("rt/$n"), "size $n")
            assertTrue(s.existsBlocking("rt/$n"))
        }
    }

    @Test
    fun `round trip with suspend calls`(): Unit = runBlocking {
        memoryStore().use { s ->
            for (n in sizes) {
                val data = pattern(n, n + 1)
                s.put("rt/$n", data)
                assertContentEquals(data, s.get("rt/$n"), "size $n")
                assertTrue(s.exists("rt/$n"))
            }
            assertFalse(s.exists("rt/none"))
        }
    }

    @Test
    fun `get range`(): Unit = memoryStore().use { s ->
        val data = pattern(1000)
        s.putBlocking("r", data)
        assertContentEquals(data.copyOfRange(10, 110), s.getRangeBlocking("r", 10UL, 100UL))
        assertContentEquals(data, s.getRangeBlocking("r", 0UL, 1000UL))
        assertEquals(0, s.getRangeBlocking("r", 1000UL, 0UL).size)
        runBlocking { assertContentEquals(data.copyOfRange(990, 1000), s.getRange("r", 990UL, 10UL)) }
    }

    @Test
    fun `head fields`(): Unit = memoryStore().use { s ->
        val data = pattern(12345)
        val before = Instant.now().minusSeconds(5)
        s.putBlocking("h/1", data)
        val info = s.headBlocking("h/1")
        assertEquals("h/1", info.key)
        assertEquals(12345UL, info.size)
        val crc = CRC32C().apply { update(data) }.value
        assertEquals(crc, info.crc32c?.toLong())
        assertTrue(info.lastModified.isAfter(before), "lastModified ${info.lastModified}")
        assertTrue(info.lastModified.isBefore(Instant.now().plus(Duration.ofSeconds(5))))
        assertEquals(info, runBlocking { s.head("h/1") })
    }

    @Test
    fun `list and delete prefix`(): Unit = memoryStore().use { s ->
        s.putBlocking("a/1", pattern(10))
        s.putBlocking("a/2", pattern(20))
        s.putBlocking("ab", pattern(30))
        s.putBlocking("b/1", pattern(40))
        assertEquals(listOf("a/1", "a/2"), s.listBlocking("a/").map { it.key }.sorted())
        assertEquals(listOf("a/1", "a/2", "ab", "b/1"), s.listBlocking().map { it.key }.sorted())
        assertEquals(listOf(10UL, 20UL), s.listBlocking("a/").sortedBy { it.key }.map { it.size })
        assertEquals(emptyList(), s.listBlocking("zzz"))

        assertEquals(DeleteSummary(pieces = 2UL, bytes = 30UL), s.deletePrefixBlocking("a/"))
        assertEquals(listOf("ab", "b/1"), s.listBlocking().map { it.key }.sorted())
        runBlocking {
            assertEquals(listOf("b/1"), s.list("b/").map { it.key })
            assertEquals(DeleteSummary(1UL, 40UL), s.deletePrefix("b"))
            assertEquals(listOf("ab"), s.list().map { it.key })
        }
        assertEquals(DeleteSummary(0UL, 0UL), s.deletePrefixBlocking("nothing/"))
    }

    @Test
    fun `delete is idempotent`(): Unit = memoryStore().use { s ->
        s.putBlocking("d", pattern(5))
        s.deleteBlocking("d")
        assertFalse(s.existsBlocking("d"))
        s.deleteBlocking("d")
        runBlocking { s.delete("d") }
    }

    @Test
    fun `from toml, options, openAsync, flush, toString and version`() {
        val toml = """
            [PieceStore]
            [PieceStore.Store]
            BucketURL = "memory://"
        """.trimIndent()
        PieceStore.fromToml(toml).use { s ->
            s.putBlocking("t", pattern(3))
            s.flushBlocking()
            assertContentEquals(pattern(3), s.getBlocking("t"))
            assertTrue(s.toString().contains("memory://"), s.toString())
        }
        PieceStore.open("memory://", mapOf("max_retries" to "2", "request_timeout" to "2s")).use { it.putBlocking("o", pattern(1)) }
        runBlocking {
            PieceStore.openAsync("memory://").use { s ->
                s.put("a", pattern(7))
                s.flush()
                assertContentEquals(pattern(7), s.get("a"))
            }
        }
        assertTrue(version().matches(Regex("""\d+\.\d+\.\d+.*""")), version())
    }

    @Test
    fun `putMany and getMany, the first failure thrown`(): Unit = memoryStore().use { s ->
        val items = listOf(0, 1, 4096, 70000).mapIndexed { i, n -> PieceItem("many/${i}_s0", pattern(n, i)) }
        runBlocking { s.putMany(items) }
        val got = s.getManyBlocking(items.map { it.key })
        assertEquals(items.size, got.size)
        items.forEachIndexed { i, item -> assertContentEquals(item.data, got[i]) }
        s.putManyBlocking(items) // the same bytes again: a retried put
        val changed = listOf(items[0], PieceItem(items[2].key, "other".toByteArray()))
        assertFailsWith<PieceStoreException.AlreadyExists> { s.putManyBlocking(changed) }
        s.putManyBlocking(changed, overwrite = true)
        assertContentEquals("other".toByteArray(), s.getBlocking(items[2].key))
        assertFailsWith<PieceStoreException.NotFound> { runBlocking { s.getMany(listOf(items[0].key, "many/missing_s0")) } }
        assertFailsWith<PieceStoreException.InvalidKey> { s.getManyBlocking(listOf("../x")) }
        assertEquals(emptyList(), s.getManyBlocking(emptyList()))
    }
}
