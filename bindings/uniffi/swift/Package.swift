// swift-tools-version:5.9
//
// PieceStore for Swift: the Swift API UniFFI generates (target PieceStoreKit) over the C
// declarations of the PieceStore library (target PieceStoreKitFFI). Run ./generate.sh first:
// it builds the library and writes the generated sources this manifest points at.
//
// The library comes from one of:
// - PieceStoreKitFFI.xcframework (`./generate.sh --xcframework` on macOS): static libraries
//   for iOS, the iOS simulator and macOS, with their headers. Used when present.
// - lib/libpiecestore_uniffi.a (`./generate.sh`, or `--target TRIPLE`): one static library
//   for the platform being built, linked from the C target's headers.
//
// Not compiled in this repository's CI (its machines have no Swift toolchain): CI generates the
// sources and checks that they are there.
import Foundation
import PackageDescription

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().path
let xcframework = FileManager.default.fileExists(atPath: "\(root)/PieceStoreKitFFI.xcframework")

// What Rust's standard library and the library's TLS stack need from the system.
let systemLibraries: [LinkerSetting] = [
    .linkedFramework("Security", .when(platforms: [.macOS, .iOS])),
    .linkedFramework("CoreFoundation", .when(platforms: [.macOS, .iOS])),
    .linkedLibrary("m", .when(platforms: [.linux])),
    .linkedLibrary("dl", .when(platforms: [.linux])),
]

let ffi: Target = xcframework
    ? .binaryTarget(name: "PieceStoreKitFFI", path: "PieceStoreKitFFI.xcframework")
    : .target(
        name: "PieceStoreKitFFI",
        path: "Sources/PieceStoreKitFFI",
        linkerSettings: [
            .linkedLibrary("piecestore_uniffi"),
            // Only the static library is in lib/, so it is the one linked.
            .unsafeFlags(["-L\(root)/lib"]),
        ]
    )

let package = Package(
    name: "PieceStoreKit",
    platforms: [.macOS(.v10_15), .iOS(.v13)],
    products: [
        .library(name: "PieceStoreKit", targets: ["PieceStoreKit"]),
    ],
    targets: [
        ffi,
        .target(
            name: "PieceStoreKit",
            dependencies: ["PieceStoreKitFFI"],
            path: "Sources/PieceStoreKit",
            linkerSettings: systemLibraries
        ),
    ]
)
