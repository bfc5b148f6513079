package dev.foxedge.sample

import android.app.Application
import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.activity.viewModels
import androidx.lifecycle.AndroidViewModel
import androidx.lifecycle.Lifecycle
import androidx.lifecycle.lifecycleScope
import androidx.lifecycle.repeatOnLifecycle
import androidx.lifecycle.viewModelScope
import dev.foxedge.FoxChat
import dev.foxedge.FoxException
import dev.foxedge.FoxModel
import dev.foxedge.android.Bundles
import dev.foxedge.android.FoxAndroid
import kotlinx.coroutines.Job
import kotlinx.coroutines.flow.MutableStateFlow
import kotlinx.coroutines.flow.StateFlow
import kotlinx.coroutines.flow.combine
import kotlinx.coroutines.launch

/**
 * The model and the chat live here, not in the activity: a rotation recreates the activity, and loading a 1 GB model
 * again each time would take seconds and double the memory for a moment.
 */
class ChatViewModel(application: Application) : AndroidViewModel(application) {
    enum class State { LOADING, READY, REPLYING, FAILED }

    private val _transcript = MutableStateFlow("Loading…")
    private val _state = MutableStateFlow(State.LOADING)
    val transcript: StateFlow<String> = _transcript
    val state: StateFlow<State> = _state

    private var model: FoxModel? = null
    private var chat: FoxChat? = null
    private var reply: Job? = null

    init {
        viewModelScope.launch {
            try {
                FoxAndroid.init(application)
                val opened = Bundles.openFromAssets(application, "fox1")
                model = opened
                chat = opened.startChat()
                _transcript.value = ""
                _state.value = State.READY
            } catch (e: FoxException) { // a damaged or incomplete bundle, a phone without a CPU variant: say so
                _transcript.value = "Cannot open the model (${e.status}): ${e.message}"
                _state.value = State.FAILED
            }
        }
    }

    fun send(message: String) {
        val chat = chat ?: return
        if (reply != null || message.isBlank()) return
        _transcript.value += "\n> $message\n"
        _state.value = State.REPLYING
        reply = viewModelScope.launch {
            try {
                chat.send(message).collect { _transcript.value += it }
            } catch (e: FoxException) { // a message longer than the context, ...
                _transcript.value += "\n[${e.message}]\n"
            } finally {
                reply = null
                _state.value = State.READY
            }
        }
    }

    /** Stop: generation ends within a token. */
    fun stop() {
        reply?.cancel()
    }

    override fun onCleared() {
        model?.close() // closes the chat too, cancelling a reply in flight
    }
}

/** The smallest chat: the bundle in assets/fox1, a transcript, a box and one button that sends or stops. */
class MainActivity : ComponentActivity() {
    private val chat: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        val transcript = TextView(this)
        val input = EditText(this).apply { hint = "Message" }
        val button = Button(this).apply { text = "Send"; isEnabled = false }
        setContentView(LinearLayout(this).apply {
            orientation = LinearLayout.VERTICAL
            addView(ScrollView(context).apply { addView(transcript) }, LinearLayout.LayoutParams(-1, 0, 1f))
            addView(input)
            addView(button)
        })
        lifecycleScope.launch {
            repeatOnLifecycle(Lifecycle.State.STARTED) {
                combine(chat.transcript, chat.state) { text, state -> text to state }.collect { (text, state) ->
                    transcript.text = text
                    button.isEnabled = state == ChatViewModel.State.READY || state == ChatViewModel.State.REPLYING
                    button.text = if (state == ChatViewModel.State.REPLYING) "Stop" else "Send"
                }
            }
        }
        button.setOnClickListener {
            if (chat.state.value == ChatViewModel.State.REPLYING) {
                chat.stop()
            } else {
                chat.send(input.text.toString())
                input.text.clear()
            }
        }
    }

    override fun onStop() {
        chat.stop() // in the background the reply would run on with nobody reading it, and the system may kill the app for it
        super.onStop()
    }
}
