// The native core's tests. They read what the Python side wrote (tests/test_native.py): bundles, template
// renderings by fox-edge's Jinja (golden files), greedy tokens of fox-edge's Python runner, fake sysfs trees.
//
//     fox_edge_tests SPEC.json        prints one line per check and "N passed, N failed"; exit 1 on any failure

#include "fox_edge.h"
#include "utf8.h"

#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

using json = nlohmann::json;

static int passed = 0, failed = 0;

static void check(bool ok, const std::string & name, const std::string & detail = "") {
    if (ok) {
        passed++;
        std::printf("ok   %s\n", name.c_str());
    } else {
        failed++;
        std::printf("FAIL %s: %s\n", name.c_str(), detail.c_str());
    }
    std::fflush(stdout);
}

static bool valid_utf8(const std::string & s) {
    for (size_t i = 0; i < s.size();) {
        unsigned char c = static_cast<unsigned char>(s[i]);
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > s.size()) return false;
        for (size_t k = 1; k < n; k++) {
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
        }
        i += n;
    }
    return true;
}

static int32_t spec_threads = 0;  // the spec's n_threads (0: the core's own choice)

static fox_model * open(const std::string & bundle, std::string & error) {
    fox_model * model = nullptr;
    char buffer[512] = "";
    fox_model_params params = fox_model_default_params();
    params.n_threads = spec_threads;
    fox_status status = fox_model_open(bundle.c_str(), params, &model, buffer, sizeof buffer);
    error = buffer;
    return status == FOX_OK ? model : nullptr;
}

struct Collected {
    std::string text;
    std::vector<std::string> pieces;
};

static void collect(const char * text, size_t length, void * data) {
    auto * c = static_cast<Collected *>(data);
    c->pieces.emplace_back(text, length);
    c->text.append(text, length);
}

static void test_templates(const json & cases) {
    for (const json & c : cases) {
        std::string error;
        fox_model * model = open(c["bundle"], error);
        if (model == nullptr) {
            check(false, "template " + c["name"].get<std::string>(), error);
            continue;
        }
        std::vector<std::string> roles, contents;
        for (const json & m : c["messages"]) {
            roles.push_back(m[0]);
            contents.push_back(m[1]);
        }
        std::vector<fox_message> messages;
        for (size_t i = 0; i < roles.size(); i++) messages.push_back({roles[i].c_str(), contents[i].c_str()});
        char buffer[512] = "";
        int64_t n = fox_model_render_chat(model, messages.data(), messages.size(), c["add_generation_prompt"], nullptr, 0, buffer, sizeof buffer);
        std::string rendered(n > 0 ? static_cast<size_t>(n) + 1 : 1, '\0');
        fox_model_render_chat(model, messages.data(), messages.size(), c["add_generation_prompt"], rendered.data(), rendered.size(), nullptr, 0);
        rendered.resize(n > 0 ? static_cast<size_t>(n) : 0);
        std::string expected = c["expected"];
        check(n >= 0 && rendered == expected, "template " + c["name"].get<std::string>() + " byte for byte",
              n < 0 ? std::string(buffer) : "got:\n" + rendered + "\nexpected:\n" + expected);
        fox_model_close(model);
    }
}

