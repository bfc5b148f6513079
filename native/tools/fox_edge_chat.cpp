// fox_edge_chat: a terminal chat over the native core, and the core's side of benchmarks/native_overhead.py.
//
//     fox_edge_chat BUNDLE [-t THREADS] [-c CTX] [-n MAX_TOKENS] [--temp T] [--repeat-penalty P] [-p PROMPT] [--resume FILE]
//
// --resume FILE: the conversation saved in FILE (if it exists) is restored first, and the conversation is saved there
// after every reply (fox_chat_save / fox_chat_load): a terminal chat that survives being closed.
// With -p it answers PROMPT once and prints the stats on stderr ("prompt: N tokens at X tok/s; generation: ...");
// without, it reads one message per line from stdin until EOF.

#include "fox_edge.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

static void print_piece(const char * text, size_t length, void *) {
    std::fwrite(text, 1, length, stdout);
    std::fflush(stdout);
}

int main(int argc, char ** argv) {
    if (argc < 2 || std::strcmp(argv[1], "-h") == 0 || std::strcmp(argv[1], "--help") == 0) {
        std::fprintf(stderr, "usage: fox_edge_chat BUNDLE [-t THREADS] [-c CTX] [-n MAX_TOKENS] [--temp T] [--repeat-penalty P] [-p PROMPT] [--resume FILE]\n");
        return 2;
    }
    fox_model_params model_params = fox_model_default_params();
    std::string      prompt, resume;
    bool             once = false;
    int32_t          n_ctx = 0, max_tokens = 0;
    float            temperature = -1, repeat_penalty = -1;
    for (int i = 2; i < argc; i++) {
        std::string flag  = argv[i];
        const char * value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (value == nullptr) {
            std::fprintf(stderr, "error: %s needs a value\n", flag.c_str());
            return 2;
        }
        i++;
        if (flag == "-t") model_params.n_threads = std::atoi(value);
        else if (flag == "-c") n_ctx = std::atoi(value);
        else if (flag == "-n") max_tokens = std::atoi(value);
        else if (flag == "--temp") temperature = std::strtof(value, nullptr);
        else if (flag == "--repeat-penalty") repeat_penalty = std::strtof(value, nullptr);
        else if (flag == "-p") prompt = value, once = true;
        else if (flag == "--resume") resume = value;
        else {
            std::fprintf(stderr, "error: unknown option %s (see --help)\n", flag.c_str());
            return 2;
        }
    }
    char        error[1024] = "";
    fox_model * model       = nullptr;
    if (fox_model_open(argv[1], model_params, &model, error, sizeof error) != FOX_OK) {
        std::fprintf(stderr, "error: %s\n", error);
        return 1;
    }
    fox_chat_params params = fox_chat_default_params(model);
    if (n_ctx > 0) params.n_ctx = n_ctx;
    if (max_tokens > 0) params.max_tokens = max_tokens;
    if (temperature >= 0) params.temperature = temperature;
    if (repeat_penalty > 0) params.repeat_penalty = repeat_penalty;
    fox_chat * chat = nullptr;
    if (fox_chat_new(model, params, &chat, error, sizeof error) != FOX_OK) {
        std::fprintf(stderr, "error: %s\n", error);
        fox_model_close(model);
        return 1;
    }
    if (!resume.empty() && std::ifstream(resume).good()) {
        auto started = std::chrono::steady_clock::now();
        if (fox_chat_load(chat, resume.c_str(), error, sizeof error) != FOX_OK) {
            std::fprintf(stderr, "error: %s\n", error);
            fox_chat_free(chat);
            fox_model_close(model);
            return 1;
        }
        std::fprintf(stderr, "restored %zu messages from %s in %.1f ms\n", fox_chat_n_messages(chat), resume.c_str(),
                     std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count());
    }
    int status = 0;
    std::string line;
    while (once || std::getline(std::cin, line)) {
        fox_chat_stats stats{};
        if (fox_chat_send(chat, once ? prompt.c_str() : line.c_str(), print_piece, nullptr, &stats, error, sizeof error) != FOX_OK) {
            std::fprintf(stderr, "\nerror: %s\n", error);
            status = 1;
            break;
        }
        std::printf("\n");
        std::fprintf(stderr, "prompt: %d tokens (%d evaluated) at %.2f tok/s; generation: %d tokens at %.2f tok/s; threads %d\n", stats.prompt_tokens,
                     stats.prompt_evaluated, stats.prompt_tokens_per_second, stats.generated_tokens, stats.tokens_per_second, fox_model_n_threads(model));
        if (!resume.empty() && fox_chat_save(chat, resume.c_str(), error, sizeof error) != FOX_OK) {
            std::fprintf(stderr, "error: %s\n", error);
            status = 1;
            break;
        }
        if (once) break;
    }
    fox_chat_free(chat);
    fox_model_close(model);
    return status;
}
