// The fox-edge Android library and its sample app. Written for Android Gradle Plugin 8.7+ and NDK r27+;
// not built here (no Android SDK or Maven access on fox-edge's CI): see apps/README.md.
pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "fox-edge-android"
include(":fox-edge", ":sample")
