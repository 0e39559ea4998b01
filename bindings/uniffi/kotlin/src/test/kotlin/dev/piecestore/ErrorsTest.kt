package dev.piecestore

import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertContains
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertNull
import kotlin.test.assertTrue
import kotlinx.coroutines.runBlocking

/** Every error kind a local store can produce, from blocking and suspend calls. */
class ErrorsTest {
    @Test
    fun `not found`(): Unit = memoryStore().use { s ->
        val e = assertFailsWith<PieceStoreException.NotFound> { s.getBlocking("missing/1") }
        assertEquals("missing/1", e.key)
        assertEquals("memory://", e.backend)
        assertFalse(e.retryable)
        assertContains(e.detail, "missing/1")
        // The exception's message carries the core's message.
        assertContains(e.message, e.detail)
        assertFailsWith<PieceStoreException.NotFound> { s.headBlocking("missing/1") }
        assertFailsWith<PieceStoreException.NotFound> { s.getRangeBlocking("missing/1", 0UL, 1UL) }
        runBlocking {
            val a = assertFailsWith<PieceStoreException.NotFound> { s.get("missing/2") }
            assertEquals("missing/2", a.key)
            assertFailsWith<PieceStoreException.NotFound> { s.head("missing/2") }
        }
        assertFalse(s.existsBlocking("missing/1"))
    }

    @Test
    fun `already exists, same bytes again, overwrite`(): Unit = memoryStore().use { s ->
        s.putBlocking("k", pattern(100, 1))
        // The same bytes again: fine (puts are idempotent).
        s.putBlocking("k", pattern(100, 1))
        val e = assertFailsWith<PieceStoreException.AlreadyExists> { s.putBlocking("k", pattern(100, 2)) }
        assertEquals("k", e.key)
        assertContains(e.message, e.detail)
        runBlocking { assertFailsWith<PieceStoreException.AlreadyExists> { s.put("k", pattern(5, 3)) } }
        assertContentEquals(pattern(100, 1), s.getBlocking("k"))

        s.putBlocking("k", pattern(100, 2), overwrite = true)
        assertContentEquals(pattern(100, 2), s.getBlocking("k"))
        runBlocking { s.put("k", pattern(9, 4), overwrite = true) }
        assertContentEquals(pattern(9, 4), s.getBlocking("k"))
    }

    @Test
    fun `invalid keys`(): Unit = memoryStore().use { s ->
        for (key in listOf("", "../x", "a/../b", "/a", "a/", "a//b", ".piecestore/x", "a\u0000b", "x#12", "k".repeat(1025))) {
            val e = assertFailsWith<PieceStoreException.InvalidKey>("key ${key.take(20)}") { s.putBlocking(key, pattern(1)) }
            assertEquals(key.take(200), e.key)
            assertContains(e.message, "invalid key")
            assertFailsWith<PieceStoreException.InvalidKey> { s.getBlocking(key) }
        }
        runBlocking { assertFailsWith<PieceStoreException.InvalidKey> { s.get("../etc/passwd") } }
    }

    @Test
    fun `invalid range`(): Unit = memoryStore().use { s ->
        s.putBlocking("r", pattern(10))
        for ((offset, length) in listOf(0UL to 11UL, 10UL to 1UL, 11UL to 0UL, ULong.MAX_VALUE to 2UL)) {
            val e = assertFailsWith<PieceStoreException.InvalidRange>("$offset+$length") { s.getRangeBlocking("r", offset, length) }
            assertEquals("r", e.key)
            assertContains(e.detail, "10 bytes")
        }
        runBlocking { assertFailsWith<PieceStoreException.InvalidRange> { s.getRange("r", 5UL, 6UL) } }
    }

    @Test
    fun `invalid config`() {
        assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.open("nosuch://bucket") }
        val bad = assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.open("memory://", mapOf("shards" to "four")) }
        assertContains(bad.message, "four")
        assertNull(bad.key)
        assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.open("memory://", mapOf("no_such_option" to "1")) }
        assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.open("memory://?shards=x") }
        // PieceStore's own tables are strict (the original's ignore unknown fields, as it does).
        assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.fromToml("[PieceStore.Backend]\nNoSuchField = 1") }
        assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.fromToml("this is not toml") }
        runBlocking { assertFailsWith<PieceStoreException.InvalidConfig> { PieceStore.openAsync("nosuch://bucket") } }
    }

    @Test
    fun `closed after close`() {
        val s = memoryStore()
        s.putBlocking("c", pattern(3))
        assertFalse(s.isClosed())
        s.closeBlocking()
        assertTrue(s.isClosed())
        assertFailsWith<PieceStoreException.Closed> { s.getBlocking("c") }
        assertFailsWith<PieceStoreException.Closed> { s.putBlocking("d", pattern(1)) }
        assertFailsWith<PieceStoreException.Closed> { s.listBlocking() }
        s.closeBlocking() // closing twice is fine
        s.close() // AutoCloseable: frees the native handle

        val t = memoryStore()
        runBlocking {
            t.closeStore()
            assertTrue(t.isClosed())
            val e = assertFailsWith<PieceStoreException.Closed> { t.get("c") }
            assertContains(e.message, "closed")
        }
        t.close()
    }

    @Test
    fun `the runtime cannot be configured once started`() {
        memoryStore().use { it.putBlocking("started", pattern(1)) }
        val e = assertFailsWith<PieceStoreException.InvalidConfig> { configureRuntime(workerThreads = 2u) }
        assertContains(e.message, "already started")
        assertFailsWith<PieceStoreException.InvalidConfig> { configureRuntime(workerThreads = 0u) }
    }

    @Test
    fun `every variant is a PieceStoreException`(): Unit = memoryStore().use { s ->
        val e: PieceStoreException = assertFailsWith<PieceStoreException> { s.getBlocking("nope") }
        val kind = when (e) {
            is PieceStoreException.NotFound -> "not found"
            is PieceStoreException.AlreadyExists, is PieceStoreException.InvalidKey,
            is PieceStoreException.InvalidRange, is PieceStoreException.InvalidConfig,
            is PieceStoreException.Corrupt, is PieceStoreException.Unauthorized,
            is PieceStoreException.Backend, is PieceStoreException.Closed,
            is PieceStoreException.BucketNotFound, is PieceStoreException.Other -> "other"
        }
        assertEquals("not found", kind)
    }
}
