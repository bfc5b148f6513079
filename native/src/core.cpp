// The fox-edge native core: fox_edge.h over llama.cpp. The same behaviour as the Python runner
// (fox_edge/runner.py, fox_edge/chat.py): the manifest's template rendered with Jinja, BOS added unless the
// text starts with it, the longest common prefix of the KV cache kept across turns, the oldest turns dropped
// to fit, stop on the manifest's stop ids. Nothing here throws across the C ABI.

#include "fox_edge.h"

#include "build-info.h"
#include "chat.h"
#include "ggml-backend.h"
#include "llama.h"
#include "utf8.h"

#include <nlohmann/json.hpp>

extern "C" {  // llama.cpp's vendored SHA-256 is C, its header has no C++ guard
#include "hash/sha256/sha256.h"
}

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <dlfcn.h>
#include <sched.h>
#include <mutex>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <sys/stat.h>
#include <thread>
#include <unistd.h>
#include <vector>

using json = nlohmann::json;

namespace {

constexpr int SCHEMA_VERSION = 1;
constexpr int32_t BATCH = 512;

void set_error(char * error, size_t size, const std::string & message) {
    if (error != nullptr && size > 0) {
        std::snprintf(error, size, "%s", message.c_str());
    }
}

struct Failure {
    fox_status  status;
    std::string message;
};

// `work()`, its Failure returned as its status and message, any other exception as `status` and `what` (with the
// exception's own words where it has them): what every exported function that can fail runs through.
template <typename Work> fox_status guarded(char * error, size_t error_size, fox_status status, const char * what, Work work) {
    try {
        return work();
    } catch (const Failure & failure) {
        set_error(error, error_size, failure.message);
        return failure.status;
    } catch (const std::exception & exc) {
        set_error(error, error_size, std::string(what) + ": " + exc.what());
        return status;
    } catch (...) {
        set_error(error, error_size, what);
        return status;
    }
}

std::string sha256_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure{FOX_ERROR_BUNDLE, path + " cannot be read"};
    sha256_t state;
    sha256_init(&state);
    std::vector<char> buffer(1 << 20);
    while (in) {
        in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
        sha256_update(&state, reinterpret_cast<const unsigned char *>(buffer.data()), static_cast<size_t>(in.gcount()));
    }
    unsigned char digest[SHA256_DIGEST_SIZE];
    sha256_final(&state, digest);
    char hex[2 * SHA256_DIGEST_SIZE + 1];
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++) std::snprintf(hex + 2 * i, 3, "%02x", digest[i]);
    return hex;
}

long long file_size(const std::string & path) {
    struct stat info;
    return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) ? static_cast<long long>(info.st_size) : -1;
}

std::string read_file(const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure{FOX_ERROR_BUNDLE, path + " is missing; this is not a fox-edge bundle"};
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::string token_text(const llama_vocab * vocab, llama_token token, bool special) {
    std::string piece(64, '\0');
    int32_t n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, special);
    if (n < 0) {
        piece.resize(static_cast<size_t>(-n));
        n = llama_token_to_piece(vocab, token, piece.data(), static_cast<int32_t>(piece.size()), 0, special);
    }
    piece.resize(static_cast<size_t>(std::max(n, 0)));
    return piece;
}

std::vector<llama_token> tokenize(const llama_vocab * vocab, const std::string & text, bool parse_special) {
    std::vector<llama_token> tokens(text.size() + 8);
    const int32_t length = static_cast<int32_t>(text.size());
    int32_t n = llama_tokenize(vocab, text.data(), length, tokens.data(), static_cast<int32_t>(tokens.size()), false, parse_special);
    if (n < 0) {
        tokens.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab, text.data(), length, tokens.data(), static_cast<int32_t>(tokens.size()), false, parse_special);
    }
    tokens.resize(static_cast<size_t>(std::max(n, 0)));
    return tokens;
}

// The CPU backend. A build with CPU variants (GGML_BACKEND_DL) has one libggml-cpu-*.so per ARM feature level
// beside libfox_edge; ggml scores each against the running CPU and keeps the best, so one APK runs on an armv8.0
// core without SIGILL and uses dotprod or i8mm where they exist. Looked for in the folder fox_load_cpu_backend names
// (an Android app's nativeLibraryDir), else in this library's own folder; where that folder holds none (an app whose
// libraries stay inside its APK), each variant is opened by name through the system loader and the best one kept.
std::string & cpu_backend_folder() {
    static std::string folder;
    return folder;
}

#ifdef GGML_BACKEND_DL
void load_best_variant_by_name() {
    std::string files = FOX_EDGE_CPU_VARIANT_FILES, best;
    int         best_score = 0;
    for (size_t start = 0; start < files.size();) {
        size_t      end  = std::min(files.find(':', start), files.size());
        std::string name = files.substr(start, end - start);
        start            = end + 1;
        void * handle    = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (handle == nullptr) continue;
        auto * score = reinterpret_cast<int (*)(void)>(dlsym(handle, "ggml_backend_score"));
        int    value = score != nullptr ? score() : 0;  // 0: this CPU lacks what the variant was compiled for
        if (value > best_score) best_score = value, best = name;
        dlclose(handle);
    }
    if (!best.empty()) ggml_backend_load(best.c_str());
}
#endif

ggml_backend_dev_t cpu_backend() {
    static std::once_flag once;
    std::call_once(once, [] {
#ifdef GGML_BACKEND_DL
        std::string folder = cpu_backend_folder();
        Dl_info     info{};
        if (folder.empty() && dladdr(reinterpret_cast<void *>(&fox_cpu_features), &info) != 0 && info.dli_fname != nullptr) {
            folder = info.dli_fname;
            folder = folder.find('/') == std::string::npos ? "." : folder.substr(0, folder.rfind('/'));
        }
        ggml_backend_load_all_from_path(folder.empty() ? "." : folder.c_str());
        if (ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) == nullptr) load_best_variant_by_name();
#endif
    });
    return ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
}

// llama.cpp's AMX kernels (an x86 build for Sapphire Rapids or later) crash in the first matrix product of every type
// they take (ggml-org/llama.cpp#20824, open; seen on this project's Xeon CI machine). Where the CPU backend offers
// that buffer type, weights stay in plain CPU buffers, as fox_edge/backends/llamacpp.py does.
bool extra_buffers_crash(ggml_backend_dev_t cpu) {
    auto * get = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts"));
    for (ggml_backend_buffer_type_t * buft = get != nullptr ? get(cpu) : nullptr; buft != nullptr && *buft != nullptr; ++buft) {
        if (std::strcmp(ggml_backend_buft_name(*buft), "AMX") == 0) return true;
    }
    return false;
}

