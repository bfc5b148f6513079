plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.foxedge.sample"
    compileSdk = 35
    defaultConfig {
        applicationId = "dev.foxedge.sample"
        minSdk = 26
        targetSdk = 35
        ndk { abiFilters += "arm64-v8a" }
    }
    // Put a bundle made by `fox-edge bundle MODEL --target android -o src/main/assets/fox1` in the assets.
    androidResources { noCompress += listOf("gguf", "json") }
    // The library's own setting does not reach the app: without this the libraries stay inside the APK, and the core
    // loads its CPU variants by name (FoxAndroid.init) instead of from nativeLibraryDir.
    packaging { jniLibs.useLegacyPackaging = true }
    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlin { jvmToolchain(17) }
}

dependencies {
    implementation(project(":fox-edge"))
    implementation("androidx.activity:activity-ktx:1.9.3")
    implementation("androidx.lifecycle:lifecycle-runtime-ktx:2.8.7")
    implementation("androidx.lifecycle:lifecycle-viewmodel-ktx:2.8.7")
}
