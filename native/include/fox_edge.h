/*
 * fox_edge.h: the fox-edge native core, one C API over llama.cpp for every app (Android through JNI, iOS and
 * macOS through Swift, desktop programs directly).
 *
 * It opens a fox-edge bundle (manifest.json checked, every file at its size), renders the manifest's chat
 * template with llama.cpp's Jinja engine, samples with the manifest's defaults through llama.cpp's sampler
 * chain, stops on the manifest's stop ids, keeps the KV cache across turns, drops the oldest turns when the
 * context fills, and streams text that is always complete UTF-8. manifest.json is checked whole at open (a missing
 * or mistyped field is FOX_ERROR_BUNDLE naming it), so no later call can fail on it. Errors are returned, never
 * thrown: no exported function lets an exception out. A handle is used from one thread at a time, except
 * fox_chat_cancel, which any thread may call.
 */
#ifndef FOX_EDGE_H
#define FOX_EDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#    define FOX_API __declspec(dllexport)
#else
#    define FOX_API __attribute__((visibility("default")))
#endif

typedef enum fox_status {
    FOX_OK = 0,
    FOX_ERROR_ARGUMENT,  /* a NULL handle, an empty message, a parameter out of range */
    FOX_ERROR_BUNDLE,    /* manifest.json missing or invalid, a file missing or of the wrong size */
    FOX_ERROR_INTEGRITY, /* fox_model_verify: a file's sha256 differs from the manifest's */
    FOX_ERROR_LOAD,      /* llama.cpp could not load the model or make a context */
    FOX_ERROR_TEMPLATE,  /* the chat template does not render */
    FOX_ERROR_CONTEXT,   /* one message does not fit the context even alone */
    FOX_ERROR_DECODE,    /* llama.cpp failed to evaluate */
    FOX_ERROR_CANCELLED, /* fox_chat_cancel was called during fox_chat_send */
} fox_status;

typedef struct fox_model fox_model; /* a bundle, opened */
typedef struct fox_chat  fox_chat;  /* a conversation with its KV cache */

typedef struct fox_model_params {
    int32_t n_threads; /* 0: the performance cores (fox_performance_cores) */
    int32_t use_mmap;  /* -1: as the bundle's manifest says (format.runtime_options), 0: read the file into memory, 1: map it */
} fox_model_params;

FOX_API fox_model_params fox_model_default_params(void);

/* Opens the bundle folder `bundle_dir`. On failure *model is NULL and `error` (if given) holds one line. */
FOX_API fox_status fox_model_open(const char * bundle_dir, fox_model_params params, fox_model ** model, char * error, size_t error_size);
/* Every file's sha256 against the manifest: seconds for a 1 GB model on a phone, so at install or first launch. */
FOX_API fox_status fox_model_verify(const fox_model * model, char * error, size_t error_size);
/* The same check of the bundle folder `bundle_dir` without loading the model: the manifest read whole, every file
 * present at its size and sha256 (FOX_ERROR_BUNDLE or FOX_ERROR_INTEGRITY otherwise). For a copy that must be proven
 * before it replaces a good one. */
FOX_API fox_status fox_bundle_verify(const char * bundle_dir, char * error, size_t error_size);
FOX_API void       fox_model_close(fox_model * model);

FOX_API int32_t fox_model_n_ctx_default(const fox_model * model);
FOX_API int32_t fox_model_n_threads(const fox_model * model);

typedef struct fox_message {
    const char * role; /* "system", "user", "assistant" */
    const char * content;
} fox_message;

/* The conversation as the manifest's template writes it (for an app's logs and for tests). Returns the
 * rendered length in bytes, or -1 (error holds why); writes at most out_size - 1 bytes and a terminating NUL. */
FOX_API int64_t fox_model_render_chat(const fox_model * model, const fox_message * messages, size_t n_messages,
                                      bool add_generation_prompt, char * out, size_t out_size, char * error, size_t error_size);

typedef struct fox_chat_params {
    int32_t      n_ctx;      /* 0: the manifest's default context */
    float        temperature; /* 0: greedy */
    int32_t      top_k;
    float        top_p;
    float        min_p;
    float        repeat_penalty; /* 1: off */
    int32_t      repeat_last_n;
    int32_t      max_tokens;
    uint32_t     seed;
    const char * system_prompt; /* NULL: none; copied */
} fox_chat_params;

/* The manifest's generation defaults. */
FOX_API fox_chat_params fox_chat_default_params(const fox_model * model);

FOX_API fox_status fox_chat_new(fox_model * model, fox_chat_params params, fox_chat ** chat, char * error, size_t error_size);
FOX_API void       fox_chat_free(fox_chat * chat);
FOX_API void       fox_chat_reset(fox_chat * chat);

/* Receives the reply as it is generated: `text` is `length` bytes of complete UTF-8 (not NUL-terminated). */
typedef void (*fox_text_callback)(const char * text, size_t length, void * user_data);

typedef struct fox_chat_stats {
    int32_t prompt_tokens;    /* the whole conversation, rendered */
    int32_t prompt_evaluated; /* of which computed (the rest came from the KV cache) */
    double  prompt_tokens_per_second;
    int32_t generated_tokens;
    double  tokens_per_second;
    int32_t dropped_turns; /* oldest turns dropped to fit the context */
    int32_t stop_reason;   /* 0: a stop id, 1: max_tokens, 2: the context is full, 3: cancelled */
} fox_chat_stats;