// manifest.json, read and checked once at open: every later call reads these fields and nothing can throw there.
struct BundleFile {
    std::string path;
    long long   size = 0;
    std::string sha256;
};

struct Manifest {
    std::string              model_path;
    std::vector<BundleFile>  files;
    int32_t                  n_ctx_default = 0;
    std::string              chat_template;
    llama_token              bos = LLAMA_TOKEN_NULL, eos = LLAMA_TOKEN_NULL;
    bool                     add_bos = false;
    std::set<llama_token>    stop_ids;
    int                      use_mmap = -1;  // -1: the manifest leaves it to the runtime
    bool                     repack   = true;
    fox_chat_params          generation{};   // the sampling fields; n_ctx, seed and system_prompt are not the manifest's
    std::string              model_sha256;   // which model a saved chat belongs to
};

// A field of the manifest, or a FOX_ERROR_BUNDLE naming it ("generation.temperature is missing").
const json & field(const json & parent, const char * key, const std::string & where) {
    if (!parent.is_object() || !parent.contains(key)) throw Failure{FOX_ERROR_BUNDLE, "manifest.json: " + where + key + " is missing"};
    return parent.at(key);
}

[[noreturn]] void wrong(const std::string & name, const char * expected) {
    throw Failure{FOX_ERROR_BUNDLE, "manifest.json: " + name + " is not " + expected + "; make the bundle again with `fox-edge bundle`"};
}

long long whole_number(const json & parent, const char * key, const std::string & where, long long minimum) {
    const json & value = field(parent, key, where);
    if (!value.is_number_integer() || value.get<long long>() < minimum) wrong(where + key, ("a whole number of at least " + std::to_string(minimum)).c_str());
    return value.get<long long>();
}

double number(const json & parent, const char * key, const std::string & where) {
    const json & value = field(parent, key, where);
    if (!value.is_number()) wrong(where + key, "a number");
    return value.get<double>();
}

std::string text(const json & parent, const char * key, const std::string & where) {
    const json & value = field(parent, key, where);
    if (!value.is_string()) wrong(where + key, "a string");
    return value.get<std::string>();
}

llama_token token_or_null(const json & parent, const char * key, const std::string & where) {
    const json & value = field(parent, key, where);
    if (value.is_null()) return LLAMA_TOKEN_NULL;
    if (!value.is_number_integer() || value.get<long long>() < 0 || value.get<long long>() > INT32_MAX) wrong(where + key, "a token id or null");
    return value.get<llama_token>();
}

// The cheap check of every launch: each file present at its size.
void check_sizes(const std::string & folder, const Manifest & manifest) {
    for (const BundleFile & file : manifest.files) {
        long long size = file_size(folder + "/" + file.path);
        if (size < 0) throw Failure{FOX_ERROR_BUNDLE, file.path + " is missing; copy the whole bundle again"};
        if (size != file.size) {
            throw Failure{FOX_ERROR_BUNDLE, file.path + " is " + std::to_string(size) + " bytes, the manifest says " + std::to_string(file.size) +
                                                ": the copy is incomplete"};
        }
    }
}

// The full check: every file's sha256.
void check_hashes(const std::string & folder, const Manifest & manifest) {
    for (const BundleFile & file : manifest.files) {
        if (sha256_file(folder + "/" + file.path) != file.sha256) {
            throw Failure{FOX_ERROR_INTEGRITY, file.path + " does not match its sha256: the file is damaged; copy the bundle again"};
        }
    }
}

Manifest read_manifest(const std::string & folder) {
    json m;
    try {
        m = json::parse(read_file(folder + "/manifest.json"));
    } catch (const json::exception & exc) {
        throw Failure{FOX_ERROR_BUNDLE, std::string("manifest.json is not valid JSON: ") + exc.what()};
    }
    if (!m.is_object() || !m.contains("schema_version") || m.at("schema_version") != SCHEMA_VERSION) {
        throw Failure{FOX_ERROR_BUNDLE, "manifest.json has an unknown schema version; this core reads version 1"};
    }
    Manifest manifest;
    const json & format = field(m, "format", "");
    if (text(format, "name", "format.") != "gguf") {
        throw Failure{FOX_ERROR_BUNDLE, "this is an ONNX bundle; run it with onnxruntime-genai (see apps/README.md), the core runs GGUF bundles"};
    }
    manifest.model_path = text(format, "model_path", "format.");
    if (format.contains("runtime_options")) {
        const json & options = format.at("runtime_options");
        if (!options.is_object()) wrong("format.runtime_options", "an object");
        const json use_mmap = options.value("use_mmap", json());
        if (!use_mmap.is_null() && !use_mmap.is_boolean()) wrong("format.runtime_options.use_mmap", "true, false or null");
        manifest.use_mmap = use_mmap.is_boolean() ? use_mmap.get<bool>() : -1;
        const json repack = options.value("repack", json(true));
        if (!repack.is_boolean() && !repack.is_null()) wrong("format.runtime_options.repack", "true, false or null");
        manifest.repack = !repack.is_boolean() || repack.get<bool>();
    }
    const json & files = field(m, "files", "");
    if (!files.is_array()) wrong("files", "a list");
    for (const json & file : files) {
        manifest.files.push_back({text(file, "path", "files[]."), whole_number(file, "size", "files[].", 0), text(file, "sha256", "files[].")});
    }
    for (const BundleFile & file : manifest.files) {
        if (file.path == manifest.model_path) manifest.model_sha256 = file.sha256;
    }
    manifest.n_ctx_default = static_cast<int32_t>(std::min<long long>(whole_number(field(m, "context", ""), "default", "context.", 16), INT32_MAX));
    manifest.chat_template = text(m, "chat_template", "");
    const json & tokenizer = field(m, "tokenizer", "");
    manifest.bos           = token_or_null(tokenizer, "bos_id", "tokenizer.");
    manifest.eos           = token_or_null(tokenizer, "eos_id", "tokenizer.");
    const json & add_bos   = field(tokenizer, "add_bos", "tokenizer.");
    if (!add_bos.is_boolean()) wrong("tokenizer.add_bos", "true or false");
    manifest.add_bos = add_bos.get<bool>();
    const json & stop_ids = field(tokenizer, "stop_ids", "tokenizer.");
    if (!stop_ids.is_array() || stop_ids.empty()) wrong("tokenizer.stop_ids", "a list of token ids");
    for (const json & id : stop_ids) {
        if (!id.is_number_integer() || id.get<long long>() < 0 || id.get<long long>() > INT32_MAX) wrong("tokenizer.stop_ids", "a list of token ids");
        manifest.stop_ids.insert(id.get<llama_token>());
    }
    const json &      g = field(m, "generation", "");
    fox_chat_params & d = manifest.generation;
    d.temperature       = static_cast<float>(number(g, "temperature", "generation."));
    d.top_k             = static_cast<int32_t>(std::min<long long>(whole_number(g, "top_k", "generation.", 0), INT32_MAX));
    d.top_p             = static_cast<float>(number(g, "top_p", "generation."));
    d.min_p             = static_cast<float>(number(g, "min_p", "generation."));
    d.repeat_penalty    = static_cast<float>(number(g, "repeat_penalty", "generation."));
    d.max_tokens        = static_cast<int32_t>(std::min<long long>(whole_number(g, "max_tokens", "generation.", 1), INT32_MAX));
    if (d.temperature < 0 || d.top_p <= 0 || d.top_p > 1 || d.min_p < 0 || d.min_p > 1 || d.repeat_penalty <= 0) {
        throw Failure{FOX_ERROR_BUNDLE, "manifest.json: a generation default is out of range; make the bundle again with `fox-edge bundle`"};
    }
    return manifest;
}