static void test_greedy(const json & cases) {
    for (const json & c : cases) {
        std::string error, name = "greedy " + c["name"].get<std::string>();
        fox_model * model = open(c["bundle"], error);
        if (model == nullptr) {
            check(false, name, error);
            continue;
        }
        fox_chat_params params = fox_chat_default_params(model);
        params.temperature     = 0.0f;
        params.repeat_penalty  = 1.0f;
        params.max_tokens      = c["max_tokens"];
        std::string system     = c["system"];
        params.system_prompt   = system.empty() ? nullptr : system.c_str();
        fox_chat * chat        = nullptr;
        char buffer[512]       = "";
        if (fox_chat_new(model, params, &chat, buffer, sizeof buffer) != FOX_OK) {
            check(false, name, buffer);
            fox_model_close(model);
            continue;
        }
        for (size_t turn = 0; turn < c["turns"].size(); turn++) {
            std::string message = c["turns"][turn];
            Collected collected;
            fox_chat_stats stats{};
            fox_status status = fox_chat_send(chat, message.c_str(), collect, &collected, &stats, buffer, sizeof buffer);
            std::vector<int32_t> tokens(fox_chat_last_tokens(chat, nullptr, 0));
            fox_chat_last_tokens(chat, tokens.data(), tokens.size());
            std::vector<int32_t> expected = c["expected"][turn];
            check(status == FOX_OK && tokens == expected, name + " turn " + std::to_string(turn + 1) + " tokens equal the Python runner's",
                  status != FOX_OK ? std::string(buffer) : "got " + json(tokens).dump() + ", expected " + json(expected).dump());
            if (c.contains("prompt_tokens")) {  // the same conversation tokens: markup as special tokens, message text as text
                int32_t expected_prompt = c["prompt_tokens"][turn];
                check(stats.prompt_tokens == expected_prompt, name + " turn " + std::to_string(turn + 1) + " prompt equals the Python runner's",
                      std::to_string(stats.prompt_tokens) + " tokens, expected " + std::to_string(expected_prompt));
            }
            if (turn > 0) {  // the KV cache is kept across turns: only the new part of the conversation is computed
                check(stats.prompt_evaluated < stats.prompt_tokens, name + " turn " + std::to_string(turn + 1) + " reuses the KV cache",
                      std::to_string(stats.prompt_evaluated) + " of " + std::to_string(stats.prompt_tokens) + " evaluated");
            }
            check(valid_utf8(collected.text), name + " streams valid UTF-8");
            check(stats.tokens_per_second > 0 && stats.prompt_tokens_per_second > 0, name + " reports tokens/s");
        }
        fox_chat_free(chat);
        fox_model_close(model);
    }
}

static void test_utf8(const json & spec) {
    std::string text = spec["text"];
    for (size_t split = 1; split <= 4; split++) {  // bytes arriving in pieces of 1..4, cutting characters anywhere
        fox::Utf8Stream stream;
        std::string joined;
        bool every_piece_valid = true;
        for (size_t i = 0; i < text.size(); i += split) {
            std::string piece = stream.push(text.substr(i, split));
            every_piece_valid = every_piece_valid && valid_utf8(piece);
            joined += piece;
        }
        joined += stream.flush();
        check(every_piece_valid && joined == text, "utf8 stream of " + std::to_string(split) + "-byte pieces is whole characters only");
    }
    fox::Utf8Stream cut;
    std::string out = cut.push(text.substr(0, text.size() - 1));  // ends mid-character (the CJK last byte is missing)
    check(valid_utf8(out) && valid_utf8(cut.flush()), "utf8 an incomplete ending becomes U+FFFD, never half a character");
    if (!spec.contains("bundle")) return;
    // A model whose reply is `text`, one byte per token outside ASCII: the callback must see whole characters only.
    std::string error;
    fox_model * model = open(spec["bundle"], error);
    if (model == nullptr) return check(false, "utf8 through a model", error);
    fox_chat_params params = fox_chat_default_params(model);
    params.temperature     = 0.0f;
    fox_chat * chat        = nullptr;
    fox_chat_new(model, params, &chat, nullptr, 0);
    for (const char * turn : {"Hi", "Again, please"}) {
        Collected reply;
        fox_chat_stats stats{};
        fox_status status = fox_chat_send(chat, turn, collect, &reply, &stats, nullptr, 0);
        bool whole = true;
        for (const std::string & piece : reply.pieces) whole = whole && !piece.empty() && valid_utf8(piece);
        check(status == FOX_OK && reply.text == text && whole && stats.generated_tokens > static_cast<int32_t>(reply.pieces.size()),
              std::string("utf8 a reply split mid-character arrives whole (") + turn + ")",
              "got '" + reply.text + "' in " + std::to_string(reply.pieces.size()) + " pieces from " + std::to_string(stats.generated_tokens) + " tokens");
    }
    fox_chat_free(chat);
    fox_model_close(model);
}

