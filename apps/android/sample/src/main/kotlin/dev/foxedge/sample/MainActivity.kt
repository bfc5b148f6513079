package dev.foxedge.sample

import android.os.Bundle
import android.widget.Button
import android.widget.EditText
import android.widget.LinearLayout
import android.widget.ScrollView
import android.widget.TextView
import androidx.activity.ComponentActivity
import androidx.lifecycle.lifecycleScope
import dev.foxedge.FoxChat
import dev.foxedge.FoxModel
import dev.foxedge.android.Bundles
import kotlinx.coroutines.Job
import kotlinx.coroutines.launch

/** The smallest chat: the bundle in assets/fox1, a transcript, a box and one button that sends or stops. */
class MainActivity : ComponentActivity() {
    private var model: FoxModel? = null
    private var chat: FoxChat? = null
    private var reply: Job? = null

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
            transcript.text = "Loading…"
            model = Bundles.openFromAssets(this@MainActivity, "fox1").also { chat = it.newChat() }
            transcript.text = ""
            button.isEnabled = true
        }
        button.setOnClickListener {
            reply?.let { running -> running.cancel(); return@setOnClickListener } // Stop: generation ends within a token
            val message = input.text.toString().ifBlank { return@setOnClickListener }
            input.text.clear()
            transcript.append("\n> $message\n")
            button.text = "Stop"
            reply = lifecycleScope.launch {
                try {
                    chat!!.send(message).collect { transcript.append(it) }
                } finally {
                    reply = null
                    button.text = "Send"
                }
            }
        }
    }

    override fun onDestroy() {
        model?.close() // closes the chat too, cancelling a reply in flight
        super.onDestroy()
    }
}
