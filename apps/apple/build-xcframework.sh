#!/usr/bin/env bash
# Builds FoxEdgeCore.xcframework (iOS devices, iOS simulator, macOS; arm64) from native/ and llama.cpp, on a Mac with
# Xcode. Usage: apps/apple/build-xcframework.sh LLAMA_CPP_SOURCE
# LLAMA_CPP_SOURCE: the llama.cpp tree the pinned llama-cpp-python vendors
#   (python -c "from fox_edge.testing.suite_assets import llama_cpp_source; print(llama_cpp_source())").
# Written only: fox-edge's CI has no Apple SDK; it cross-compiles native/ for aarch64-macos with zig (compile only).
set -euo pipefail
LLAMA=${1:?usage: build-xcframework.sh LLAMA_CPP_SOURCE}
HERE=$(cd "$(dirname "$0")" && pwd)
NATIVE="$HERE/../../native"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# One static library per platform: the core with llama.cpp and ggml (Metal on, its shaders embedded), merged by libtool.
build() {  # name sysroot extra-cmake-args...
    local name=$1 sysroot=$2; shift 2
    cmake -S "$NATIVE" -B "$WORK/$name" -G Xcode -DCMAKE_SYSTEM_NAME="$( [ "$sysroot" = macosx ] && echo Darwin || echo iOS )" \
        -DCMAKE_OSX_SYSROOT="$sysroot" -DCMAKE_OSX_ARCHITECTURES=arm64 -DFOX_EDGE_LLAMA_SOURCE="$LLAMA" \
        -DFOX_EDGE_STATIC=ON -DGGML_METAL=ON -DGGML_METAL_EMBED_LIBRARY=ON -DGGML_OPENMP=OFF "$@"
    cmake --build "$WORK/$name" --config Release --target fox_edge
    libtool -static -o "$WORK/$name/libFoxEdgeCore.a" $(find "$WORK/$name" -name '*.a' -path '*Release*')
    # Headers/FoxEdgeCore/: a module map directly in Headers/ collides with any other static xcframework's in the app.
    mkdir -p "$WORK/$name/headers/FoxEdgeCore"
    cp "$NATIVE/include/fox_edge.h" "$WORK/$name/headers/FoxEdgeCore/"
    printf 'module FoxEdgeCore {\n    header "fox_edge.h"\n    export *\n}\n' > "$WORK/$name/headers/FoxEdgeCore/module.modulemap"
}
build ios iphoneos -DCMAKE_OSX_DEPLOYMENT_TARGET=16.0
build ios-simulator iphonesimulator -DCMAKE_OSX_DEPLOYMENT_TARGET=16.0
build macos macosx -DCMAKE_OSX_DEPLOYMENT_TARGET=13.0

rm -rf "$HERE/FoxEdgeCore.xcframework"
xcodebuild -create-xcframework \
    $(for p in ios ios-simulator macos; do echo -library "$WORK/$p/libFoxEdgeCore.a" -headers "$WORK/$p/headers"; done) \
    -output "$HERE/FoxEdgeCore.xcframework"