static void test_cancel(const json & spec) {
    std::string error;
    fox_model * model = open(spec["bundle"], error);
    if (model == nullptr) return check(false, "cancel", error);
    fox_chat_params params = fox_chat_default_params(model);
    params.max_tokens      = 100000;
    params.temperature     = 1.0f;
    params.seed            = 1;
    fox_chat * chat        = nullptr;
    fox_chat_new(model, params, &chat, nullptr, 0);
    struct State {
        fox_chat * chat;
        std::atomic<int> pieces{0};
        std::atomic<int> after_cancel{0};
        std::atomic<bool> requested{false};
    } state{chat};
    auto on_text = [](const char *, size_t, void * data) {
        auto * s = static_cast<State *>(data);
        s->pieces++;
        if (s->requested.load()) s->after_cancel++;
    };
    std::thread canceller([&state] {
        while (state.pieces.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        state.requested.store(true);
        fox_chat_cancel(state.chat);  // from another thread
    });
    fox_chat_stats stats{};
    fox_status status = fox_chat_send(chat, "Tell me a long story.", on_text, &state, &stats, nullptr, 0);
    canceller.join();
    check(status == FOX_ERROR_CANCELLED && stats.stop_reason == 3, "cancel from another thread ends the reply");
    check(state.after_cancel.load() <= 1, "cancel stops within one token", std::to_string(state.after_cancel.load()) + " pieces after cancel");
    // Stop pressed right after Send: a cancel that comes before the send begins stops it before its prompt.
    fox_chat_cancel(chat);
    fox_chat_stats early{};
    fox_status pre_cancelled = fox_chat_send(chat, "Another long story, please.", nullptr, nullptr, &early, nullptr, 0);
    check(pre_cancelled == FOX_ERROR_CANCELLED && early.prompt_evaluated == 0 && early.generated_tokens == 0,
          "a cancel just before a send stops it before its prompt",
          "status " + std::to_string(pre_cancelled) + ", " + std::to_string(early.prompt_evaluated) + " prompt tokens evaluated");
    Collected again;
    params.max_tokens = 4;
    fox_status next = fox_chat_send(chat, "And now?", collect, &again, nullptr, nullptr, 0);
    check(next == FOX_OK, "the chat goes on after a cancel");
    fox_chat_free(chat);
    fox_model_close(model);
}

static void test_overflow(const json & spec) {
    std::string error;
    fox_model * model = open(spec["bundle"], error);
    if (model == nullptr) return check(false, "overflow", error);
    fox_chat_params params = fox_chat_default_params(model);
    params.n_ctx           = spec["n_ctx"];
    params.max_tokens      = 8;
    params.temperature     = 0.0f;
    fox_chat * chat        = nullptr;
    fox_chat_new(model, params, &chat, nullptr, 0);
    int dropped = 0;
    bool all_ok = true;
    fox_chat_stats last{};
    for (const json & message : spec["messages"]) {
        fox_chat_stats stats{};
        std::string text = message;
        all_ok = all_ok && fox_chat_send(chat, text.c_str(), nullptr, nullptr, &stats, nullptr, 0) == FOX_OK;
        dropped += stats.dropped_turns;
        last = stats;
    }
    check(all_ok && dropped > 0, "overflow drops the oldest turns and goes on", std::to_string(dropped) + " turns dropped");
    // The kept turns moved down in the KV cache: a full chat's turn does not evaluate the whole conversation again. (It
    // evaluates from the first kept reply that tokenizes otherwise than it was generated: often, for a random model.)
    check(last.dropped_turns > 0 && last.prompt_evaluated * 4 < last.prompt_tokens * 3, "a full chat's turn keeps the kept turns cached",
          std::to_string(last.prompt_evaluated) + " of " + std::to_string(last.prompt_tokens) + " evaluated");
    std::string huge(20000, 'x');
    char buffer[512] = "";
    check(fox_chat_send(chat, huge.c_str(), nullptr, nullptr, nullptr, buffer, sizeof buffer) == FOX_ERROR_CONTEXT, "a message longer than the context alone is refused", buffer);
    fox_chat_free(chat);
    fox_model_close(model);
}

static std::vector<int32_t> last_tokens(fox_chat * chat) {
    std::vector<int32_t> tokens(fox_chat_last_tokens(chat, nullptr, 0));
    fox_chat_last_tokens(chat, tokens.data(), tokens.size());
    return tokens;
}

// A conversation saved, the app killed, the conversation restored: the next reply is the uninterrupted one's, and only
// the new message is evaluated (re-processing the history evaluates all of it).
static void test_resume(const json & spec) {
    std::string error;
    fox_model * model = open(spec["bundle"], error);
    if (model == nullptr) return check(false, "resume", error);
    fox_chat_params params = fox_chat_default_params(model);
    params.temperature     = 0.0f;
    params.repeat_penalty  = 1.0f;
    params.max_tokens      = spec["max_tokens"];
    params.n_ctx           = spec["n_ctx"];
    std::vector<std::string> turns = spec["turns"];
    const std::string saved = spec["file"], last = turns.back();
    char buffer[512] = "";
    fox_chat * original = nullptr;
    fox_chat_new(model, params, &original, nullptr, 0);
    for (size_t i = 0; i + 1 < turns.size(); i++) fox_chat_send(original, turns[i].c_str(), nullptr, nullptr, nullptr, nullptr, 0);
    check(fox_chat_save(original, saved.c_str(), buffer, sizeof buffer) == FOX_OK, "a chat saves", buffer);
    std::vector<std::string> roles, contents;  // the history as saved
    for (size_t i = 0; i < fox_chat_n_messages(original); i++) {
        roles.push_back(fox_chat_message(original, i).role);
        contents.push_back(fox_chat_message(original, i).content);
    }
    fox_chat_stats uninterrupted{};
    fox_chat_send(original, last.c_str(), nullptr, nullptr, &uninterrupted, nullptr, 0);
    const std::vector<int32_t> expected = last_tokens(original);

    fox_chat * resumed = nullptr;
    fox_chat_new(model, params, &resumed, nullptr, 0);
    fox_status loaded = fox_chat_load(resumed, saved.c_str(), buffer, sizeof buffer);
    bool same_history = fox_chat_n_messages(resumed) == roles.size() && roles.size() >= 2;
    for (size_t i = 0; same_history && i < roles.size(); i++) same_history = contents[i] == fox_chat_message(resumed, i).content;
    check(loaded == FOX_OK && same_history, "a saved chat restores its history", buffer);
    fox_chat_stats after{};
    fox_chat_send(resumed, last.c_str(), nullptr, nullptr, &after, nullptr, 0);
    check(last_tokens(resumed) == expected, "a restored chat gives the uninterrupted chat's next reply",
          json(last_tokens(resumed)).dump() + " != " + json(expected).dump());
    // The same history set as messages: the KV cache is rebuilt, every token evaluated again (the replies re-tokenized
    // from their text, which for a random model is often not how they were generated, so its reply may differ).
    std::vector<fox_message> history;
    for (size_t i = 0; i < roles.size(); i++) history.push_back({roles[i].c_str(), contents[i].c_str()});
    fox_chat * reprocessed = nullptr;
    fox_chat_new(model, params, &reprocessed, nullptr, 0);
    fox_chat_set_history(reprocessed, history.data(), history.size(), nullptr, 0);
    fox_chat_stats again{};
    fox_chat_send(reprocessed, last.c_str(), nullptr, nullptr, &again, nullptr, 0);
    // (The two prompts may differ by a few tokens: a random model's reply can hold a NUL byte, which the history keeps
    // but a fox_message, a C string, cannot carry.)
    check(after.prompt_evaluated * 10 <= again.prompt_evaluated && again.prompt_evaluated * 10 >= again.prompt_tokens * 9,
          "restoring evaluates only the new message, a tenth or less of re-processing",
          std::to_string(after.prompt_evaluated) + " against " + std::to_string(again.prompt_evaluated) + " of " + std::to_string(again.prompt_tokens));
    std::printf("resume: %d prompt tokens, %d evaluated after restoring, %d re-processing\n", after.prompt_tokens, after.prompt_evaluated,
                again.prompt_evaluated);

    // Undo and regenerate, edit, per-turn sampling.
    const size_t before_undo = fox_chat_n_messages(resumed);
    check(fox_chat_undo(resumed) == FOX_OK && fox_chat_n_messages(resumed) == before_undo - 2, "undo removes the last exchange");
    fox_chat_send(resumed, last.c_str(), nullptr, nullptr, nullptr, nullptr, 0);
    check(last_tokens(resumed) == expected, "undo then the same message regenerates the same greedy reply");
    fox_chat_params shorter = params;
    shorter.max_tokens      = 2;
    check(fox_chat_set_params(resumed, shorter, nullptr, 0) == FOX_OK, "sampling changes between turns");
    fox_chat_stats limited{};
    fox_chat_send(resumed, "Short, please.", nullptr, nullptr, &limited, nullptr, 0);
    check(limited.generated_tokens <= 2, "the new max_tokens holds for the next reply", std::to_string(limited.generated_tokens));
    shorter.top_p = 2.0f;
    check(fox_chat_set_params(resumed, shorter, nullptr, 0) == FOX_ERROR_ARGUMENT, "out-of-range sampling is refused");

    // Files that are not a chat saved with this model: cut short, saved with another model, not a saved chat at all.
    std::ifstream in(saved, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string sha = "\"model_sha256\":\"";
    std::string other = bytes;
    other.replace(other.find(sha) + sha.size(), 64, std::string(64, '0'));
    const std::vector<std::pair<std::string, std::string>> refused = {
        {bytes.substr(0, bytes.size() / 2), "a file cut short"}, {other, "a chat saved with another model"}, {"hello\n", "a file that is no saved chat"}};
    for (const auto & [content, what] : refused) {
        std::ofstream(saved + ".bad", std::ios::binary | std::ios::trunc) << content;
        fox_status status = fox_chat_load(resumed, (saved + ".bad").c_str(), buffer, sizeof buffer);
        check(status == FOX_ERROR_ARGUMENT, "restoring refuses " + what, buffer);
    }
    fox_chat_free(original);
    fox_chat_free(resumed);
    fox_chat_free(reprocessed);
    fox_model_close(model);
}

static void test_bundles(const json & spec) {
    std::string error;
    fox_model * model = open(spec["good"], error);
    char buffer[512] = "";
    check(model != nullptr && fox_model_verify(model, buffer, sizeof buffer) == FOX_OK, "verify a good bundle", error + buffer);
    fox_model_close(model);
    model = open(spec["flipped_byte"], error);
    check(model != nullptr && fox_model_verify(model, buffer, sizeof buffer) == FOX_ERROR_INTEGRITY, "verify finds a flipped byte", buffer);
    fox_model_close(model);
    // Without loading the model: the same verdicts.
    check(fox_bundle_verify(spec["good"].get<std::string>().c_str(), buffer, sizeof buffer) == FOX_OK, "fox_bundle_verify passes a good bundle", buffer);
    check(fox_bundle_verify(spec["flipped_byte"].get<std::string>().c_str(), buffer, sizeof buffer) == FOX_ERROR_INTEGRITY,
          "fox_bundle_verify finds a flipped byte", buffer);
    for (const json & damaged : spec["refused"]) {
        fox_status status = fox_bundle_verify(damaged[0].get<std::string>().c_str(), buffer, sizeof buffer);
        check(status == FOX_ERROR_BUNDLE, "fox_bundle_verify refuses " + damaged[1].get<std::string>(), buffer);
    }
    for (const json & damaged : spec["refused"]) {
        fox_model * refused = nullptr;
        fox_status status = fox_model_open(damaged[0].get<std::string>().c_str(), fox_model_default_params(), &refused, buffer, sizeof buffer);
        check(status == FOX_ERROR_BUNDLE && refused == nullptr, "open refuses " + damaged[1].get<std::string>(), buffer);
    }
}

static void test_threads(const json & cases) {
    for (const json & c : cases) {
        if (c.contains("at_most")) {  // this machine's own sysfs, under the affinity the test runs with
            int32_t n = fox_performance_cores(nullptr);
            check(n >= 1 && n <= c["at_most"].get<int32_t>(), "threads stay within the CPUs this process may use", std::to_string(n));
            continue;
        }
        int32_t n = fox_performance_cores(c["sysfs"].get<std::string>().c_str());
        check(n == c["expected"].get<int32_t>(), "performance cores of " + c["name"].get<std::string>(), std::to_string(n));
    }
}

struct LogLines {
    std::atomic<int> lines{0};
    std::atomic<int> below_minimum{0};
};

static void count_log(fox_log_level level, const char * text, void * data) {
    auto * log = static_cast<LogLines *>(data);
    if (level < FOX_LOG_INFO) log->below_minimum++;
    if (text != nullptr && text[0] != '\0') log->lines++;
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: fox_edge_tests SPEC.json\n");
        return 2;
    }
    std::ifstream in(argv[1]);
    json spec = json::parse(in);
    spec_threads = spec.value("n_threads", 0);
    // llama.cpp's log goes to the callback, not to stderr (which goes nowhere on a phone): tests/test_native.py checks
    // that stderr stays clean.
    LogLines log;
    fox_log_set(count_log, FOX_LOG_INFO, &log);
    const std::string version = fox_version();
    check(version.rfind("fox-edge " + spec.value("version", std::string("?")) + " (llama.cpp ", 0) == 0, "fox_version names fox-edge and llama.cpp", version);
    if (spec.contains("cpu_backend_folder")) {  // before anything loads the backend: a folder without the variants
        char error[512] = "";
        fox_status status = fox_load_cpu_backend(spec["cpu_backend_folder"].get<std::string>().c_str(), error, sizeof error);
        check(status == FOX_OK, "the CPU variants load by name when the folder holds none", error);
    }
    char features[512] = "";
    check(fox_cpu_features(features, sizeof features) >= 0, "a CPU backend is loaded", "none found");
    std::printf("cpu features: %s\n", features);
    if (spec.contains("templates")) test_templates(spec["templates"]);
    if (spec.contains("greedy")) test_greedy(spec["greedy"]);
    if (spec.contains("utf8")) test_utf8(spec["utf8"]);
    if (spec.contains("cancel")) test_cancel(spec["cancel"]);
    if (spec.contains("overflow")) test_overflow(spec["overflow"]);
    if (spec.contains("bundles")) test_bundles(spec["bundles"]);
    if (spec.contains("resume")) test_resume(spec["resume"]);
    if (spec.contains("threads")) test_threads(spec["threads"]);
    check(log.lines.load() > 0 && log.below_minimum.load() == 0, "llama.cpp's log lines reach the callback, at its level and above",
          std::to_string(log.lines.load()) + " lines, " + std::to_string(log.below_minimum.load()) + " below the level");
    fox_log_set(nullptr, FOX_LOG_INFO, nullptr);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
