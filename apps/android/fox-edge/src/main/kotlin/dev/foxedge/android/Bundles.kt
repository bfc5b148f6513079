package dev.foxedge.android

import android.content.Context
import dev.foxedge.FoxModel
import java.io.File
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext

/**
 * The only android.* code of the library (not compiled on fox-edge's CI; keep it this thin). A bundle shipped in
 * the APK's assets cannot be memory-mapped from there: it is copied once into the app's files, then opened.
 */
/** The library's Android start-up: call [init] once (Application.onCreate) before opening a model. */
object FoxAndroid {
    /**
     * Loads llama.cpp's CPU variants from the app's own native library folder, or by name where the app keeps its
     * libraries inside the APK (an app that does not set `jniLibs.useLegacyPackaging`: the library's setting does not
     * reach it).
     */
    fun init(context: Context) = FoxModel.loadCpuBackend(context.applicationInfo.nativeLibraryDir)
}

object Bundles {
    /**
     * Copies `assets/<name>/` (a fox-edge bundle folder) to `filesDir/bundles/<name>/` on first use, and again when its
     * manifest.json changes (an app update), verifies every file's sha256 after the copy, and opens it.
     * Models over Play's APK size limits belong in Play Asset Delivery or a download: open those with [FoxModel.open].
     */
    suspend fun openFromAssets(context: Context, name: String, threads: Int = 0): FoxModel = withContext(Dispatchers.IO) {
        val target = File(context.filesDir, "bundles/$name")
        val manifest = context.assets.open("$name/manifest.json").use { it.readBytes() }
        if (!File(target, "manifest.json").let { it.isFile && it.readBytes().contentEquals(manifest) }) {
            val partial = File(context.filesDir, "bundles/$name.part")
            partial.deleteRecursively()
            copyAssets(context, name, partial)
            FoxModel.verifyBundle(partial.path) // a damaged copy never replaces a good one (and the model loads once)
            target.deleteRecursively()
            check(partial.renameTo(target)) { "cannot move the bundle into ${target.path}" }
        }
        FoxModel.open(target.path, threads)
    }

    private fun copyAssets(context: Context, path: String, into: File) {
        val children = context.assets.list(path).orEmpty()
        if (children.isEmpty()) { // a file
            into.parentFile?.mkdirs()
            context.assets.open(path).use { input -> into.outputStream().use { input.copyTo(it, 1 shl 20) } }
            return
        }
        into.mkdirs()
        for (child in children) copyAssets(context, "$path/$child", File(into, child))
    }
}