/* Sends `message` as the user and streams the reply; the exchange joins the history (a cancelled reply as far
 * as it got). `stats` may be NULL. Returns FOX_ERROR_CANCELLED when cancelled. */
FOX_API fox_status fox_chat_send(fox_chat * chat, const char * message, fox_text_callback on_text, void * user_data,
                                 fox_chat_stats * stats, char * error, size_t error_size);
/* Stops fox_chat_send within one token (or one prompt batch), from any thread. A cancel holds until the send
 * returns: one that arrives before the send has begun (Stop pressed right after Send) stops it before its prompt is
 * evaluated. Call it only for a send that is running or about to run: the next send clears it when it returns. */
FOX_API void fox_chat_cancel(fox_chat * chat);

/* A conversation that survives the app: fox_chat_save writes the system prompt, the history and the KV cache of its
 * tokens to `path` (a temporary name, renamed when complete); fox_chat_load replaces `chat`'s conversation with the
 * saved one, the KV cache included, so the next send evaluates only its new message. A file saved with another model
 * or a larger context than `chat`'s is refused (FOX_ERROR_ARGUMENT). Not while a reply streams. */
FOX_API fox_status fox_chat_save(const fox_chat * chat, const char * path, char * error, size_t error_size);
FOX_API fox_status fox_chat_load(fox_chat * chat, const char * path, char * error, size_t error_size);

/* The history, oldest first: its length, and message `index` (pointers valid until the history next changes). */
FOX_API size_t      fox_chat_n_messages(const fox_chat * chat);
FOX_API fox_message fox_chat_message(const fox_chat * chat, size_t index);
/* Replaces the history (user and assistant messages; the system prompt stays); the KV cache keeps what still matches. */
FOX_API fox_status  fox_chat_set_history(fox_chat * chat, const fox_message * messages, size_t n_messages, char * error, size_t error_size);
/* Removes the last exchange (the user message and its reply): then send it again to regenerate it, or another to edit it. */
FOX_API fox_status  fox_chat_undo(fox_chat * chat);
/* Sampling for the next sends (n_ctx and system_prompt are the chat's own and ignored here). */
FOX_API fox_status  fox_chat_set_params(fox_chat * chat, fox_chat_params params, char * error, size_t error_size);

/* The token ids of the last reply, for tests: returns their count, writes at most `capacity`. */
FOX_API size_t fox_chat_last_tokens(const fox_chat * chat, int32_t * tokens, size_t capacity);

/* How many threads to run: the performance cores, those whose capacity (cpu_capacity, else cpuinfo_max_freq) is at
 * least 80 % of the highest, read from `sysfs_cpu` (NULL: /sys/devices/system/cpu, only the CPUs this process's
 * affinity allows); at most 4 where the cores differ (big.LITTLE), 8 where they are alike; when the topology says
 * nothing, the CPUs this process may use, at most 4. */
FOX_API int32_t fox_performance_cores(const char * sysfs_cpu);

/* The CPU features the loaded CPU backend uses, space-separated ("NEON ARM_FMA DOTPROD ..."); writes at most
 * out_size - 1 bytes and a NUL, returns the full length, or -1 when no CPU backend could be loaded. A build with
 * CPU variants (FOX_EDGE_CPU_VARIANTS, the Android build) loads the best libggml-cpu-*.so beside libfox_edge for
 * the CPU it runs on: armv8.0 cores get plain NEON, newer ones dotprod, i8mm, SVE. */
FOX_API int64_t fox_cpu_features(char * out, size_t out_size);

/* Loads the CPU backend now, its variants looked for in `folder` (Android: the app's nativeLibraryDir, which Kotlin
 * passes; NULL: libfox_edge's own folder) and, where that folder holds none (an app's libraries left inside its APK,
 * which the loader still finds by name), opened by name, the best for this CPU kept. Call it before anything else:
 * the first call of any function loads the backend once. FOX_ERROR_LOAD when no variant runs here. */
FOX_API fox_status fox_load_cpu_backend(const char * folder, char * error, size_t error_size);

/* Where log lines go: llama.cpp and ggml write theirs to stderr, which goes nowhere on Android and iOS. */
typedef enum fox_log_level { FOX_LOG_DEBUG = 1, FOX_LOG_INFO, FOX_LOG_WARN, FOX_LOG_ERROR } fox_log_level;
/* One line of llama.cpp's or ggml's log (`text` ends with its newline; a line may come in several pieces, each
 * with the level of the line). Called on whichever thread logs. */
typedef void (*fox_log_callback)(fox_log_level level, const char * text, void * user_data);
/* Routes the log to `callback` (logcat, os_log), at `min_level` and above; NULL restores stderr. Any time, any thread. */
FOX_API void fox_log_set(fox_log_callback callback, fox_log_level min_level, void * user_data);

/* "fox-edge 0.1.0 (llama.cpp b1234-abcdef0)": what an app's bug report should carry. */
FOX_API const char * fox_version(void);

#ifdef __cplusplus
}
#endif

#endif /* FOX_EDGE_H */
