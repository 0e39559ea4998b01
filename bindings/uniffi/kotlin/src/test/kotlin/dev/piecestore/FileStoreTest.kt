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
    fun `gc reclaims deleted pieces and fsck finds damage`() {
        fileStore(dir).use { s ->
            for (i in 0 until 24) s.putBlocking("gc/$i", piece(i))
            assertEquals(0uL, s.gcBlocking(graceMs = 0uL).packsCompacted)
            for (i in 0 until 20) s.deleteBlocking("gc/$i")
            val r = runBlocking { s.gc(graceMs = 0uL, garbageRatio = 0.5) }
            assertEquals(1uL, r.packsCompacted, r.toString())
            assertEquals(4uL, r.piecesMoved, r.toString())
            assertEquals(1uL, r.packsDeleted, r.toString())
            assertTrue(r.bytesReclaimed > 0uL, r.toString())
            for (i in 20 until 24) assertContentEquals(piece(i), s.getBlocking("gc/$i"))
            assertFailsWith<PieceStoreException.InvalidConfig> { s.gcBlocking(garbageRatio = 1.5) }

            val clean = runBlocking { s.fsck() }
            assertTrue(clean.problems.isEmpty(), clean.toString())
            assertEquals(4uL, clean.packedPieces)
            assertEquals(null, clean.rebuiltPieces)
            s.flushBlocking()
            val pack = Files.list(dir.resolve(".piecestore/packs")).use { l ->
                l.filter { it.toString().endsWith(".pack") }.toList().single()
            }
            val raw = Files.readAllBytes(pack)
            val at = indexOf(raw, piece(22).copyOf(64))
            assertTrue(at >= 0)
            raw[at + 10] = (raw[at + 10].toInt() xor 0xff).toByte()
            Files.write(pack, raw)
            val damaged = s.fsckBlocking()
            assertTrue(damaged.problems.isNotEmpty(), damaged.toString())
            assertTrue(damaged.problems[0].pack != null)
            val rebuilt = s.fsckBlocking(rebuildIndex = true)
            assertTrue(rebuilt.rebuiltPieces != null && rebuilt.problemsBeforeRebuild != null, rebuilt.toString())

            val text = s.metrics()
            assertTrue(text.contains("piecestore_operations_total{backend=\"file\",shard=\"0\",op=\"put\"} 24"), text)
            s.closeBlocking()
            assertFailsWith<PieceStoreException.Closed> { s.gcBlocking() }
            assertFailsWith<PieceStoreException.Closed> { s.fsckBlocking() }
        }
    }

    /** Piece `i` of the gc test: random bytes, so that no piece's bytes occur in another's. */
    private fun piece(i: Int): ByteArray = ByteArray(100 + i * 37).also { java.util.Random(i.toLong()).nextBytes(it) }

    private fun indexOf(hay: ByteArray, needle: ByteArray): Int {
        outer@ for (i in 0..hay.size - needle.size) {
            for (j in needle.indices) if (hay[i + j] != needle[j]) continue@outer
            return i
        }
        return -1
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

    @Test
    fun `shards, placement and packing are visible, and shardOf names a piece's shard`() {
        PieceStore.open("file://${dir.toAbsolutePath()}/s-%d", mapOf("shards" to "4")).use { s ->
            assertEquals(4u, s.shardCount())
            assertEquals(4, s.shardLabels().size)
            s.shardLabels().forEachIndexed { i, label -> assertTrue(label.endsWith("s-$i"), label) }
            assertEquals("fnv-mod", s.placement())
            assertTrue(s.packing().startsWith("on: pieces under 1MiB packed"), s.packing())
            for (i in 0 until 8) {
                val key = "${100 + i}_s0"
                val shard = s.shardOf(key)
                assertTrue(shard < 4u, "$key: shard $shard")
                s.putBlocking(key, key.toByteArray())
                // The shard's directory, opened alone, holds the piece.
                fileStore(dir.resolve("s-$shard")).use { one -> assertContentEquals(key.toByteArray(), one.getBlocking(key)) }
            }
        }
        PieceStore.open("file://${dir.toAbsolutePath()}/plain", mapOf("pack" to "false")).use { s ->
            assertEquals("off (one object per piece)", s.packing())
            assertEquals(1u, s.shardCount())
        }
    }

    @Test
    fun `clearCache empties the cache, and says whether there was one`() {
        val opts = mapOf("cache_memory" to "1MiB", "cache_disk" to dir.resolve("cache").toString())
        PieceStore.open("file://${dir.toAbsolutePath()}/pieces", opts).use { s ->
            s.putBlocking("1_s0", "cached piece".toByteArray())
            repeat(2) { s.getBlocking("1_s0") } // a miss (fetched, then admitted), then a memory hit
            assertTrue(runBlocking { s.clearCache() })
            assertContentEquals("cached piece".toByteArray(), s.getBlocking("1_s0"))
            val text = s.metrics()
            assertTrue(text.contains("piecestore_cache_hits_total{tier=\"memory\"} 1"), text)
            assertTrue(text.contains("piecestore_cache_fetches_total 2"), text)
            assertTrue(s.clearCacheBlocking())
        }
        fileStore(dir.resolve("plain")).use { s -> assertEquals(false, s.clearCacheBlocking()) }
    }

    @Test
    fun `inventory says what a store holds`() {
        PieceStore.open("file://${dir.toAbsolutePath()}/s-%d", mapOf("shards" to "2", "pack" to "false")).use { s ->
            val sizes = listOf(0, 1, 100, 4096, 5000)
            sizes.forEachIndexed { i, n -> s.putBlocking("inv/${i}_s0", pattern(n, i)) }
            // A valid key on the other shard than its own, and a temp file of the original's naming.
            val key = "inv/99_s0"
            val other = 1u - s.shardOf(key)
            PieceStore.open("file://${dir.toAbsolutePath()}/s-$other", mapOf("pack" to "false")).use { it.putBlocking(key, "elsewhere".toByteArray()) }
            Files.write(dir.resolve("s-0").resolve(".7_s0.tmp3"), "x".toByteArray())
            val inv = runBlocking { s.inventory(maxOrphanSamples = 5u) }
            assertEquals(sizes.size.toULong(), inv.pieces, inv.toString())
            assertEquals(sizes.sum().toULong(), inv.bytes)
            assertEquals(5000uL, inv.maxSize)
            assertEquals(sizes.size.toULong(), inv.sizes.sumOf { it.pieces })
            assertEquals(SizeBucket(2049uL, 4096uL, 1uL, 4096uL), inv.sizes.first { it.max == 4096uL })
            assertEquals(2, inv.shards.size)
            assertEquals(1uL, inv.orphans.misplaced)
            assertEquals(1uL, inv.orphans.temp)
            assertEquals(setOf("${other}:$key", "0:.7_s0.tmp3"), inv.orphans.samples.map { "${it.shard}:${it.key}" }.toSet())
            assertEquals(null, inv.packs)
        }
        fileStore(dir.resolve("packed")).use { s ->
            for (i in 0 until 6) s.putBlocking("p/${i}_s0", pattern(100 + i, i))
            val packs = s.inventoryBlocking().packs
            assertEquals(6uL, packs?.pieces, packs.toString())
            assertTrue(packs!!.fill > 0.0 && packs.fill <= 1.0, packs.toString())
        }
    }

    @Test
    fun `migrateTo copies verified, skips what is there, lists failures`() {
        fileStore(dir.resolve("src")).use { src ->
            PieceStore.open("file://${dir.toAbsolutePath()}/dest", mapOf("pack" to "false")).use { dest ->
                for (i in 0 until 8) src.putBlocking("mig/${i}_s0", pattern(100 + i * 37, i))
                dest.putBlocking("mig/0_s0", pattern(100, 0))
                val dry = src.migrateToBlocking(dest, dryRun = true)
                assertEquals(listOf(7uL, 1uL, 0uL), listOf(dry.copied, dry.skipped, dry.failed), dry.toString())
                val r = runBlocking { src.migrateTo(dest, concurrency = 2u) }
                assertEquals(listOf(8uL, 7uL, 1uL, 0uL), listOf(r.totalPieces, r.copied, r.skipped, r.failed), r.toString())
                for (i in 0 until 8) assertContentEquals(pattern(100 + i * 37, i), dest.getBlocking("mig/${i}_s0"))
                src.putBlocking("mig/9_s0", "source bytes".toByteArray())
                dest.putBlocking("mig/9_s0", "other bytes!".toByteArray())
                val conflict = src.migrateToBlocking(dest)
                assertEquals(1uL, conflict.failed)
                assertEquals(listOf("mig/9_s0" to "PIECE_EXISTS"), conflict.failures.map { it.key to it.code })
            }
        }
    }

    /** Records a long call's progress; called from the library's threads. */
    private class Recorder : ProgressListener {
        val calls: MutableList<Pair<ULong, ULong>> = java.util.Collections.synchronizedList(mutableListOf())

        override fun onProgress(done: ULong, total: ULong) {
            calls.add(done to total)
        }
    }

    @Test
    fun `gc, fsck, migrateTo and inventory report progress to a Kotlin listener`() {
        fileStore(dir.resolve("pr")).use { s ->
            for (i in 0 until 24) s.putBlocking("pr/${i}_s0", piece(i))
            for (i in 0 until 20) s.deleteBlocking("pr/${i}_s0")
            val gc = Recorder()
            val r = runBlocking { s.gc(graceMs = 0uL, progress = gc) }
            assertEquals(1uL, r.packsCompacted)
            assertTrue(gc.calls.isNotEmpty(), "gc reported nothing")
            assertTrue(gc.calls.all { (d, t) -> t > 0uL && d <= t }, gc.calls.toString())
            assertEquals(gc.calls.last().second, gc.calls.last().first, gc.calls.toString())
            val fsck = Recorder()
            val f = s.fsckBlocking(progress = fsck)
            assertTrue(fsck.calls.isNotEmpty() && fsck.calls.last() == (f.bytes to 0uL), "${fsck.calls} of ${f.bytes}")
        }
        memoryStore().use { src ->
            memoryStore().use { dest ->
                val n = 2500
                src.putManyBlocking((0 until n).map { PieceItem("m/${it}_s0", it.toString().toByteArray()) })
                val mig = Recorder()
                val m = runBlocking { src.migrateTo(dest, concurrency = 4u, progress = mig) }
                assertEquals(n.toULong(), m.copied)
                // One report once the source is listed, then one per piece.
                assertEquals(n + 1, mig.calls.size)
                assertEquals((0..n).map { it.toULong() }.toSet(), mig.calls.map { it.first }.toSet())
                assertTrue(mig.calls.all { it.second == n.toULong() })
                val inv = Recorder()
                assertEquals(n.toULong(), src.inventoryBlocking(progress = inv).pieces)
                assertEquals(listOf(1000uL to 0uL, 2000uL to 0uL), inv.calls.toList())
            }
        }
    }

    @Test
    fun `getStream reads a large piece in verified chunks`() {
        PieceStore.open("file://${dir.toAbsolutePath()}/plain", mapOf("pack" to "false")).use { s ->
            val data = pattern(3 * 1024 * 1024 + 5, 4)
            s.putBlocking("8_s0", data)
            val reader = runBlocking { s.getStream("8_s0") }
            assertEquals(data.size.toULong(), reader.info().size)
            val out = java.io.ByteArrayOutputStream()
            var chunks = 0
            while (true) {
                val chunk = reader.nextChunkBlocking() ?: break
                out.write(chunk)
                chunks++
            }
            assertTrue(chunks >= 3, "$chunks chunks")
            assertContentEquals(data, out.toByteArray())
            assertEquals(null, runBlocking { reader.nextChunk() })
            // A flipped byte: Corrupt in place of the last chunk.
            val file = dir.resolve("plain").resolve("8_s0")
            val raw = Files.readAllBytes(file)
            raw[2 * 1024 * 1024 + 17] = (raw[2 * 1024 * 1024 + 17].toInt() xor 1).toByte()
            Files.write(file, raw)
            val bad = s.getStreamBlocking("8_s0")
            assertFailsWith<PieceStoreException.Corrupt> { while (bad.nextChunkBlocking() != null) Unit }
            assertFailsWith<PieceStoreException.NotFound> { s.getStreamBlocking("8_s9") }
        }
    }
}