// Thread caps, as the peers learned on phones (../PLATFORMS.md: threads beyond the big cores cost up to 100x):
// where the cores differ (big.LITTLE) at most 4, the performance cores only; where they are alike (a laptop) at most 8.
constexpr int32_t MAX_THREADS_MIXED_CORES = 4;
constexpr int32_t MAX_THREADS_ALIKE_CORES = 8;

// The CPUs this process may run on (an app's affinity, a container's cpuset); empty when unknown.
std::set<int> allowed_cpus() {
    std::set<int> cpus;
#ifdef __linux__  // Android too; Apple platforms have no affinity to read
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
            if (CPU_ISSET(cpu, &set)) cpus.insert(cpu);
        }
    }
#endif
    return cpus;
}

int32_t performance_cores(const char * sysfs_cpu) {
    // A given tree (the tests' fake sysfs) describes other cores than this machine's: its affinity does not apply.
    const std::set<int> allowed = sysfs_cpu == nullptr ? allowed_cpus() : std::set<int>{};
    std::string         root    = sysfs_cpu != nullptr ? sysfs_cpu : "/sys/devices/system/cpu";
    std::vector<long long> capacities;
    DIR * dir = opendir(root.c_str());
    if (dir != nullptr) {
        while (dirent * entry = readdir(dir)) {
            std::string name = entry->d_name;
            if (name.rfind("cpu", 0) != 0 || name.size() < 4 || name.find_first_not_of("0123456789", 3) != std::string::npos) continue;
            if (!allowed.empty() && allowed.count(std::stoi(name.substr(3))) == 0) continue;
            long long value = -1;
            for (const char * file : {"/cpu_capacity", "/cpufreq/cpuinfo_max_freq"}) {
                std::ifstream in(root + "/" + name + file);
                if (in >> value) break;
                value = -1;
            }
            capacities.push_back(value);
        }
        closedir(dir);
    }
    long long highest = capacities.empty() ? -1 : *std::max_element(capacities.begin(), capacities.end());
    long long lowest  = capacities.empty() ? -1 : *std::min_element(capacities.begin(), capacities.end());
    if (highest <= 0 || lowest <= 0) {  // no topology to read: the CPUs this process may use, capped as if they were a phone's
        long usable = !allowed.empty() ? static_cast<long>(allowed.size()) : sysconf(_SC_NPROCESSORS_ONLN);
        return static_cast<int32_t>(std::clamp<long>(usable, 1, MAX_THREADS_MIXED_CORES));
    }
    // Performance cores: within 80 % of the fastest (a 1+3+4 phone's prime and big cores, a laptop's all).
    auto count = std::count_if(capacities.begin(), capacities.end(), [&](long long c) { return c >= highest * 8 / 10; });
    const int32_t cap = lowest == highest ? MAX_THREADS_ALIKE_CORES : MAX_THREADS_MIXED_CORES;
    return static_cast<int32_t>(std::clamp<long>(count, 1, cap));
}

}  // namespace

struct fox_model {
    std::string               folder;
    Manifest                  manifest;
    llama_model *             model = nullptr;
    const llama_vocab *       vocab = nullptr;
    common_chat_templates_ptr templates;
    int32_t                   n_threads = 1;

    ~fox_model() {
        templates.reset();
        if (model != nullptr) llama_model_free(model);
    }

    std::string render(const std::vector<common_chat_msg> & messages, bool add_generation_prompt) const {
        common_chat_templates_inputs inputs;
        inputs.messages              = messages;
        inputs.add_generation_prompt = add_generation_prompt;
        inputs.use_jinja             = true;
        try {
            return common_chat_templates_apply(templates.get(), inputs).prompt;
        } catch (const std::exception & exc) {
            throw Failure{FOX_ERROR_TEMPLATE, std::string("the chat template does not render: ") + exc.what()};
        }
    }

    // As fox_edge.runner.chat_prompt: the template's markup may hold special tokens, the messages' text never does
    // (a user who types "<eos>" writes text, not the end of a turn); BOS first unless the rendering starts with it.
    std::vector<llama_token> conversation_tokens(const std::vector<common_chat_msg> & messages, bool add_generation_prompt) const {
        bool plain = true;
        for (const common_chat_msg & m : messages) plain = plain && tokenize(vocab, m.content, true) == tokenize(vocab, m.content, false);
        if (plain) return with_bos(tokenize(vocab, render(messages, add_generation_prompt), true));  // tokenized whole, as usual
        // Some message spells a control token: placeholders (private-use characters) render in its place, and each
        // message's text is tokenized as text.
        static const std::string open = "\xEE\x80\x80", close = "\xEE\x80\x81";
        std::vector<common_chat_msg> marked = messages;
        for (size_t i = 0; i < marked.size(); i++) marked[i].content = open + std::to_string(i) + close;
        const std::string        rendered = render(marked, add_generation_prompt);
        std::vector<llama_token> tokens;
        auto append = [&tokens](const std::vector<llama_token> & more) { tokens.insert(tokens.end(), more.begin(), more.end()); };
        size_t at = 0;
        while (true) {
            size_t start = rendered.find(open, at);
            size_t end   = start == std::string::npos ? std::string::npos : rendered.find(close, start);
            append(tokenize(vocab, rendered.substr(at, start == std::string::npos ? std::string::npos : start - at), true));
            if (end == std::string::npos) break;
            size_t index = std::stoul(rendered.substr(start + open.size(), end - start - open.size()));
            if (index < messages.size()) append(tokenize(vocab, messages[index].content, false));
            at = end + close.size();
        }
        return with_bos(std::move(tokens));
    }

