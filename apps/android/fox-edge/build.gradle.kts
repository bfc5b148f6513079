plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

val llamaSource = providers.gradleProperty("foxEdge.llamaSource").orNull
    ?: error("set foxEdge.llamaSource to the llama.cpp source tree (see apps/android/gradle.properties)")

android {
    namespace = "dev.foxedge"
    compileSdk = 35
    ndkVersion = "27.2.12479018" // r27: 16 KB page sizes supported, clang 18 (compiles ggml's armv9.2 variants)

    defaultConfig {
        minSdk = 26
        ndk { abiFilters += "arm64-v8a" }
        externalNativeBuild {
            cmake {
                arguments += listOf(
                    "-DFOX_EDGE_LLAMA_SOURCE=${rootProject.file(llamaSource)}",
                    "-DFOX_EDGE_CPU_VARIANTS=ON", // every ARM CPU variant of ggml, chosen at run time: no SIGILL on armv8.0 phones
                    "-DGGML_OPENMP=OFF",
                    "-DANDROID_SUPPORT_FLEXIBLE_PAGE_SIZES=ON", // 16 KB pages (Android 15)
                    "-DCMAKE_BUILD_TYPE=Release",
                    // About 13 shared libraries (the core, llama.cpp, ggml and its CPU variants) that throw and catch across
                    // each other: the NDK's static C++ runtime is safe only with one.
                    "-DANDROID_STL=c++_shared",
                )
            }
        }
        consumerProguardFiles("consumer-rules.pro")
    }
    externalNativeBuild {
        cmake {
            path = file("src/main/cpp/CMakeLists.txt")
            version = "3.22.1"
        }
    }
    packaging {
        // ggml looks for its CPU variants (libggml-cpu-*.so) in a real folder, the app's nativeLibraryDir: extract native
        // libraries at install. This does not reach a consuming app; the core loads the variants by name where an app
        // keeps them in its APK (FoxAndroid.init).
        jniLibs.useLegacyPackaging = true
    }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlin { jvmToolchain(17) }
}

dependencies {
    api("org.jetbrains.kotlinx:kotlinx-coroutines-android:1.9.0")
}
