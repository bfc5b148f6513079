// FoxEdge: fox-edge bundles in Swift, over the native core (fox_edge.h). Thin on purpose: the template, sampling,
// stop ids, KV cache, context overflow and UTF-8 assembly live in the core, tested on fox-edge's CI.
import FoxEdgeCore
import Foundation
import os

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
    // Under `lock`. The core keeps a cancel until the send it was meant for returns, so a cancel is sent only while the
    // native send has not returned (`streaming && !nativeReturned`): never one left behind for the next reply.
    private var streaming = false
    private var nativeReturned = false
    private var closed = false
    private var freed = false
    private var stats: ChatStats?

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

    deinit {
        if !freed { fox_chat_free(handle) }
    }

    /// How the last reply went (nil before the first).
    public var lastStats: ChatStats? {
        lock.lock()
        defer { lock.unlock() }
        return stats
    }

    /// Sends `message` as the user and streams the reply, whole characters per element. Cancelling the consuming task
    /// (or breaking out of the loop) stops generation within one token, a Stop right after Send before the prompt is
    /// evaluated. One reply at a time per chat.
    public func send(_ message: String) -> AsyncThrowingStream<String, Error> {
        AsyncThrowingStream { continuation in
            lock.lock()
            if streaming || closed {
                lock.unlock()
                let why = closed ? "the chat is closed" : "a reply is already streaming on this chat"
                continuation.finish(throwing: FoxError(status: FOX_ERROR_ARGUMENT, description: why))
                return
            }
            streaming = true
            nativeReturned = false
            lock.unlock()
            // `self`, not the handle: an OpaquePointer is not Sendable, and this closure is (an error in Swift 6 mode).
            continuation.onTermination = { [weak self] termination in
                if case .cancelled = termination { self?.stopReply() }  // .finished: the reply ended by itself
            }
            // The core blocks while it generates: a thread of its own, not one of Swift concurrency's few.
            Thread { [self] in
                let box = Unmanaged.passRetained(Box(continuation, handle)).toOpaque()
                var result = fox_chat_stats()
                var error = [CChar](repeating: 0, count: 1024)
                let capacity = error.count
                let status = fox_chat_send(handle, message, { text, length, data in
                    let box = Unmanaged<Box>.fromOpaque(data!).takeUnretainedValue()
                    let bytes = UnsafeRawBufferPointer(start: text, count: length)  // whole characters: the core assembles them
                    if case .terminated = box.continuation.yield(String(decoding: bytes, as: UTF8.self)) {
                        fox_chat_cancel(box.chat)  // nobody listens any more: stop at the next token
                    }
                }, box, &result, &error, capacity)
                Unmanaged<Box>.fromOpaque(box).release()
                lock.lock()
                nativeReturned = true
                stats = ChatStats(promptTokens: Int(result.prompt_tokens), promptEvaluated: Int(result.prompt_evaluated),
                                  promptTokensPerSecond: result.prompt_tokens_per_second, generatedTokens: Int(result.generated_tokens),
                                  tokensPerSecond: result.tokens_per_second, droppedTurns: Int(result.dropped_turns),
                                  cancelled: status == FOX_ERROR_CANCELLED)
                streaming = false
                let freeNow = closed && !freed
                if freeNow { freed = true }
                lock.unlock()
                if freeNow { fox_chat_free(handle) }
                if status == FOX_OK || status == FOX_ERROR_CANCELLED {
                    continuation.finish()
                } else {
                    continuation.finish(throwing: FoxError(status: status, description: String(cString: error)))
                }
            }.start()
        }
    }

    /// Forgets the conversation. Throws while a reply streams (cancel it first) or once the chat is closed.
    public func reset() throws {
        lock.lock()
        defer { lock.unlock() }
        if closed || streaming {
            throw FoxError(status: FOX_ERROR_ARGUMENT, description: closed ? "the chat is closed" : "a reply is streaming; cancel it first")
        }
        fox_chat_reset(handle)
    }

    /// Saves the conversation, its KV cache included, to `url` (a temporary name, renamed when complete): a chat that
    /// survives the app being killed.
    public func save(to url: URL) throws {
        try idle { try call { fox_chat_save(handle, url.path, $0, $1) } }
    }

    /// Replaces the conversation with one `save(to:)` wrote with the same bundle: the next reply evaluates only its message.
    public func restore(from url: URL) throws {
        try idle { try call { fox_chat_load(handle, url.path, $0, $1) } }
    }

    /// The user and assistant messages, oldest first.
    public func history() throws -> [Message] {
        try idle {
            (0..<fox_chat_n_messages(handle)).map { index in
                let message = fox_chat_message(handle, index)
                return Message(role: String(cString: message.role), content: String(cString: message.content))
            }
        }
    }

    /// Replaces the history (the system prompt stays); the KV cache keeps what still matches.
    public func setHistory(_ messages: [Message]) throws {
        try idle {
            let roles = messages.map { strdup($0.role) }, contents = messages.map { strdup($0.content) }
            defer { (roles + contents).forEach { free($0) } }
            var list = zip(roles, contents).map { fox_message(role: $0, content: $1) }
            try call { fox_chat_set_history(handle, &list, list.count, $0, $1) }
        }
    }

    /// Removes the last exchange: send the same message to regenerate the reply, or another to edit it.
    @discardableResult public func undo() throws -> Bool { try idle { fox_chat_undo(handle) == FOX_OK } }

    /// Sampling for the next replies (n_ctx and the system prompt stay the chat's own).
    public func setParameters(_ parameters: fox_chat_params) throws {
        try idle { try call { fox_chat_set_params(handle, parameters, $0, $1) } }
    }

    private func idle<T>(_ body: () throws -> T) throws -> T {
        lock.lock()
        defer { lock.unlock() }
        if closed || streaming {
            throw FoxError(status: FOX_ERROR_ARGUMENT, description: closed ? "the chat is closed" : "a reply is streaming; cancel it first")
        }
        return try body()
    }

    /// Frees the chat now, or, while a reply streams, cancels it and frees the chat when it stops. Later calls throw.
    public func close() {
        lock.lock()
        if streaming && !nativeReturned { fox_chat_cancel(handle) }
        let freeNow = !closed && !streaming
        closed = true
        if freeNow { freed = true }
        lock.unlock()
        if freeNow { fox_chat_free(handle) }
    }

    private func stopReply() {
        lock.lock()
        if streaming && !nativeReturned { fox_chat_cancel(handle) }
        lock.unlock()
    }

    private final class Box {
        let continuation: AsyncThrowingStream<String, Error>.Continuation
        let chat: OpaquePointer  // alive: the thread that calls the core holds the chat
        init(_ continuation: AsyncThrowingStream<String, Error>.Continuation, _ chat: OpaquePointer) {
            self.continuation = continuation
            self.chat = chat
        }
    }
}

/// The native core's diagnostics: its version, and llama.cpp's log routed to the unified log instead of a lost stderr.
public enum FoxEdge {
    public static var version: String { String(cString: fox_version()) }

    /// Every file of a bundle folder against its manifest (sizes and sha256) without loading the model.
    public static func verifyBundle(_ bundle: URL) throws { try call { fox_bundle_verify(bundle.path, $0, $1) } }

    /// llama.cpp's and ggml's log lines at `level` and above go to os_log (subsystem "dev.foxedge").
    public static func logToUnifiedLog(level: fox_log_level = FOX_LOG_WARN) {
        fox_log_set({ level, text, _ in
            guard let text else { return }
            let type: OSLogType = level == FOX_LOG_ERROR ? .error : level == FOX_LOG_WARN ? .default : .info
            os_log("%{public}s", log: foxLog, type: type, text)
        }, level, nil)
    }
}

private let foxLog = OSLog(subsystem: "dev.foxedge", category: "llama.cpp")