    std::vector<llama_token> with_bos(std::vector<llama_token> tokens) const {
        const llama_token bos = manifest.bos;
        if (manifest.add_bos && bos != LLAMA_TOKEN_NULL && (tokens.empty() || tokens.front() != bos)) tokens.insert(tokens.begin(), bos);
        return tokens;
    }
};

struct fox_chat {
    fox_model *                  model = nullptr;
    llama_context *              ctx   = nullptr;
    fox_chat_params              params{};
    std::string                  system;
    std::vector<common_chat_msg> history;   // user and assistant messages, oldest first
    std::vector<llama_token>     cached;    // the tokens whose keys and values the KV cache holds, in order
    std::vector<llama_token>     last_reply;
    std::atomic<bool>            cancelled{false};

    ~fox_chat() {
        if (ctx != nullptr) llama_free(ctx);
    }

    std::vector<common_chat_msg> conversation(const std::vector<common_chat_msg> & turns, const std::string & user) const {
        std::vector<common_chat_msg> messages;
        if (!system.empty()) messages.push_back(message("system", system));
        messages.insert(messages.end(), turns.begin(), turns.end());
        messages.push_back(message("user", user));
        return messages;
    }

    static common_chat_msg message(const std::string & role, const std::string & content) {
        common_chat_msg m;
        m.role    = role;
        m.content = content;
        return m;
    }

    // Evaluate tokens[start:] on top of the first `start` cached entries; the last position's logits are kept.
    void decode_from(const std::vector<llama_token> & tokens, size_t start) {
        const size_t n_batch = llama_n_batch(ctx);
        llama_batch  batch   = llama_batch_init(static_cast<int32_t>(n_batch), 0, 1);
        for (size_t offset = start; offset < tokens.size(); offset += n_batch) {
            if (cancelled.load()) {
                llama_batch_free(batch);
                throw Failure{FOX_ERROR_CANCELLED, "cancelled"};
            }
            size_t count = std::min(n_batch, tokens.size() - offset);
            batch.n_tokens = static_cast<int32_t>(count);
            for (size_t i = 0; i < count; i++) {
                batch.token[i]     = tokens[offset + i];
                batch.pos[i]       = static_cast<llama_pos>(offset + i);
                batch.n_seq_id[i]  = 1;
                batch.seq_id[i][0] = 0;
                batch.logits[i]    = offset + i == tokens.size() - 1;
            }
            int32_t status = llama_decode(ctx, batch);
            if (status != 0) {
                llama_batch_free(batch);
                if (cancelled.load()) throw Failure{FOX_ERROR_CANCELLED, "cancelled"};
                throw Failure{FOX_ERROR_DECODE, "llama.cpp failed to evaluate (status " + std::to_string(status) + ")"};
            }
            cached.insert(cached.end(), tokens.begin() + static_cast<long>(offset), tokens.begin() + static_cast<long>(offset + count));
        }
        llama_batch_free(batch);
    }

    // As fox_edge.backends.base.droppable_span and LlamaCppRunner.drop_cached: when the oldest turns were dropped, the
    // cached positions before the kept ones go and the kept ones move down (llama.cpp re-rotates their keys), so a full
    // chat evaluates about its new message instead of the whole conversation again.
    void move_cache_for(const std::vector<llama_token> & tokens) {
        constexpr size_t MIN_MOVED_RUN = 8;
        size_t start = 0;
        while (start < cached.size() && start < tokens.size() && cached[start] == tokens[start]) start++;
        if (start + MIN_MOVED_RUN > tokens.size()) return;
        const auto wanted = tokens.begin() + static_cast<long>(start);
        for (size_t end = start + 1; end + MIN_MOVED_RUN <= cached.size(); end++) {
            const auto kept = cached.begin() + static_cast<long>(end);
            if (!std::equal(kept, kept + MIN_MOVED_RUN, wanted)) continue;
            llama_memory_t memory = llama_get_memory(ctx);
            if (!llama_memory_can_shift(memory) || !llama_memory_seq_rm(memory, 0, static_cast<llama_pos>(start), static_cast<llama_pos>(end))) return;
            llama_memory_seq_add(memory, 0, static_cast<llama_pos>(end), -1, static_cast<llama_pos>(start) - static_cast<llama_pos>(end));
            cached.erase(cached.begin() + static_cast<long>(start), kept);
            return;
        }
    }

    // The KV cache made to hold exactly `tokens`, reusing its longest common prefix; returns how many were computed.
    size_t prefill(const std::vector<llama_token> & tokens) {
        size_t common = 0;
        while (common < cached.size() && common < tokens.size() && cached[common] == tokens[common]) common++;
        common = std::min(common, tokens.size() - 1);  // the last token is always evaluated: its logits are the answer
        llama_memory_t memory = llama_get_memory(ctx);
        if (!llama_memory_seq_rm(memory, 0, static_cast<llama_pos>(common), -1)) {
            llama_memory_clear(memory, true);
            common = 0;
        }
        cached.resize(common);
        decode_from(tokens, common);
        return tokens.size() - common;
    }

