"""The Python column of bindings/FACADE.tsv against the package: every name it gives exists on
``PieceStore``, and every public method or property of ``PieceStore`` is in the table."""

from __future__ import annotations

from pathlib import Path

import piecestore

TABLE = Path(__file__).resolve().parents[2] / "bindings" / "FACADE.tsv"


def column(name: str) -> dict[str, list[str]]:
    lines = [l for l in TABLE.read_text().splitlines() if l.strip() and not l.startswith("#")]
    header = lines[0].split("\t")
    assert header == ["core", "python", "node", "go", "uniffi", "note"], header
    i = header.index(name)
    rows = {}
    for line in lines[1:]:
        cells = line.split("\t")
        assert len(cells) == len(header), line
        rows[cells[0]] = cells[i].split(",")
    return rows


def test_every_name_in_the_table_exists() -> None:
    rows = column("python")
    named = 0
    for core, names in rows.items():
        for n in names:
            if n in ("-", "MISSING"):
                continue
            if n == "constructor":
                assert callable(piecestore.PieceStore), core
            else:
                assert hasattr(piecestore.PieceStore, n), f"PieceStore.{n} (for {core}) is gone"
            named += 1
    assert named >= 20, named


def test_every_public_method_is_in_the_table() -> None:
    named = {n for names in column("python").values() for n in names}
    public = {n for n in dir(piecestore.PieceStore) if not n.startswith("_")}
    unlisted = set()
    for n in public:
        # Asyncio twins go with their blocking method.
        base = n[: -len("_async")] if n.endswith("_async") else n
        if base not in named:
            unlisted.add(n)
    assert not unlisted, f"PieceStore methods missing from bindings/FACADE.tsv: {sorted(unlisted)}"
    # And every blocking method that is bound has its asyncio twin, where one makes sense.
    io = {"put", "get", "get_range", "head", "exists", "delete", "delete_prefix", "put_many",
          "get_many", "flush", "gc", "fsck", "close"}
    missing = sorted(n for n in io if not hasattr(piecestore.PieceStore, n + "_async"))
    assert not missing, f"no asyncio twin for {missing}"
