package dev.foxedge

/**
 * The JNI surface of the native core (native/include/fox_edge.h), bridged by src/main/cpp/fox_edge_jni.cpp.
 * Text crosses as UTF-8 byte arrays, never as JNI strings (modified UTF-8 breaks emoji and split characters).
 * Handles are the core's opaque pointers; FoxModel and FoxChat own them.
 */
internal object FoxNative {
    init {
        System.loadLibrary("fox_edge_jni")
    }

    fun interface TextSink {
        fun onText(utf8: ByteArray)
    }

    @JvmStatic external fun modelOpen(folder: ByteArray, threads: Int, useMmap: Int): Long
    @JvmStatic external fun modelVerify(model: Long)
    @JvmStatic external fun bundleVerify(folder: ByteArray)
    @JvmStatic external fun modelClose(model: Long)
    @JvmStatic external fun modelThreads(model: Long): Int
    @JvmStatic external fun modelRenderChat(model: Long, roles: Array<ByteArray>, contents: Array<ByteArray>, addGenerationPrompt: Boolean): ByteArray
    @JvmStatic external fun chatDefaults(model: Long): DoubleArray
    @JvmStatic external fun chatNew(model: Long, params: DoubleArray, seed: Long, systemPrompt: ByteArray?): Long
    @JvmStatic external fun chatSend(chat: Long, message: ByteArray, sink: TextSink): DoubleArray
    @JvmStatic external fun chatCancel(chat: Long)
    @JvmStatic external fun chatSave(chat: Long, path: ByteArray)
    @JvmStatic external fun chatLoad(chat: Long, path: ByteArray)
    @JvmStatic external fun chatHistory(chat: Long): Array<ByteArray>
    @JvmStatic external fun chatSetHistory(chat: Long, roles: Array<ByteArray>, contents: Array<ByteArray>)
    @JvmStatic external fun chatUndo(chat: Long): Boolean
    @JvmStatic external fun chatSetParams(chat: Long, params: DoubleArray, seed: Long)
    @JvmStatic external fun chatReset(chat: Long)
    @JvmStatic external fun chatFree(chat: Long)
    @JvmStatic external fun chatLastTokens(chat: Long): IntArray
    @JvmStatic external fun cpuFeatures(): ByteArray
    @JvmStatic external fun loadCpuBackend(folder: ByteArray?)
}