    llama_sampler * sampler(const std::vector<llama_token> & prompt) const {
        // The order of fox_edge/sampling.py (llama.cpp's default): repetition penalty, top-k, top-p, min-p, temperature.
        llama_sampler * chain = llama_sampler_chain_init(llama_sampler_chain_default_params());
        if (params.repeat_penalty != 1.0f) {
            int32_t n_vocab = llama_vocab_n_tokens(model->vocab);
            llama_sampler_chain_add(chain, llama_sampler_init_penalties(n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0f, 0.0f));
        }
        if (params.temperature <= 0.0f) {
            llama_sampler_chain_add(chain, llama_sampler_init_greedy());
        } else {
            if (params.top_k > 0) llama_sampler_chain_add(chain, llama_sampler_init_top_k(params.top_k));
            if (params.top_p < 1.0f) llama_sampler_chain_add(chain, llama_sampler_init_top_p(params.top_p, 1));
            if (params.min_p > 0.0f) llama_sampler_chain_add(chain, llama_sampler_init_min_p(params.min_p, 1));
            llama_sampler_chain_add(chain, llama_sampler_init_temp(params.temperature));
            llama_sampler_chain_add(chain, llama_sampler_init_dist(params.seed));
        }
        // The penalty looks back over the prompt too, as the Python sampler's history does.
        size_t from = prompt.size() > static_cast<size_t>(params.repeat_last_n) ? prompt.size() - params.repeat_last_n : 0;
        for (size_t i = from; i < prompt.size(); i++) llama_sampler_accept(chain, prompt[i]);
        return chain;
    }
};

extern "C" {

fox_model_params fox_model_default_params(void) {
    fox_model_params params;
    params.n_threads = 0;
    params.use_mmap  = -1;
    return params;
}

fox_status fox_model_open(const char * bundle_dir, fox_model_params params, fox_model ** out, char * error, size_t error_size) {
    if (out == nullptr || bundle_dir == nullptr) {
        set_error(error, error_size, "fox_model_open needs a bundle folder and a place for the model");
        return FOX_ERROR_ARGUMENT;
    }
    *out = nullptr;
    try {
        auto model      = std::make_unique<fox_model>();
        model->folder   = bundle_dir;
        model->manifest = read_manifest(model->folder);
        const Manifest & m = model->manifest;
        check_sizes(model->folder, m);  // the cheap check of every launch
        if (cpu_backend() == nullptr) {
            throw Failure{FOX_ERROR_LOAD, "no CPU backend: package the libggml-cpu-*.so files beside libfox_edge"};
        }
        // The bundle says how its weights load best on its target (fox-edge's bundle.py): read into memory where
        // llama.cpp repacks them for its CPU kernels, or the mapped pages stay resident beside the repacked copy.
        llama_model_params model_params = llama_model_default_params();
        const bool         use_mmap     = params.use_mmap >= 0 ? params.use_mmap != 0 : m.use_mmap != 0;
        model_params.use_extra_bufts    = m.repack && !extra_buffers_crash(cpu_backend());
        if (!use_mmap) model_params.load_mode = LLAMA_LOAD_MODE_NONE;  // the default maps the file
        std::string path = model->folder + "/" + m.model_path;
        model->model     = llama_model_load_from_file(path.c_str(), model_params);
        if (model->model == nullptr) throw Failure{FOX_ERROR_LOAD, "llama.cpp cannot load " + path};
        model->vocab    = llama_model_get_vocab(model->model);
        std::string bos = m.bos == LLAMA_TOKEN_NULL ? "" : token_text(model->vocab, m.bos, true);
        std::string eos = m.eos == LLAMA_TOKEN_NULL ? "" : token_text(model->vocab, m.eos, true);
        try {
            model->templates = common_chat_templates_init(model->model, m.chat_template, bos, eos);
        } catch (const std::exception & exc) {
            throw Failure{FOX_ERROR_TEMPLATE, std::string("the chat template does not parse: ") + exc.what()};
        }
        model->n_threads = params.n_threads > 0 ? params.n_threads : fox_performance_cores(nullptr);
        *out             = model.release();
        return FOX_OK;
    } catch (const Failure & failure) {
        set_error(error, error_size, failure.message);
        return failure.status;
    } catch (const std::exception & exc) {
        set_error(error, error_size, std::string("the bundle cannot be opened: ") + exc.what());
        return FOX_ERROR_LOAD;
    } catch (...) {
        set_error(error, error_size, "the bundle cannot be opened");
        return FOX_ERROR_LOAD;
    }
}

fox_status fox_model_verify(const fox_model * model, char * error, size_t error_size) {
    if (model == nullptr) return FOX_ERROR_ARGUMENT;
    return guarded(error, error_size, FOX_ERROR_INTEGRITY, "out of memory while verifying the bundle", [&] {
        check_hashes(model->folder, model->manifest);
        return FOX_OK;
    });
}

fox_status fox_bundle_verify(const char * bundle_dir, char * error, size_t error_size) {
    if (bundle_dir == nullptr) {
        set_error(error, error_size, "fox_bundle_verify needs a bundle folder");
        return FOX_ERROR_ARGUMENT;
    }
    return guarded(error, error_size, FOX_ERROR_INTEGRITY, "out of memory while verifying the bundle", [&] {
        const Manifest manifest = read_manifest(bundle_dir);
        check_sizes(bundle_dir, manifest);
        check_hashes(bundle_dir, manifest);
        return FOX_OK;
    });
}

void fox_model_close(fox_model * model) { delete model; }

int32_t fox_model_n_ctx_default(const fox_model * model) { return model == nullptr ? 0 : model->manifest.n_ctx_default; }

int32_t fox_model_n_threads(const fox_model * model) { return model == nullptr ? 0 : model->n_threads; }

int64_t fox_model_render_chat(const fox_model * model, const fox_message * messages, size_t n_messages, bool add_generation_prompt, char * out,
                              size_t out_size, char * error, size_t error_size) {
    if (model == nullptr || (messages == nullptr && n_messages > 0)) return -1;
    try {
        std::vector<common_chat_msg> conversation;
        for (size_t i = 0; i < n_messages; i++) conversation.push_back(fox_chat::message(messages[i].role, messages[i].content));
        std::string text = model->render(conversation, add_generation_prompt);
        if (out != nullptr && out_size > 0) {
            size_t n = std::min(text.size(), out_size - 1);
            std::memcpy(out, text.data(), n);
            out[n] = '\0';
        }
        return static_cast<int64_t>(text.size());
    } catch (const Failure & failure) {
        set_error(error, error_size, failure.message);
        return -1;
    } catch (...) {  // std::bad_alloc
        set_error(error, error_size, "out of memory while rendering the chat");
        return -1;
    }
}

fox_chat_params fox_chat_default_params(const fox_model * model) {
    fox_chat_params params{};
    params.temperature    = 0.7f;
    params.top_k          = 40;
    params.top_p          = 0.95f;
    params.min_p          = 0.05f;
    params.repeat_penalty = 1.0f;  // off, as llama.cpp's default
    params.repeat_last_n  = 64;
    params.max_tokens     = 512;
    params.seed           = 0xFFFFFFFF;  // LLAMA_DEFAULT_SEED: a random seed
    if (model != nullptr) {
        const fox_chat_params & g = model->manifest.generation;
        params.temperature        = g.temperature;
        params.top_k              = g.top_k;
        params.top_p              = g.top_p;
        params.min_p              = g.min_p;
        params.repeat_penalty     = g.repeat_penalty;
        params.max_tokens         = g.max_tokens;
    }
    return params;
}

static bool abort_when_cancelled(void * data) { return static_cast<fox_chat *>(data)->cancelled.load(); }

static bool sampling_in_range(const fox_chat_params & params) {
    return params.max_tokens >= 1 && params.temperature >= 0 && params.top_p > 0 && params.top_p <= 1 && params.min_p >= 0 && params.min_p <= 1 &&
           params.repeat_penalty > 0 && params.top_k >= 0 && params.repeat_last_n >= 0;
}

static fox_status chat_new(fox_model * model, fox_chat_params params, fox_chat ** out, char * error, size_t error_size) {
    if (model == nullptr || out == nullptr || !sampling_in_range(params)) {
        set_error(error, error_size, "fox_chat_new: a model, and parameters in range (fox_chat_default_params gives the manifest's)");
        return FOX_ERROR_ARGUMENT;
    }
    auto chat    = std::make_unique<fox_chat>();
    chat->model  = model;
    chat->params = params;
    chat->system = params.system_prompt != nullptr ? params.system_prompt : "";
    int32_t n_ctx = params.n_ctx > 0 ? params.n_ctx : fox_model_n_ctx_default(model);
    n_ctx         = std::min<int32_t>(n_ctx, llama_model_n_ctx_train(model->model));
    llama_context_params ctx_params = llama_context_default_params();
    ctx_params.n_ctx               = static_cast<uint32_t>(n_ctx);
    ctx_params.n_batch = ctx_params.n_ubatch = static_cast<uint32_t>(std::min(BATCH, n_ctx));
    ctx_params.n_threads = ctx_params.n_threads_batch = model->n_threads;
    ctx_params.no_perf                                = true;
    ctx_params.abort_callback                         = abort_when_cancelled;
    ctx_params.abort_callback_data                    = chat.get();
    chat->ctx                                         = llama_init_from_model(model->model, ctx_params);
    if (chat->ctx == nullptr) {
        set_error(error, error_size, "llama.cpp cannot make a " + std::to_string(n_ctx) + "-token context; use a smaller n_ctx");
        return FOX_ERROR_LOAD;
    }
    *out = chat.release();
    return FOX_OK;
}

fox_status fox_chat_new(fox_model * model, fox_chat_params params, fox_chat ** out, char * error, size_t error_size) {
    try {
        return chat_new(model, params, out, error, error_size);
    } catch (...) {  // std::bad_alloc
        set_error(error, error_size, "out of memory while making a chat; use a smaller n_ctx");
        return FOX_ERROR_LOAD;
    }
}

void fox_chat_free(fox_chat * chat) { delete chat; }

}  // extern "C"

