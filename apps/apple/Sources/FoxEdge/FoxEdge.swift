// FoxEdge: fox-edge bundles in Swift, over the native core (fox_edge.h). Thin on purpose: the template, sampling,
// stop ids, KV cache, context overflow and UTF-8 assembly live in the core, tested on fox-edge's CI.
import FoxEdgeCore
import Foundation

public struct FoxError: Error, CustomStringConvertible {
    public let status: fox_status
    public let description: String
}

public struct Message: Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) { self.role = role; self.content = content }
}

public struct ChatStats: Sendable {
    public let promptTokens: Int, promptEvaluated: Int, promptTokensPerSecond: Double
    public let generatedTokens: Int, tokensPerSecond: Double, droppedTurns: Int
    public let cancelled: Bool
}

private func call(_ body: (UnsafeMutablePointer<CChar>, Int) -> fox_status) throws {
    var buffer = [CChar](repeating: 0, count: 1024)
    let status = buffer.withUnsafeMutableBufferPointer { body($0.baseAddress!, $0.count) }
    if status != FOX_OK { throw FoxError(status: status, description: String(cString: buffer)) }
}

/// A fox-edge bundle folder (manifest.json and the model), opened: the manifest checked, every file at its size.
/// Chats keep their model alive.
public final class FoxModel: @unchecked Sendable {
    fileprivate let handle: OpaquePointer

    /// - Parameter threads: 0 runs on the performance cores only.
    public init(bundle: URL, threads: Int32 = 0) throws {
        var params = fox_model_default_params()
        params.n_threads = threads
        var model: OpaquePointer?
        try call { fox_model_open(bundle.path, params, &model, $0, $1) }
        handle = model!
    }

    deinit { fox_model_close(handle) }

    /// Every file's sha256 against the manifest: seconds for a 1 GB model; run it once, after a download, off the main actor.
    public func verify() throws { try call { fox_model_verify(handle, $0, $1) } }

    /// The bundle's generation defaults, to adjust before `chat(_:)`.
    public var defaultParameters: fox_chat_params { fox_chat_default_params(handle) }

    public func chat(_ parameters: fox_chat_params? = nil, systemPrompt: String? = nil) throws -> FoxChat {
        try FoxChat(model: self, parameters: parameters ?? defaultParameters, systemPrompt: systemPrompt)
    }
}

/// A conversation whose history stays in the KV cache; the oldest turns are dropped when the context fills.
public final class FoxChat: @unchecked Sendable {
    private let model: FoxModel
    private let handle: OpaquePointer
    private let lock = NSLock()
    private var streaming = false
    public private(set) var lastStats: ChatStats?

    fileprivate init(model: FoxModel, parameters: fox_chat_params, systemPrompt: String?) throws {
        self.model = model
        var chat: OpaquePointer?
        try (systemPrompt ?? "").withCString { system in
            var params = parameters
            params.system_prompt = systemPrompt == nil ? nil : system  // copied by the core
            try call { fox_chat_new(model.handle, params, &chat, $0, $1) }
        }
        handle = chat!
    }

    deinit { fox_chat_free(handle) }

    /// Sends `message` as the user and streams the reply, whole characters per element. Cancelling the consuming task
    /// (or breaking out of the loop) stops generation within one token. One reply at a time per chat.
    public func send(_ message: String) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            lock.lock()
            if streaming {
                lock.unlock()
                continuation.finish(throwing: FoxError(status: FOX_ERROR_ARGUMENT, description: "a reply is already streaming on this chat"))
                return
            }
            streaming = true
            lock.unlock()
            continuation.onTermination = { [handle] _ in fox_chat_cancel(handle) }  // a no-op once the reply is done
            // The core blocks while it generates: a thread of its own, not one of Swift concurrency's few.
            Thread { [self] in
                let box = Unmanaged.passRetained(Box(continuation)).toOpaque()
                var stats = fox_chat_stats()
                var error = [CChar](repeating: 0, count: 1024)
                let capacity = error.count
                let status = fox_chat_send(handle, message, { text, length, data in
                    let bytes = UnsafeRawBufferPointer(start: text, count: length)  // whole characters: the core assembles them
                    Unmanaged<Box>.fromOpaque(data!).takeUnretainedValue().continuation.yield(String(decoding: bytes, as: UTF8.self))
                }, box, &stats, &error, capacity)
                Unmanaged<Box>.fromOpaque(box).release()
                lock.lock()
                lastStats = ChatStats(promptTokens: Int(stats.prompt_tokens), promptEvaluated: Int(stats.prompt_evaluated),
                                      promptTokensPerSecond: stats.prompt_tokens_per_second, generatedTokens: Int(stats.generated_tokens),
                                      tokensPerSecond: stats.tokens_per_second, droppedTurns: Int(stats.dropped_turns),
                                      cancelled: status == FOX_ERROR_CANCELLED)
                streaming = false
                lock.unlock()
                if status == FOX_OK || status == FOX_ERROR_CANCELLED {
                    continuation.finish()
                } else {
                    continuation.finish(throwing: FoxError(status: status, description: String(cString: error)))
                }
            }.start()
        }
    }

    /// Forgets the conversation.
    public func reset() { fox_chat_reset(handle) }

    private final class Box {
        let continuation: AsyncThrowingStream<String, Error>.Continuation
        init(_ continuation: AsyncThrowingStream<String, Error>.Continuation) { self.continuation = continuation }
    }
}
