package dev.foxedge

import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.buffer
import kotlinx.coroutines.flow.channelFlow
import kotlinx.coroutines.flow.Flow
import kotlinx.coroutines.launch
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.job
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withContext
import java.util.concurrent.atomic.AtomicBoolean

/** Sampling and context for a chat; [FoxModel.defaultChatParams] holds the bundle's defaults. temperature 0 is greedy. */
data class ChatParams(
    val nCtx: Int,
    val temperature: Float,
    val topK: Int,
    val topP: Float,
    val minP: Float,
    val repeatPenalty: Float,
    val repeatLastN: Int,
    val maxTokens: Int,
    val seed: Long = 0xFFFFFFFFL, // a random seed; else 0 until 0xFFFFFFFF (the core's seed is 32 bits)
    val systemPrompt: String? = null,
) {
    init {
        require(seed in 0L..0xFFFFFFFFL) { "seed $seed is not a 32-bit unsigned number (0..4294967295)" }
    }

    // The seed crosses on its own, as a long: a double would round nothing here, but a cast of an out-of-range one is undefined.
    internal fun toArray() = doubleArrayOf(
        nCtx.toDouble(), temperature.toDouble(), topK.toDouble(), topP.toDouble(), minP.toDouble(),
        repeatPenalty.toDouble(), repeatLastN.toDouble(), maxTokens.toDouble(),
    )

    internal companion object {
        fun of(v: DoubleArray) = ChatParams(
            v[0].toInt(), v[1].toFloat(), v[2].toInt(), v[3].toFloat(), v[4].toFloat(), v[5].toFloat(), v[6].toInt(), v[7].toInt(), v[8].toLong(),
        )
    }
}

/** How the last reply went. */
data class ChatStats(
    val promptTokens: Int,
    val promptEvaluated: Int, // of promptTokens, computed now; the rest came from the KV cache
    val promptTokensPerSecond: Double,
    val generatedTokens: Int,
    val tokensPerSecond: Double,
    val droppedTurns: Int, // the oldest turns dropped to fit the context
    val stopReason: StopReason,
) {
    enum class StopReason { STOP_TOKEN, MAX_TOKENS, CONTEXT_FULL, CANCELLED }

    internal companion object {
        fun of(v: DoubleArray) = ChatStats(
            v[0].toInt(), v[1].toInt(), v[2], v[3].toInt(), v[4], v[5].toInt(), StopReason.entries[v[6].toInt()],
        )
    }
}

/**
 * A conversation: the history stays in the KV cache between [send]s, and the oldest turns are dropped when the
 * context fills. One reply streams at a time.
 */
class FoxChat internal constructor(private val handle: Long, private val model: FoxModel) : AutoCloseable {
    private val lock = Any()
    private var streaming = false
    private var closed = false

    /** How the last reply went (null before the first). */
    @Volatile var lastStats: ChatStats? = null
        private set

    /**
     * Sends [message] as the user; the reply arrives as it is generated, each element whole characters. The native
     * work runs on [Dispatchers.IO] when the flow is collected and waits for the collector to take each piece (no
     * buffer). Cancelling the collector (a cancelled scope, `take(n)`, a timeout) stops generation within one token;
     * the exchange joins the history as far as it got.
     * Throws [FoxException] when the core fails (a message longer than the context, ...).
     */
    fun send(message: String): Flow<String> = channelFlow {
        synchronized(lock) {
            check(!closed) { "the chat is closed" }
            check(!streaming) { "a reply is already streaming; collect one send at a time" }
            streaming = true
        }
        var stats: DoubleArray? = null
        // The core keeps a cancel until its send returns, so a cancel must never reach it for a send that will not run:
        // the reply says it is starting before it looks for a stop, the stop is asked for before it looks for a start,
        // and at least one of them sees the other.
        val nativeStarted = AtomicBoolean(false)
        val nativeReturned = AtomicBoolean(false)
        val stopRequested = AtomicBoolean(false)
        try {
            val reply = launch(Dispatchers.IO) {
                val replyJob = coroutineContext.job
                nativeStarted.set(true)
                if (stopRequested.get()) return@launch
                try {
                    stats = FoxNative.chatSend(handle, message.encodeToByteArray()) { piece ->
                        // Each piece waits for the collector, and the wait is a child of this reply: when the collector goes
                        // (cancelled, take(n)) the reply is cancelled and so is the wait. The channel alone is not enough:
                        // once the flow's producer is cancelled through its parent, cancelling its channel is a no-op,
                        // so a sender waiting on it (trySendBlocking) could wait forever.
                        val delivered = try {
                            runBlocking(replyJob) { runCatching { send(piece.decodeToString()) }.isSuccess }
                        } catch (e: CancellationException) {
                            false
                        }
                        if (!delivered) FoxNative.chatCancel(handle) // stop at the next token, from this very thread
                    }
                } finally {
                    nativeReturned.set(true)
                }
            }
            try {
                reply.join()
            } finally {
                if (!reply.isCompleted) { // cancelled while generating: the native call cannot be interrupted, so ask it to stop
                    stopRequested.set(true)
                    if (nativeStarted.get() && !nativeReturned.get()) FoxNative.chatCancel(handle)
                    withContext(NonCancellable) { reply.join() }
                }
            }
        } finally {
            stats?.let { lastStats = ChatStats.of(it) }
            release()
        }
    }.buffer(Channel.RENDEZVOUS) // generation waits for the collector: it never runs ahead of what was shown