namespace {
constexpr char SAVED_CHAT_MAGIC[] = "fox-edge chat 1\n";

fox_status save_chat(const fox_chat * chat, const std::string & path) {
    json header;
    header["model_sha256"] = chat->model->manifest.model_sha256;
    header["n_ctx"]        = llama_n_ctx(chat->ctx);
    header["system"]       = chat->system;
    json history           = json::array();
    for (const common_chat_msg & m : chat->history) history.push_back({m.role, m.content});
    header["history"] = history;
    header["cached"]  = chat->cached;
    std::vector<uint8_t> state(llama_state_seq_get_size(chat->ctx, 0));
    state.resize(llama_state_seq_get_data(chat->ctx, state.data(), state.size(), 0));
    header["state_bytes"] = state.size();
    const std::string partial = path + ".part";
    {
        std::ofstream out(partial, std::ios::binary | std::ios::trunc);
        const std::string line = header.dump() + "\n";
        out.write(SAVED_CHAT_MAGIC, sizeof SAVED_CHAT_MAGIC - 1);
        out.write(line.data(), static_cast<std::streamsize>(line.size()));
        out.write(reinterpret_cast<const char *>(state.data()), static_cast<std::streamsize>(state.size()));
        if (!out.flush()) {
            std::remove(partial.c_str());
            throw Failure{FOX_ERROR_ARGUMENT, "cannot write " + partial + "; is the folder writable and the disk not full?"};
        }
    }
    if (std::rename(partial.c_str(), path.c_str()) != 0) {
        std::remove(partial.c_str());
        throw Failure{FOX_ERROR_ARGUMENT, "cannot rename " + partial + " to " + path};
    }
    return FOX_OK;
}

fox_status load_chat(fox_chat * chat, const std::string & path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure{FOX_ERROR_ARGUMENT, path + " cannot be read"};
    std::string magic(sizeof SAVED_CHAT_MAGIC - 1, '\0'), line;
    in.read(magic.data(), static_cast<std::streamsize>(magic.size()));
    if (magic != SAVED_CHAT_MAGIC || !std::getline(in, line)) throw Failure{FOX_ERROR_ARGUMENT, path + " is not a chat saved by fox_chat_save"};
    json header;
    try {
        header = json::parse(line);
    } catch (const json::exception &) {
        throw Failure{FOX_ERROR_ARGUMENT, path + " is damaged (its header is not JSON); the chat cannot be restored"};
    }
    const Manifest & m = chat->model->manifest;
    if (!header.is_object() || header.value("model_sha256", std::string()) != m.model_sha256) {
        throw Failure{FOX_ERROR_ARGUMENT, path + " was saved with another model; open the bundle it was saved with"};
    }
    std::vector<llama_token> cached = header.at("cached").get<std::vector<llama_token>>();
    if (cached.size() > llama_n_ctx(chat->ctx)) {
        throw Failure{FOX_ERROR_ARGUMENT, path + " holds " + std::to_string(cached.size()) + " tokens, more than this chat's " +
                                              std::to_string(llama_n_ctx(chat->ctx)) + "-token context; make the chat with a larger n_ctx"};
    }
    std::vector<uint8_t> state(header.at("state_bytes").get<size_t>());
    in.read(reinterpret_cast<char *>(state.data()), static_cast<std::streamsize>(state.size()));
    if (static_cast<size_t>(in.gcount()) != state.size()) throw Failure{FOX_ERROR_ARGUMENT, path + " is truncated; the chat cannot be restored"};
    std::vector<common_chat_msg> history;
    for (const json & entry : header.at("history")) history.push_back(fox_chat::message(entry.at(0), entry.at(1)));
    llama_memory_clear(llama_get_memory(chat->ctx), true);
    chat->cached.clear();
    if (!state.empty() && llama_state_seq_set_data(chat->ctx, state.data(), state.size(), 0) == 0) {
        llama_memory_clear(llama_get_memory(chat->ctx), true);
        throw Failure{FOX_ERROR_ARGUMENT, path + "'s KV cache does not fit this chat (another context or cache type); the chat is left empty"};
    }
    chat->system  = header.value("system", std::string());
    chat->history = std::move(history);
    chat->cached  = std::move(cached);
    chat->last_reply.clear();
    return FOX_OK;
}

}  // namespace

