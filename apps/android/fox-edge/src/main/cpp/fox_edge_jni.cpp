// The JNI bridge between dev.foxedge.FoxNative (Kotlin) and the native core (fox_edge.h).
//
// Text crosses as byte[] of standard UTF-8 in both directions, never through NewStringUTF / GetStringUTFChars:
// those speak modified UTF-8, which encodes a 4-byte emoji as two 3-byte surrogates and aborts on a piece cut
// mid-character. The core only ever hands over whole characters, so Kotlin decodes each piece on its own.
// Errors become a dev.foxedge.FoxException (status code and UTF-8 message) raised when the call returns.

#include "fox_edge.h"

#include <jni.h>

#ifdef __ANDROID__
#    include <android/log.h>
#endif

#include <string>
#include <vector>

namespace {

std::string bytes(JNIEnv * env, jbyteArray array) {
    if (array == nullptr) return {};
    jsize length = env->GetArrayLength(array);
    std::string out(static_cast<size_t>(length), '\0');
    env->GetByteArrayRegion(array, 0, length, reinterpret_cast<jbyte *>(out.data()));
    return out;
}

jbyteArray to_bytes(JNIEnv * env, const char * data, size_t length) {
    jbyteArray array = env->NewByteArray(static_cast<jsize>(length));
    if (array != nullptr) env->SetByteArrayRegion(array, 0, static_cast<jsize>(length), reinterpret_cast<const jbyte *>(data));
    return array;
}

void raise(JNIEnv * env, int status, const char * message) {
    jclass type = env->FindClass("dev/foxedge/FoxException");
    if (type == nullptr) return;  // NoClassDefFoundError is pending
    jmethodID make = env->GetMethodID(type, "<init>", "(I[B)V");
    jbyteArray text = to_bytes(env, message, std::char_traits<char>::length(message));
    auto exception = static_cast<jthrowable>(env->NewObject(type, make, static_cast<jint>(status), text));
    if (exception != nullptr) env->Throw(exception);
}

struct Sink {
    JNIEnv *  env;
    jobject   target;
    jmethodID on_text;
    fox_chat * chat;
};

void deliver(const char * text, size_t length, void * data) {
    auto * sink = static_cast<Sink *>(data);
    if (sink->env->ExceptionCheck()) return;  // an earlier piece threw: the reply is being cancelled
    jbyteArray piece = to_bytes(sink->env, text, length);
    sink->env->CallVoidMethod(sink->target, sink->on_text, piece);
    sink->env->DeleteLocalRef(piece);
    if (sink->env->ExceptionCheck()) fox_chat_cancel(sink->chat);  // the Kotlin side threw: stop generating
}

#ifdef __ANDROID__
// llama.cpp's log to logcat (tag "fox-edge"): Android's stderr goes nowhere.
void to_logcat(fox_log_level level, const char * text, void *) {
    int priority = level == FOX_LOG_ERROR ? ANDROID_LOG_ERROR : level == FOX_LOG_WARN ? ANDROID_LOG_WARN : level == FOX_LOG_INFO ? ANDROID_LOG_INFO
                                                                                                                              : ANDROID_LOG_DEBUG;
    __android_log_write(priority, "fox-edge", text);
}
#endif

// Kotlin's parallel role and content arrays as fox_messages (the strings live as long as this object).
struct Messages {
    std::vector<std::string> roles, contents;
    std::vector<fox_message> list;

    Messages(JNIEnv * env, jobjectArray role_array, jobjectArray content_array) {
        jsize count = env->GetArrayLength(role_array);
        for (jsize i = 0; i < count; i++) {  // each element a local reference, freed at once: a long chat would exhaust the table
            auto role    = static_cast<jbyteArray>(env->GetObjectArrayElement(role_array, i));
            auto content = static_cast<jbyteArray>(env->GetObjectArrayElement(content_array, i));
            roles.push_back(bytes(env, role));
            contents.push_back(bytes(env, content));
            env->DeleteLocalRef(role);
            env->DeleteLocalRef(content);
        }
        for (jsize i = 0; i < count; i++) list.push_back({roles[i].c_str(), contents[i].c_str()});
    }
};

fox_model * model_of(jlong handle) { return reinterpret_cast<fox_model *>(handle); }
fox_chat * chat_of(jlong handle) { return reinterpret_cast<fox_chat *>(handle); }

}  // namespace

#define FOX_JNI(type, name) extern "C" JNIEXPORT type JNICALL Java_dev_foxedge_FoxNative_##name

