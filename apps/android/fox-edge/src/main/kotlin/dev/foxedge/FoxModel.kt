package dev.foxedge

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

    companion object {
        /** Opens [bundleDir]; [threads] 0 runs on the performance cores only. Throws [FoxException]. */
        fun open(bundleDir: String, threads: Int = 0, useMmap: Boolean? = null): FoxModel =
            FoxModel(FoxNative.modelOpen(bundleDir.encodeToByteArray(), threads, useMmap?.let { if (it) 1 else 0 } ?: -1))

        /** The CPU features the loaded llama.cpp CPU backend uses ("NEON DOTPROD ..."): the variant chosen for this phone. */
        fun cpuFeatures(): String = FoxNative.cpuFeatures().decodeToString()
    }

    /** Every file's sha256 against the manifest: seconds for a 1 GB model, so at install or first launch, off the main thread. */
    fun verify() = FoxNative.modelVerify(live())

    val threads: Int get() = FoxNative.modelThreads(live())

    /** The conversation as the bundle's chat template writes it. */
    fun render(messages: List<Message>, addGenerationPrompt: Boolean = true): String =
        FoxNative.modelRenderChat(
            live(),
            messages.map { it.role.encodeToByteArray() }.toTypedArray(),
            messages.map { it.content.encodeToByteArray() }.toTypedArray(),
            addGenerationPrompt,
        ).decodeToString()

    /** The manifest's generation defaults. */
    fun defaultChatParams(): ChatParams = ChatParams.of(FoxNative.chatDefaults(live()))

    /** A conversation with its own KV cache. */
    fun newChat(params: ChatParams = defaultChatParams()): FoxChat = synchronized(chats) {
        FoxChat(FoxNative.chatNew(live(), params.toArray(), params.systemPrompt?.encodeToByteArray()), this).also { chats += it }
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

    // True once: when the model is closed and unused (called under the lock).
    private fun claimFree(): Boolean = closed && chats.isEmpty() && !freed && true.also { freed = true }

    private fun live(): Long = synchronized(chats) { handle.also { check(!closed) { "the model is closed" } } }
}