extern "C" {

fox_status fox_chat_save(const fox_chat * chat, const char * path, char * error, size_t error_size) {
    if (chat == nullptr || path == nullptr) return FOX_ERROR_ARGUMENT;
    return guarded(error, error_size, FOX_ERROR_ARGUMENT, "the chat cannot be saved", [&] { return save_chat(chat, path); });
}

fox_status fox_chat_load(fox_chat * chat, const char * path, char * error, size_t error_size) {
    if (chat == nullptr || path == nullptr) return FOX_ERROR_ARGUMENT;
    return guarded(error, error_size, FOX_ERROR_ARGUMENT, "the saved chat is damaged", [&] { return load_chat(chat, path); });
}

size_t fox_chat_n_messages(const fox_chat * chat) { return chat == nullptr ? 0 : chat->history.size(); }

fox_message fox_chat_message(const fox_chat * chat, size_t index) {
    if (chat == nullptr || index >= chat->history.size()) return {nullptr, nullptr};
    return {chat->history[index].role.c_str(), chat->history[index].content.c_str()};
}

fox_status fox_chat_set_history(fox_chat * chat, const fox_message * messages, size_t n_messages, char * error, size_t error_size) {
    if (chat == nullptr || (messages == nullptr && n_messages > 0)) return FOX_ERROR_ARGUMENT;
    return guarded(error, error_size, FOX_ERROR_ARGUMENT, "the history cannot be set", [&] {
        std::vector<common_chat_msg> history;
        for (size_t i = 0; i < n_messages; i++) {
            const std::string role = messages[i].role != nullptr ? messages[i].role : "";
            if ((role != "user" && role != "assistant") || messages[i].content == nullptr) {
                throw Failure{FOX_ERROR_ARGUMENT, "message " + std::to_string(i) + ": the history holds user and assistant messages with text"};
            }
            history.push_back(fox_chat::message(role, messages[i].content));
        }
        chat->history = std::move(history);  // the KV cache keeps its common prefix with the next prompt
        chat->last_reply.clear();
        return FOX_OK;
    });
}

fox_status fox_chat_undo(fox_chat * chat) {
    if (chat == nullptr || chat->history.size() < 2) return FOX_ERROR_ARGUMENT;
    chat->history.resize(chat->history.size() - 2);
    chat->last_reply.clear();
    return FOX_OK;
}

fox_status fox_chat_set_params(fox_chat * chat, fox_chat_params params, char * error, size_t error_size) {
    if (chat == nullptr || !sampling_in_range(params)) {
        set_error(error, error_size, "fox_chat_set_params: parameters in range (fox_chat_default_params gives the manifest's)");
        return FOX_ERROR_ARGUMENT;
    }
    params.n_ctx         = chat->params.n_ctx;
    params.system_prompt = nullptr;  // the chat keeps its own copy
    chat->params         = params;
    return FOX_OK;
}

void fox_chat_reset(fox_chat * chat) {
    if (chat != nullptr) chat->history.clear();
}

void fox_chat_cancel(fox_chat * chat) {
    if (chat != nullptr) chat->cancelled.store(true);
}

size_t fox_chat_last_tokens(const fox_chat * chat, int32_t * tokens, size_t capacity) {
    if (chat == nullptr) return 0;
    if (tokens != nullptr) std::copy_n(chat->last_reply.begin(), std::min(capacity, chat->last_reply.size()), tokens);
    return chat->last_reply.size();
}

static fox_status chat_send(fox_chat * chat, const char * message, fox_text_callback on_text, void * user_data, fox_chat_stats * stats, char * error,
                            size_t error_size) {
    if (chat == nullptr || message == nullptr || message[0] == '\0') {
        set_error(error, error_size, "fox_chat_send needs a chat and a non-empty message");
        return FOX_ERROR_ARGUMENT;
    }
    chat->last_reply.clear();
    fox_chat_stats   result{};
    fox::Utf8Stream  utf8;
    std::string      reply;
    fox_status       status = FOX_OK;
    const fox_model * model = chat->model;
    auto emit = [&](const std::string & text) {
        if (!text.empty()) {
            reply += text;
            if (on_text != nullptr) on_text(text.data(), text.size(), user_data);
        }
    };
    try {
        // The whole conversation, the oldest turns dropped while it and room for a reply do not fit (as ChatSession).
        int32_t n_ctx   = static_cast<int32_t>(llama_n_ctx(chat->ctx));
        int32_t reserve = std::min(chat->params.max_tokens, n_ctx / 4);
        std::vector<common_chat_msg> turns = chat->history;
        std::vector<llama_token> prompt = model->conversation_tokens(chat->conversation(turns, message), true);
        while (static_cast<int32_t>(prompt.size()) + reserve > n_ctx && !turns.empty()) {
            turns.erase(turns.begin(), turns.begin() + std::min<size_t>(2, turns.size()));
            result.dropped_turns++;
            prompt = model->conversation_tokens(chat->conversation(turns, message), true);
        }
        if (static_cast<int32_t>(prompt.size()) + 1 > n_ctx) {
            throw Failure{FOX_ERROR_CONTEXT, "this message is " + std::to_string(prompt.size()) + " tokens with the chat template, longer than the " +
                                                 std::to_string(n_ctx) + "-token context; shorten it or use a larger context"};
        }
        chat->history = turns;
        if (result.dropped_turns > 0) chat->move_cache_for(prompt);

        auto started             = std::chrono::steady_clock::now();
        result.prompt_tokens     = static_cast<int32_t>(prompt.size());
        result.prompt_evaluated  = static_cast<int32_t>(chat->prefill(prompt));
        double prompt_seconds    = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        result.prompt_tokens_per_second = prompt_seconds > 0 ? result.prompt_evaluated / prompt_seconds : 0.0;

        std::unique_ptr<llama_sampler, decltype(&llama_sampler_free)> sampler(chat->sampler(prompt), llama_sampler_free);
        started = std::chrono::steady_clock::now();
        result.stop_reason = 1;
        while (true) {
            if (chat->cancelled.load()) throw Failure{FOX_ERROR_CANCELLED, "cancelled"};
            llama_token token = llama_sampler_sample(sampler.get(), chat->ctx, -1);
            if (model->manifest.stop_ids.count(token) != 0) {
                result.stop_reason = 0;
                break;
            }
            llama_sampler_accept(sampler.get(), token);
            chat->last_reply.push_back(token);
            result.generated_tokens++;
            emit(utf8.push(token_text(model->vocab, token, false)));
            if (result.generated_tokens >= chat->params.max_tokens) break;
            if (static_cast<int32_t>(chat->cached.size()) + 1 > n_ctx) {
                result.stop_reason = 2;
                break;
            }
            std::vector<llama_token> next = chat->cached;
            next.push_back(token);
            chat->decode_from(next, chat->cached.size());
        }
        double seconds           = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        result.tokens_per_second = seconds > 0 ? result.generated_tokens / seconds : 0.0;
    } catch (const Failure & failure) {
        status = failure.status;
        if (status == FOX_ERROR_CANCELLED) {
            result.stop_reason = 3;
        } else {
            set_error(error, error_size, failure.message);
        }
    } catch (const std::exception & exc) {
        status = FOX_ERROR_DECODE;
        set_error(error, error_size, exc.what());
    }
    emit(utf8.flush());
    if (status == FOX_OK || status == FOX_ERROR_CANCELLED) {  // a cancelled reply is kept as far as it got
        chat->history.push_back(fox_chat::message("user", message));
        chat->history.push_back(fox_chat::message("assistant", reply));
    }
    if (status == FOX_ERROR_CANCELLED) set_error(error, error_size, "cancelled");
    if (stats != nullptr) *stats = result;
    return status;
}

fox_status fox_chat_send(fox_chat * chat, const char * message, fox_text_callback on_text, void * user_data, fox_chat_stats * stats, char * error,
                         size_t error_size) {
    fox_status status = FOX_ERROR_DECODE;
    try {
        status = chat_send(chat, message, on_text, user_data, stats, error, error_size);
    } catch (...) {  // std::bad_alloc, or an exception from the caller's callback
        set_error(error, error_size, "the reply failed: out of memory, or the text callback threw");
    }
    // A cancel holds until the send it was meant for returns: one that came just before the send began stops it
    // before its prompt is evaluated (Stop pressed right after Send) instead of being lost.
    if (chat != nullptr) chat->cancelled.store(false);
    return status;
}

int32_t fox_performance_cores(const char * sysfs_cpu) {
    try {
        return performance_cores(sysfs_cpu);
    } catch (...) {
        return 1;
    }
}

}  // extern "C"

