package dev.foxedge

import kotlinx.coroutines.CancellationException
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.NonCancellable
import kotlinx.coroutines.currentCoroutineContext
import kotlinx.coroutines.ensureActive
import kotlinx.coroutines.withContext

/** What went wrong in the native core: [status] says the kind, the message says what and how to fix it. */
class FoxException(val status: Status, message: String) : Exception(message) {
    /** fox_status, in the header's order. */
    enum class Status { OK, ARGUMENT, BUNDLE, INTEGRITY, LOAD, TEMPLATE, CONTEXT, DECODE, CANCELLED }

    // Called by the JNI bridge: the message arrives as UTF-8 bytes.
    internal constructor(code: Int, utf8: ByteArray) : this(Status.entries.getOrElse(code) { Status.DECODE }, utf8.decodeToString())
}

data class Message(val role: String, val content: String)

/**
 * A fox-edge bundle (a folder with manifest.json, made by `fox-edge bundle`), opened: the manifest checked and every
 * file present at its size. On Android the folder must be a real directory (copy the bundle out of the APK's assets
 * once: [dev.foxedge.android.Bundles]). The weights are read into memory or mapped as the bundle's manifest says
 * (format.runtime_options.use_mmap); [open]'s useMmap overrides it.
 *
 * Closing the model closes its chats; a reply still streaming is cancelled, and the model is freed once it has stopped.
 */
class FoxModel private constructor(private val handle: Long) : AutoCloseable {
    private val chats = mutableSetOf<FoxChat>()
    private var closed = false
    private var freed = false
    private var inUse = 0 // native calls running on the handle: close() frees it only after the last returns

    companion object {
        /** Opens [bundleDir]; [threads] 0 runs on the performance cores only. Blocks: see [load]. Throws [FoxException]. */
        fun open(bundleDir: String, threads: Int = 0, useMmap: Boolean? = null): FoxModel =
            FoxModel(FoxNative.modelOpen(bundleDir.encodeToByteArray(), threads, useMmap?.let { if (it) 1 else 0 } ?: -1))

        /** [open] on [Dispatchers.IO]. Cancelled while loading, it closes the model it loaded and throws the cancellation. */
        suspend fun load(bundleDir: String, threads: Int = 0, useMmap: Boolean? = null): FoxModel {
            val model = withContext(Dispatchers.IO + NonCancellable) { open(bundleDir, threads, useMmap) }
            try {
                currentCoroutineContext().ensureActive()
            } catch (e: CancellationException) {
                model.close()
                throw e
            }
            return model
        }

        /**
         * Every file of the bundle at [bundleDir] against its manifest (sizes and sha256) without loading the model: a copy
         * proven before it replaces a good one. Blocks for seconds on a 1 GB model: call it off the main thread. Throws
         * [FoxException] (BUNDLE, INTEGRITY).
         */
        fun verifyBundle(bundleDir: String) = FoxNative.bundleVerify(bundleDir.encodeToByteArray())

        /**
         * Loads llama.cpp's CPU backend, its variants (libggml-cpu-*.so) looked for in [nativeLibraryDir] and, where that
         * folder holds none (an app whose libraries stay inside its APK), opened by name. Call it once, before [open]:
         * on Android with `context.applicationInfo.nativeLibraryDir` ([dev.foxedge.android.FoxAndroid.init] does).
         * Throws [FoxException] (LOAD) when no variant runs on this CPU.
         */
        fun loadCpuBackend(nativeLibraryDir: String? = null) = FoxNative.loadCpuBackend(nativeLibraryDir?.encodeToByteArray())

        /** The CPU features the loaded llama.cpp CPU backend uses ("NEON DOTPROD ..."): the variant chosen for this phone. */
        fun cpuFeatures(): String = FoxNative.cpuFeatures().decodeToString()
    }

    /** Every file's sha256 against the manifest: seconds for a 1 GB model, so at install or first launch. Blocks: see [verifyFiles]. */
    fun verify() = using { FoxNative.modelVerify(it) }

    /** [verify] on [Dispatchers.IO]; a model closed meanwhile is freed when the check returns. */
    suspend fun verifyFiles() = withContext(Dispatchers.IO) { verify() }

    val threads: Int get() = using { FoxNative.modelThreads(it) }

    /** The conversation as the bundle's chat template writes it. */
    fun render(messages: List<Message>, addGenerationPrompt: Boolean = true): String = using { handle ->
        FoxNative.modelRenderChat(
            handle,
            messages.map { it.role.encodeToByteArray() }.toTypedArray(),
            messages.map { it.content.encodeToByteArray() }.toTypedArray(),
            addGenerationPrompt,
        ).decodeToString()
    }

    /** The manifest's generation defaults. */
    fun defaultChatParams(): ChatParams = using { ChatParams.of(FoxNative.chatDefaults(it)) }

    /** A conversation with its own KV cache (its context is allocated here). Blocks: see [startChat]. */
    fun newChat(params: ChatParams = defaultChatParams()): FoxChat = using { handle ->
        val chat = FoxChat(FoxNative.chatNew(handle, params.toArray(), params.seed, params.systemPrompt?.encodeToByteArray()), this)
        synchronized(chats) { chats += chat }
        chat
    }

    /** [newChat] on [Dispatchers.IO]. Cancelled meanwhile, it closes the chat it made and throws the cancellation. */
    suspend fun startChat(params: ChatParams = defaultChatParams()): FoxChat {
        val chat = withContext(Dispatchers.IO + NonCancellable) { newChat(params) }
        try {
            currentCoroutineContext().ensureActive()
        } catch (e: CancellationException) {
            chat.close()
            throw e
        }
        return chat
    }

    // A chat was freed: the model goes once it is closed and no chat uses it.
    internal fun forget(chat: FoxChat) {
        if (synchronized(chats) { chats -= chat; claimFree() }) FoxNative.modelClose(handle)
    }

    override fun close() {
        val open = synchronized(chats) {
            if (closed) return
            closed = true
            chats.toList()
        }
        open.forEach { it.close() } // each calls forget() once freed, a streaming one when it stops
        if (synchronized(chats) { claimFree() }) FoxNative.modelClose(handle)
    }

    // True once: when the model is closed, no chat uses it and no call runs on it (called under the lock).
    private fun claimFree(): Boolean = closed && chats.isEmpty() && inUse == 0 && !freed && true.also { freed = true }

    // [block] on the live handle; a close() meanwhile frees the model after [block] returns, never under it.
    private inline fun <T> using(block: (Long) -> T): T {
        synchronized(chats) {
            check(!closed) { "the model is closed" }
            inUse++
        }
        try {
            return block(handle)
        } finally {
            if (synchronized(chats) { inUse--; claimFree() }) FoxNative.modelClose(handle)
        }
    }
}
