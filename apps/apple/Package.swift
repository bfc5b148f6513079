// swift-tools-version:5.9
// The fox-edge Swift package: FoxEdge (Swift, async streams) over the native core's C API (native/include/fox_edge.h),
// shipped as FoxEdgeCore.xcframework (built by build-xcframework.sh on a Mac; it carries the header and its module map).
// Written only: fox-edge's CI has no Swift compiler or Apple SDK (see apps/README.md).
import PackageDescription

let package = Package(
    name: "FoxEdge",
    platforms: [.iOS(.v16), .macOS(.v13)],
    products: [.library(name: "FoxEdge", targets: ["FoxEdge"])],
    targets: [
        .binaryTarget(name: "FoxEdgeCore", path: "FoxEdgeCore.xcframework"),
        .target(
            name: "FoxEdge",
            dependencies: ["FoxEdgeCore"],
            linkerSettings: [.linkedLibrary("c++"), .linkedFramework("Accelerate"), .linkedFramework("Metal"), .linkedFramework("Foundation")]
        ),
    ]
)