namespace {
struct LogRoute {
    std::mutex       lock;
    fox_log_callback callback  = nullptr;
    void *           user_data = nullptr;
    int              min_level = FOX_LOG_DEBUG;
    int              last      = GGML_LOG_LEVEL_INFO;  // the level a GGML_LOG_LEVEL_CONT piece continues
};
LogRoute & log_route() {
    static LogRoute route;
    return route;
}
void route_log(ggml_log_level level, const char * text, void *) {
    LogRoute &                  route = log_route();
    std::lock_guard<std::mutex> hold(route.lock);
    int                         real  = level == GGML_LOG_LEVEL_CONT ? route.last : static_cast<int>(level);
    route.last                        = real;
    if (route.callback == nullptr || text == nullptr || real < route.min_level || real == GGML_LOG_LEVEL_NONE) return;
    route.callback(static_cast<fox_log_level>(std::clamp(real, 1, 4)), text, route.user_data);
}
}  // namespace

extern "C" {

void fox_log_set(fox_log_callback callback, fox_log_level min_level, void * user_data) {
    {
        LogRoute &                  route = log_route();
        std::lock_guard<std::mutex> hold(route.lock);
        route.callback  = callback;
        route.user_data = user_data;
        route.min_level = min_level;
    }
    llama_log_set(callback != nullptr ? route_log : nullptr, nullptr);  // llama.cpp passes it on to ggml; NULL: stderr
}

const char * fox_version(void) {
    static const std::string version = std::string("fox-edge ") + FOX_EDGE_VERSION + " (llama.cpp " + llama_build_info() + ")";
    return version.c_str();
}

fox_status fox_load_cpu_backend(const char * folder, char * error, size_t error_size) {
    try {
        if (folder != nullptr) cpu_backend_folder() = folder;  // read once, by the first cpu_backend()
        if (cpu_backend() != nullptr) return FOX_OK;
        set_error(error, error_size, "no CPU backend: package the libggml-cpu-*.so files with libfox_edge (" + std::string(folder ? folder : "") + ")");
        return FOX_ERROR_LOAD;
    } catch (...) {
        set_error(error, error_size, "no CPU backend could be loaded");
        return FOX_ERROR_LOAD;
    }
}

int64_t fox_cpu_features(char * out, size_t out_size) {
    ggml_backend_dev_t device = cpu_backend();
    if (device == nullptr) return -1;
    ggml_backend_reg_t reg          = ggml_backend_dev_backend_reg(device);
    auto               get_features = reinterpret_cast<ggml_backend_get_features_t>(ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features"));
    std::string        features;
    for (ggml_backend_feature * f = get_features == nullptr ? nullptr : get_features(reg); f != nullptr && f->name != nullptr; f++) {
        if (std::strcmp(f->value, "1") == 0) features += (features.empty() ? "" : " ") + std::string(f->name);
    }
    if (out != nullptr && out_size > 0) std::snprintf(out, out_size, "%s", features.c_str());
    return static_cast<int64_t>(features.size());
}

}  // extern "C"
