//go:build tools

// Package tools pins minio/warp, the S3 load generator benches/serve.sh runs against
// `piecestore serve` and s3s-fs. Build it with:
//
//	cd benches/warp && go build -o ../../target/warp github.com/minio/warp
//
// go.sum holds warp's checksums, so the build does not consult the checksum database
// (which did not list warp v1.3.1 when it was pinned).
package tools

import _ "github.com/minio/warp"