    /** Forgets the conversation (the KV cache too). */
    fun reset() = synchronized(lock) {
        idle()
        FoxNative.chatReset(handle)
    }

    /**
     * Saves the conversation, its KV cache included, to [path] (written under a temporary name, then renamed): a chat
     * that survives the app being killed. Tens of milliseconds for a long chat: off the main thread. Throws
     * [FoxException].
     */
    fun save(path: String) = synchronized(lock) {
        idle()
        FoxNative.chatSave(handle, path.encodeToByteArray())
    }

    /**
     * Replaces this chat's conversation with the one [save] wrote (the same bundle): the next [send] evaluates only its
     * new message. Throws [FoxException] (ARGUMENT) for another model's chat, a cut-short or foreign file.
     */
    fun restore(path: String) = synchronized(lock) {
        idle()
        FoxNative.chatLoad(handle, path.encodeToByteArray())
    }

    /** The user and assistant messages, oldest first (the system prompt is the chat's own). */
    var history: List<Message>
        get() = synchronized(lock) {
            idle()
            FoxNative.chatHistory(handle).toList().chunked(2) { (role, content) -> Message(role.decodeToString(), content.decodeToString()) }
        }
        set(messages) = synchronized(lock) {
            idle()
            FoxNative.chatSetHistory(
                handle, messages.map { it.role.encodeToByteArray() }.toTypedArray(), messages.map { it.content.encodeToByteArray() }.toTypedArray(),
            )
        }

    /** Removes the last exchange; [send] the same message again to regenerate the reply, or another to edit it. False when there is none. */
    fun undo(): Boolean = synchronized(lock) {
        idle()
        FoxNative.chatUndo(handle)
    }

    /** Sampling for the next replies ([ChatParams.nCtx] and [ChatParams.systemPrompt] stay the chat's own). */
    fun setParams(params: ChatParams) = synchronized(lock) {
        idle()
        FoxNative.chatSetParams(handle, params.toArray(), params.seed)
    }

    /** The token ids of the last reply (for tests and logs). */
    fun lastTokens(): IntArray = synchronized(lock) {
        idle()
        FoxNative.chatLastTokens(handle)
    }

    // Under the lock: the handle is live and no reply is changing what it holds.
    private fun idle() {
        check(!closed) { "the chat is closed" }
        check(!streaming) { "a reply is streaming; cancel it first" }
    }

    /** Frees the chat; a streaming reply is cancelled and the chat freed when it stops. */
    override fun close() {
        val freeNow = synchronized(lock) {
            if (closed) return
            closed = true
            if (streaming) FoxNative.chatCancel(handle)
            !streaming
        }
        if (freeNow) free()
    }

    private fun release() {
        val freeNow = synchronized(lock) {
            streaming = false
            closed
        }
        if (freeNow) free()
    }

    private fun free() {
        FoxNative.chatFree(handle)
        model.forget(this)
    }
}
