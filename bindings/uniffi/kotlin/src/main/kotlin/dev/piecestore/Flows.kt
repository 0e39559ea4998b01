package dev.piecestore

import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.flow.flow

/**
 * The pieces whose key starts with [prefix], as a cold [Flow]: each collection starts a new
 * listing and reads it in batches of [batch] pieces ([PieceList.nextBatch]), so a listing of
 * millions of pieces never sits in memory at once. Cancelling the collector cancels the batch
 * in flight in the core.
 */
fun PieceStore.listFlow(prefix: String = "", batch: UInt = 1000u): Flow<PieceInfo> = flow {
    listStream(prefix).use { listing ->
        while (true) {
            val pieces = listing.nextBatch(batch)
            if (pieces.isEmpty()) break
            for (p in pieces) emit(p)
        }
    }
}