FOX_JNI(jlong, modelOpen)(JNIEnv * env, jclass, jbyteArray folder, jint threads, jint use_mmap) {
    fox_model_params params = fox_model_default_params();
    params.n_threads        = threads;
    params.use_mmap         = use_mmap;
    fox_model * model       = nullptr;
    char error[1024]        = "";
    fox_status status       = fox_model_open(bytes(env, folder).c_str(), params, &model, error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
    return reinterpret_cast<jlong>(model);
}

FOX_JNI(void, modelVerify)(JNIEnv * env, jclass, jlong model) {
    char error[1024] = "";
    fox_status status = fox_model_verify(model_of(model), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(void, bundleVerify)(JNIEnv * env, jclass, jbyteArray folder) {
    char error[1024] = "";
    fox_status status = fox_bundle_verify(bytes(env, folder).c_str(), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(void, modelClose)(JNIEnv *, jclass, jlong model) { fox_model_close(model_of(model)); }

FOX_JNI(jint, modelThreads)(JNIEnv *, jclass, jlong model) { return fox_model_n_threads(model_of(model)); }

FOX_JNI(jbyteArray, modelRenderChat)(JNIEnv * env, jclass, jlong model, jobjectArray roles, jobjectArray contents, jboolean add_generation_prompt) {
    Messages conversation(env, roles, contents);
    const std::vector<fox_message> & messages = conversation.list;
    char error[1024] = "";
    int64_t length = fox_model_render_chat(model_of(model), messages.data(), messages.size(), add_generation_prompt, nullptr, 0, error, sizeof error);
    if (length < 0) {
        raise(env, FOX_ERROR_TEMPLATE, error);
        return nullptr;
    }
    std::string out(static_cast<size_t>(length) + 1, '\0');
    fox_model_render_chat(model_of(model), messages.data(), messages.size(), add_generation_prompt, out.data(), out.size(), error, sizeof error);
    return to_bytes(env, out.data(), static_cast<size_t>(length));
}

// The manifest's generation defaults, in ChatParams' order: n_ctx, temperature, top_k, top_p, min_p,
// repeat_penalty, repeat_last_n, max_tokens, seed.
FOX_JNI(jdoubleArray, chatDefaults)(JNIEnv * env, jclass, jlong model) {
    fox_chat_params p = fox_chat_default_params(model_of(model));
    double values[] = {static_cast<double>(p.n_ctx > 0 ? p.n_ctx : fox_model_n_ctx_default(model_of(model))), p.temperature, static_cast<double>(p.top_k),
                       p.top_p, p.min_p, p.repeat_penalty, static_cast<double>(p.repeat_last_n), static_cast<double>(p.max_tokens),
                       static_cast<double>(p.seed)};
    jdoubleArray array = env->NewDoubleArray(9);
    env->SetDoubleArrayRegion(array, 0, 9, values);
    return array;
}

FOX_JNI(jlong, chatNew)(JNIEnv * env, jclass, jlong model, jdoubleArray values, jlong seed, jbyteArray system_prompt) {
    double v[8];
    env->GetDoubleArrayRegion(values, 0, 8, v);
    fox_chat_params p   = fox_chat_default_params(model_of(model));
    p.n_ctx             = static_cast<int32_t>(v[0]);
    p.temperature       = static_cast<float>(v[1]);
    p.top_k             = static_cast<int32_t>(v[2]);
    p.top_p             = static_cast<float>(v[3]);
    p.min_p             = static_cast<float>(v[4]);
    p.repeat_penalty    = static_cast<float>(v[5]);
    p.repeat_last_n     = static_cast<int32_t>(v[6]);
    p.max_tokens        = static_cast<int32_t>(v[7]);
    p.seed              = static_cast<uint32_t>(seed);  // ChatParams checked it is 0..0xFFFFFFFF
    std::string system  = bytes(env, system_prompt);
    p.system_prompt     = system_prompt == nullptr ? nullptr : system.c_str();
    fox_chat * chat     = nullptr;
    char error[1024]    = "";
    fox_status status   = fox_chat_new(model_of(model), p, &chat, error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
    return reinterpret_cast<jlong>(chat);
}

// Streams the reply into sink.onText(byte[]); returns the stats (ChatStats' order). A cancelled reply returns
// normally with stop reason 3: cancellation is the caller's doing, not an error.
FOX_JNI(jdoubleArray, chatSend)(JNIEnv * env, jclass, jlong chat, jbyteArray message, jobject sink) {
    jclass type = env->GetObjectClass(sink);
    Sink target{env, sink, env->GetMethodID(type, "onText", "([B)V"), chat_of(chat)};
    if (target.on_text == nullptr) return nullptr;  // NoSuchMethodError is pending
    fox_chat_stats stats{};
    char error[1024]  = "";
    fox_status status = fox_chat_send(chat_of(chat), bytes(env, message).c_str(), deliver, &target, &stats, error, sizeof error);
    if (env->ExceptionCheck()) return nullptr;  // the sink's own exception travels on
    if (status != FOX_OK && status != FOX_ERROR_CANCELLED) {
        raise(env, status, error);
        return nullptr;
    }
    double values[] = {static_cast<double>(stats.prompt_tokens), static_cast<double>(stats.prompt_evaluated), stats.prompt_tokens_per_second,
                       static_cast<double>(stats.generated_tokens), stats.tokens_per_second, static_cast<double>(stats.dropped_turns),
                       static_cast<double>(stats.stop_reason)};
    jdoubleArray array = env->NewDoubleArray(7);
    env->SetDoubleArrayRegion(array, 0, 7, values);
    return array;
}

FOX_JNI(void, chatCancel)(JNIEnv *, jclass, jlong chat) { fox_chat_cancel(chat_of(chat)); }

FOX_JNI(void, chatSave)(JNIEnv * env, jclass, jlong chat, jbyteArray path) {
    char error[1024] = "";
    fox_status status = fox_chat_save(chat_of(chat), bytes(env, path).c_str(), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(void, chatLoad)(JNIEnv * env, jclass, jlong chat, jbyteArray path) {
    char error[1024] = "";
    fox_status status = fox_chat_load(chat_of(chat), bytes(env, path).c_str(), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

// The history as role, content, role, content, ... (UTF-8 byte arrays).
FOX_JNI(jobjectArray, chatHistory)(JNIEnv * env, jclass, jlong chat) {
    size_t       count = fox_chat_n_messages(chat_of(chat));
    jobjectArray array = env->NewObjectArray(static_cast<jsize>(2 * count), env->FindClass("[B"), nullptr);
    for (size_t i = 0; array != nullptr && i < count; i++) {
        fox_message message = fox_chat_message(chat_of(chat), i);
        for (int part = 0; part < 2; part++) {
            const char * text  = part == 0 ? message.role : message.content;
            jbyteArray   piece = to_bytes(env, text, std::char_traits<char>::length(text));
            env->SetObjectArrayElement(array, static_cast<jsize>(2 * i + part), piece);
            env->DeleteLocalRef(piece);
        }
    }
    return array;
}

FOX_JNI(void, chatSetHistory)(JNIEnv * env, jclass, jlong chat, jobjectArray roles, jobjectArray contents) {
    Messages conversation(env, roles, contents);
    const std::vector<fox_message> & messages = conversation.list;
    char error[1024] = "";
    fox_status status = fox_chat_set_history(chat_of(chat), messages.data(), messages.size(), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(jboolean, chatUndo)(JNIEnv *, jclass, jlong chat) { return fox_chat_undo(chat_of(chat)) == FOX_OK; }

FOX_JNI(void, chatSetParams)(JNIEnv * env, jclass, jlong chat, jdoubleArray values, jlong seed) {
    double v[8];
    env->GetDoubleArrayRegion(values, 0, 8, v);
    fox_chat_params p{};
    p.temperature    = static_cast<float>(v[1]);
    p.top_k          = static_cast<int32_t>(v[2]);
    p.top_p          = static_cast<float>(v[3]);
    p.min_p          = static_cast<float>(v[4]);
    p.repeat_penalty = static_cast<float>(v[5]);
    p.repeat_last_n  = static_cast<int32_t>(v[6]);
    p.max_tokens     = static_cast<int32_t>(v[7]);
    p.seed           = static_cast<uint32_t>(seed);
    char error[1024] = "";
    fox_status status = fox_chat_set_params(chat_of(chat), p, error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(void, chatReset)(JNIEnv *, jclass, jlong chat) { fox_chat_reset(chat_of(chat)); }

FOX_JNI(void, chatFree)(JNIEnv *, jclass, jlong chat) { fox_chat_free(chat_of(chat)); }

FOX_JNI(jintArray, chatLastTokens)(JNIEnv * env, jclass, jlong chat) {
    size_t count = fox_chat_last_tokens(chat_of(chat), nullptr, 0);
    std::vector<int32_t> tokens(count);
    fox_chat_last_tokens(chat_of(chat), tokens.data(), tokens.size());
    jintArray array = env->NewIntArray(static_cast<jsize>(count));
    env->SetIntArrayRegion(array, 0, static_cast<jsize>(count), reinterpret_cast<const jint *>(tokens.data()));
    return array;
}

FOX_JNI(void, loadCpuBackend)(JNIEnv * env, jclass, jbyteArray folder) {
    char error[1024] = "";
    fox_status status = fox_load_cpu_backend(folder == nullptr ? nullptr : bytes(env, folder).c_str(), error, sizeof error);
    if (status != FOX_OK) raise(env, status, error);
}

FOX_JNI(jbyteArray, cpuFeatures)(JNIEnv * env, jclass) {
    char features[512] = "";
    int64_t length = fox_cpu_features(features, sizeof features);
    return to_bytes(env, features, length < 0 ? 0 : std::char_traits<char>::length(features));
}

#ifdef __ANDROID__
extern "C" JNIEXPORT jint JNI_OnLoad(JavaVM *, void *) {
    fox_log_set(to_logcat, FOX_LOG_INFO, nullptr);
    return JNI_VERSION_1_6;
}
#endif
