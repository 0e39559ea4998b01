module github.com/piecestore/piecestore/bindings/go

go 1.24
