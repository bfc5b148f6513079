package dev.foxedge

import java.io.File
import java.util.Properties
import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.flow.collect
import kotlinx.coroutines.flow.take
import kotlinx.coroutines.flow.toList
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking

// The Kotlin API and the JNI bridge on the host JVM, against bundles and expectations the Python side wrote
// (tests/test_android_jvm.py): a reply split mid-character, greedy tokens of the Python runner, template renderings,
// cancellation through coroutines, errors. JUnit is not available here: one line per check, then "N passed, N failed".

private var passed = 0
private var failed = 0

private fun check(ok: Boolean, name: String, detail: () -> String = { "" }) {
    if (ok) passed++ else failed++
    println(if (ok) "ok   $name" else "FAIL $name: ${detail()}")
}

private inline fun <reified T : Throwable> raises(block: () -> Unit): T? =
    try { block(); null } catch (e: Throwable) { e as? T ?: throw e }

fun main(args: Array<String>) = runBlocking {
    val spec = Properties().apply { File(args[0]).reader(Charsets.UTF_8).use { load(it) } }
    val reply = spec.getProperty("scripted.reply")

    FoxModel.loadCpuBackend(File(args[0]).parent) // a folder without variants: the host build's CPU backend is built in
    check(FoxModel.cpuFeatures().isNotEmpty(), "a CPU backend is loaded")

    // A model whose greedy reply is `reply`, one byte per token outside ASCII; opened from a folder named in emoji.
    for (key in listOf("scripted.bundle", "scripted.unicode_bundle")) {
        FoxModel.open(spec.getProperty(key)).use { model ->
            model.newChat(model.defaultChatParams().copy(temperature = 0f)).use { chat ->
                for (turn in listOf("Hi", "Again, please")) {
                    val pieces = chat.send(turn).toList()
                    val stats = chat.lastStats!!
                    check(
                        pieces.joinToString("") == reply && pieces.none { '\uFFFD' in it } && stats.generatedTokens > pieces.size,
                        "a reply split mid-character arrives whole ($key, $turn)",
                    ) { "$pieces from ${stats.generatedTokens} tokens" }
                }
            }
        }
    }

    // Greedy replies over three turns (KV cache kept): the Python runner's tokens.
    FoxModel.open(spec.getProperty("greedy.bundle")).use { model ->
        val turns = spec.getProperty("greedy.turns").split("\u001f")
        val expected = spec.getProperty("greedy.expected").split(";").map { t -> t.split(",").map(String::toInt) }
        val params = model.defaultChatParams().copy(temperature = 0f, repeatPenalty = 1f, maxTokens = spec.getProperty("greedy.max_tokens").toInt())
        model.newChat(params).use { chat ->
            turns.forEachIndexed { i, turn ->
                val text = chat.send(turn).toList().joinToString("")
                check(chat.lastTokens().toList() == expected[i], "greedy tokens equal the Python runner's, turn ${i + 1}") {
                    "${chat.lastTokens().toList()} (\"$text\") != ${expected[i]}"
                }
            }
        }
        // A chat that survives: saved, restored in a new chat, the next greedy reply the uninterrupted one's.
        val saved = File(spec.getProperty("resume.file")).path
        model.newChat(params).use { original ->
            turns.forEach { original.send(it).toList() }
            original.save(saved)
            val kept = original.history
            original.send("And then?").toList()
            val expectedNext = original.lastTokens().toList()
            model.newChat(params).use { resumed ->
                resumed.restore(saved)
                check(resumed.history == kept, "a restored chat has the saved history") { "${resumed.history} != $kept" }
                resumed.send("And then?").toList()
                val stats = resumed.lastStats!!
                check(resumed.lastTokens().toList() == expectedNext && stats.promptEvaluated * 3 <= stats.promptTokens,
                      "a restored chat gives the uninterrupted next reply, its history not evaluated again") { "${resumed.lastTokens().toList()} != $expectedNext; $stats" }
                check(resumed.undo() && resumed.history == kept, "undo removes the last exchange")
                resumed.send("And then?").toList()
                check(resumed.lastTokens().toList() == expectedNext, "undo and the same message regenerate the same greedy reply")
                resumed.setParams(params.copy(maxTokens = 2))
                resumed.send("Short, please.").toList()
                check(resumed.lastStats!!.generatedTokens <= 2, "sampling changes between turns") { "${resumed.lastStats}" }
                resumed.history = kept.take(2)
                check(resumed.history == kept.take(2), "the history can be set")
                check(raises<FoxException> { resumed.restore(spec.getProperty("missing.bundle")) }?.status == FoxException.Status.ARGUMENT,
                      "restoring a file that is not a saved chat is a FoxException")
            }
        }

        val messages = spec.getProperty("render.messages").split("\u001e").map { it.split("\u001f").let { (r, c) -> Message(r, c) } }
        check(model.render(messages) == spec.getProperty("render.expected"), "the template renders as Python's Jinja does") { model.render(messages) }

        check(raises<FoxException> { model.newChat().use { runBlocking { it.send("x".repeat(20000)).collect() } } }?.status == FoxException.Status.CONTEXT,
              "a message longer than the context is a FoxException")
    }

    // Cancellation: a bundle that never stops (its only stop id never comes).
    FoxModel.open(spec.getProperty("endless.bundle")).use { model ->
        val params = model.defaultChatParams().copy(temperature = 1f, seed = 1, maxTokens = 100000)
        model.newChat(params).use { chat ->
            val first = chat.send("Hi").take(3).toList()
            val stats = chat.lastStats!!
            check(first.size == 3 && stats.stopReason == ChatStats.StopReason.CANCELLED && stats.generatedTokens <= 5,
                  "take(3) cancels generation within a token") { "$first, $stats" }

            val started = CompletableDeferred<Unit>()
            val job = launch(Dispatchers.Default) { chat.send("Go on").collect { started.complete(Unit) } }
            started.await()
            job.cancel()
            job.join()
            check(chat.lastStats!!.stopReason == ChatStats.StopReason.CANCELLED, "cancelling the collecting coroutine stops generation") { "${chat.lastStats}" }

            val again = chat.send("And again").take(1).toList()
            check(again.size == 1, "the chat goes on after a cancelled reply")

            val busy = CompletableDeferred<Unit>()
            val holder = launch(Dispatchers.Default) { chat.send("Hold").collect { busy.complete(Unit) } }
            busy.await()
            check(raises<IllegalStateException> { runBlocking { chat.send("Second").collect() } } != null, "a second send while one streams is refused")
            check(raises<IllegalStateException> { chat.reset() } != null, "reset during a reply is refused")
            check(raises<IllegalStateException> { chat.lastTokens() } != null, "lastTokens during a reply is refused")
            holder.cancel()
            holder.join()

            // A reply stopped before its native send began leaves no cancel behind for the next one (the core keeps a
            // cancel until the send it was meant for returns).
            val short = model.newChat(params.copy(maxTokens = 3))
            var leaked = 0
            repeat(20) {
                val stopped = launch(Dispatchers.Default) { short.send("Hi").collect() }
                stopped.cancel()
                stopped.join()
                short.send("Again").toList()
                if (short.lastStats?.stopReason != ChatStats.StopReason.MAX_TOKENS) leaked++
            }
            check(leaked == 0, "a reply cancelled before it started does not cancel the next") { "$leaked of 20 next replies cancelled" }
            short.close()
        }
        val closed = model.newChat(params)
        closed.close()
        check(raises<IllegalStateException> { runBlocking { closed.send("Hi").collect() } } != null, "a closed chat refuses to send")
        check(raises<IllegalStateException> { closed.lastTokens() } != null, "a closed chat refuses lastTokens")
        check(raises<IllegalStateException> { closed.reset() } != null, "a closed chat refuses reset")
        check(raises<IllegalArgumentException> { params.copy(seed = -1) } != null && raises<IllegalArgumentException> { params.copy(seed = 1L shl 32) } != null,
              "a seed outside 32 bits is refused")
        val seeded = (1..2).map { model.newChat(params.copy(seed = 0xFFFFFFFEL, maxTokens = 6)).use { c -> c.send("Hi").toList(); c.lastTokens().toList() } }
        check(seeded[0] == seeded[1], "the largest seeds reach the core unchanged") { "$seeded" }
    }

    // Closing the model while a reply streams: the reply is cancelled and the model freed after it stops.
    val model = FoxModel.open(spec.getProperty("endless.bundle"))
    val chat = model.newChat(model.defaultChatParams().copy(maxTokens = 100000))
    val streaming = CompletableDeferred<Unit>()
    val job = launch(Dispatchers.Default) { chat.send("Hi").collect { streaming.complete(Unit) } }
    streaming.await()
    model.close()
    job.join()
    check(chat.lastStats?.stopReason == ChatStats.StopReason.CANCELLED, "closing the model cancels a streaming reply") { "${chat.lastStats}" }
    check(raises<IllegalStateException> { model.newChat() } != null, "a closed model refuses new chats")

    // The suspending forms, and a model closed while a call runs on it: freed after the call, never under it.
    FoxModel.load(spec.getProperty("greedy.bundle")).let { loaded ->
        loaded.verifyFiles()
        val talk = loaded.startChat(loaded.defaultChatParams().copy(temperature = 0f, maxTokens = 4))
        check(talk.send("Hi").toList().isNotEmpty(), "load, verifyFiles and startChat work as open, verify and newChat")
        talk.close()
        val verifying = launch(Dispatchers.Default) { repeat(50) { runCatching { loaded.verify() } } }
        loaded.close()
        verifying.join()
        check(raises<IllegalStateException> { loaded.verify() } != null, "a closed model refuses verify")
    }

    FoxModel.verifyBundle(spec.getProperty("greedy.bundle"))
    check(raises<FoxException> { FoxModel.verifyBundle(spec.getProperty("flipped.bundle")) }?.status == FoxException.Status.INTEGRITY,
          "verifyBundle finds a flipped byte without loading the model")
    val missing = raises<FoxException> { FoxModel.open(spec.getProperty("missing.bundle")) }
    check(missing?.status == FoxException.Status.BUNDLE && "manifest.json" in missing.message.orEmpty(), "a folder without a bundle is a FoxException") { "$missing" }

    println("$passed passed, $failed failed")
    if (failed > 0) kotlin.system.exitProcess(1)
}
