package dev.piecestore

import java.util.concurrent.Executors
import kotlin.test.Test
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertTrue
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.asCoroutineDispatcher
import kotlinx.coroutines.async
import kotlinx.coroutines.awaitAll
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import kotlinx.coroutines.withTimeout

/** Many suspend calls at once: they run on the core's runtime, and none of them blocks a dispatcher thread. */
class AsyncTest {
    @Test
    fun `64 concurrent puts and gets on Dispatchers Default`(): Unit = runBlocking {
        memoryStore().use { s ->
            withTimeout(60_000) {
                withContext(Dispatchers.Default) {
                    (0 until 64).map { i -> async { s.put("c/$i", pattern(1000 + i * 100, i)) } }.awaitAll()
                    val got = (0 until 64).map { i -> async { s.get("c/$i") } }.awaitAll()
                    got.forEachIndexed { i, data -> assertContentEquals(pattern(1000 + i * 100, i), data, "piece $i") }
                    val heads = (0 until 64).map { i -> async { s.head("c/$i") } }.awaitAll()
                    assertEquals((0 until 64).map { 1000UL + it.toULong() * 100UL }, heads.map { it.size })
                }
            }
            assertEquals(64, s.list("c/").size)
        }
    }

    @Test
    fun `suspend calls on a one-thread dispatcher do not block it`() {
        // 256 calls in flight on one thread: only possible if none of them blocks that thread.
        val one = Executors.newSingleThreadExecutor()
        try {
            runBlocking(one.asCoroutineDispatcher()) {
                memoryStore().use { s ->
                    (0 until 256).map { i -> async { s.put("one/$i", pattern(64, i)); s.get("one/$i") } }
                        .awaitAll()
                        .forEachIndexed { i, data -> assertContentEquals(pattern(64, i), data) }
                }
            }
        } finally {
            one.shutdown()
        }
    }

    @Test
    fun `blocking calls from many threads`() {
        memoryStore().use { s ->
            val threads = (0 until 16).map { t ->
                Thread {
                    for (i in 0 until 20) {
                        s.putBlocking("t$t/$i", pattern(100, t * 100 + i))
                        check(s.getBlocking("t$t/$i").contentEquals(pattern(100, t * 100 + i)))
                    }
                }.apply { start() }
            }
            threads.forEach { it.join() }
            assertEquals(320, s.listBlocking("t").size)
        }
    }

    @Test
    fun `async errors propagate as exceptions`(): Unit = runBlocking {
        memoryStore().use { s ->
            val results = (0 until 32).map { i ->
                async(Dispatchers.Default) { runCatching { s.get("absent/$i") }.exceptionOrNull() }
            }.awaitAll()
            results.forEach { assertTrue(it is PieceStoreException.NotFound, "got $it") }
        }
    }
}
