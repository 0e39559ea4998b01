package dev.piecestore

import java.net.ServerSocket
import java.net.Socket
import java.util.concurrent.CountDownLatch
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import kotlin.test.assertFailsWith
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
import kotlinx.coroutines.TimeoutCancellationException
import kotlinx.coroutines.flow.count
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
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

    /**
     * An S3 endpoint on 127.0.0.1 that answers listings (the store's checks at open) with an
     * empty bucket and never answers anything else: it holds the request and counts down
     * `held` when one arrives and `closed` when the client closes that connection.
     */
    private class SilentS3 : AutoCloseable {
        val server = ServerSocket(0, 50, java.net.InetAddress.getLoopbackAddress())
        val held = CountDownLatch(1)
        val closed = CountDownLatch(1)
        private val acceptor = Thread { while (!server.isClosed) runCatching { serve(server.accept()) } }.apply { isDaemon = true; start() }

        private fun serve(c: Socket) = Thread {
            c.use {
                val input = c.getInputStream().bufferedReader(Charsets.ISO_8859_1)
                while (true) {
                    val line = input.readLine() ?: return@Thread
                    var length = 0
                    while (true) {
                        val h = input.readLine() ?: return@Thread
                        if (h.isEmpty()) break
                        if (h.lowercase().startsWith("content-length:")) length = h.substringAfter(':').trim().toInt()
                    }
                    repeat(length) { input.read() }
                    if ("list-type" in line) {
                        val body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">" +
                            "<Name>held-bucket</Name><Prefix></Prefix><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated></ListBucketResult>"
                        val out = c.getOutputStream()
                        out.write("HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: ${body.length}\r\n\r\n$body".toByteArray())
                        out.flush()
                    } else {
                        held.countDown()
                        // Never answer; wait for the client to give up on this connection.
                        while (input.read() != -1) Unit
                        closed.countDown()
                        return@Thread
                    }
                }
            }
        }.apply { isDaemon = true; start() }

        override fun close() = server.close()
    }

    @Test
    fun `cancelling a coroutine cancels the call in the core`(): Unit = runBlocking {
        SilentS3().use { s3 ->
            val options = mapOf(
                "access_key" to "test-access", "secret_key" to "test-secret", "region" to "us-east-1",
                "pack" to "false", "max_retries" to "0", "request_timeout" to "120s",
            )
            PieceStore.open("http://127.0.0.1:${s3.server.localPort}/held-bucket", options).use { s ->
                assertFailsWith<TimeoutCancellationException> { withTimeout(2_000) { s.get("held/1") } }
                assertTrue(s3.held.await(0, TimeUnit.SECONDS), "the get never reached the server")
                // The core dropped the request: its connection closes now, not at the 120 s
                // request timeout.
                assertTrue(s3.closed.await(10, TimeUnit.SECONDS), "the cancelled get still holds its connection")
            }
        }
    }

    @Test
    fun `listing 100000 pieces streams in batches`(): Unit = runBlocking {
        memoryStore().use { s ->
            val n = 100_000
            for (i in 0 until n) s.putBlocking("many/${i.toString().padStart(6, '0')}", byteArrayOf(i.toByte()))
            s.putBlocking("other/x", byteArrayOf(1))
            // The listing comes in bounded batches, and ends with an empty one.
            s.listStream("many/").use { l ->
                var total = 0
                var batches = 0
                val seen = HashSet<String>()
                while (true) {
                    val b = l.nextBatchBlocking(4096u)
                    if (b.isEmpty()) break
                    assertTrue(b.size <= 4096, "a batch of ${b.size}")
                    b.forEach { assertTrue(seen.add(it.key), "listed twice: ${it.key}") }
                    total += b.size
                    batches++
                }
                assertEquals(n, total)
                assertTrue(batches >= n / 4096, "$batches batches")
                assertTrue(l.nextBatchBlocking(10u).isEmpty(), "a finished listing stays finished")
            }
            // As a Flow: every piece once, and a collector that stops early stops the listing.
            assertEquals(n, s.listFlow("many/", 1000u).count())
            assertEquals(5, s.listFlow("many/").take(5).toList().size)
            assertEquals(listOf("other/x"), s.listFlow("other/").toList().map { it.key })
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
