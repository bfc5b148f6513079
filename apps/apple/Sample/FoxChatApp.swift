// The smallest SwiftUI chat over FoxEdge: add a bundle folder named "fox1" (fox-edge bundle MODEL --target ios -o fox1)
// to the app target as a folder reference, then run. Written only (no Apple SDK on fox-edge's CI).
import FoxEdge
import SwiftUI

@main
struct FoxChatApp: App {
    var body: some Scene { WindowGroup { ChatView() } }
}

@MainActor
final class ChatModel: ObservableObject {
    @Published var transcript = ""
    @Published var replying = false
    private var chat: FoxChat?
    private var reply: Task<Void, Never>?

    func load() async {
        guard let folder = Bundle.main.url(forResource: "fox1", withExtension: nil) else { transcript = "No fox1 bundle in the app."; return }
        do {
            chat = try await Task.detached { try FoxModel(bundle: folder).chat() }.value
        } catch {
            transcript = "\(error)"
        }
    }

    func send(_ message: String) {
        guard let chat, !message.isEmpty else { return }
        transcript += "\n> \(message)\n"
        replying = true
        reply = Task {
            do {
                for try await piece in chat.send(message) { transcript += piece }
            } catch {
                transcript += "\n[\(error)]"
            }
            replying = false
        }
    }

    func stop() { reply?.cancel() }  // generation stops within one token
}

struct ChatView: View {
    @StateObject private var model = ChatModel()
    @State private var input = ""

    var body: some View {
        VStack {
            ScrollView { Text(model.transcript).frame(maxWidth: .infinity, alignment: .leading).padding() }
            HStack {
                TextField("Message", text: $input).textFieldStyle(.roundedBorder)
                Button(model.replying ? "Stop" : "Send") {
                    if model.replying { model.stop() } else { model.send(input); input = "" }
                }
            }.padding()
        }
        .task { await model.load() }
    }
}
