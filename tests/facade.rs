//! The facade table (`bindings/FACADE.tsv`) against the code: every public method of the core's
//! `PieceStore` has a row, every row names a core method, and the UniFFI column matches the
//! UniFFI crate's exported methods. The Python, Node and Go suites check their own columns.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// The table's rows: core name -> cells by column name.
fn table() -> BTreeMap<String, BTreeMap<String, String>> {
    let text = read("bindings/FACADE.tsv");
    let mut lines = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = lines.next().expect("a header row").split('\t').collect();
    assert_eq!(header, ["core", "python", "node", "go", "uniffi", "note"]);
    let mut rows = BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            cells.len(),
            header.len(),
            "row {line:?} has {} cells",
            cells.len()
        );
        let row = header[1..]
            .iter()
            .zip(&cells[1..])
            .map(|(h, c)| (h.to_string(), c.to_string()))
            .collect();
        assert!(
            rows.insert(cells[0].to_string(), row).is_none(),
            "{} has two rows",
            cells[0]
        );
    }
    rows
}

/// The names of the `pub fn`s (async or not) in the `impl {ty} {` blocks of a Rust file.
fn pub_methods(src: &str, ty: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut inside = false;
    for line in src.lines() {
        if line.starts_with("impl ") && line.contains(&format!("impl {ty} {{")) {
            inside = true;
        } else if inside && line == "}" {
            inside = false;
        } else if inside {
            let l = line.trim_start();
            let indent = line.len() - l.len();
            let rest = l
                .strip_prefix("pub async fn ")
                .or_else(|| l.strip_prefix("pub fn "));
            if let (4, Some(rest)) = (indent, rest) {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn every_core_method_has_a_row_and_every_row_a_core_method() {
    let mut core = pub_methods(&read("core/src/store.rs"), "PieceStore");
    core.extend(pub_methods(&read("core/src/migrate.rs"), "PieceStore"));
    assert!(
        core.len() > 40 && core.contains("gc") && core.contains("migrate_to"),
        "the parser found too little: {core:?}"
    );
    let rows: BTreeSet<String> = table()
        .into_keys()
        .filter(|k| !k.starts_with('+'))
        .collect();
    let unlisted: Vec<_> = core.difference(&rows).collect();
    assert!(
        unlisted.is_empty(),
        "public PieceStore methods with no row in bindings/FACADE.tsv: {unlisted:?}"
    );
    let stale: Vec<_> = rows.difference(&core).collect();
    assert!(
        stale.is_empty(),
        "bindings/FACADE.tsv rows that name no PieceStore method: {stale:?}"
    );
}

#[test]
fn the_uniffi_column_matches_the_uniffi_crate() {
    let exported = pub_methods(&read("bindings/uniffi/src/store.rs"), "PieceStore");
    // Blocking twins go with their method.
    let exported: BTreeSet<String> = exported
        .into_iter()
        .map(|m| m.strip_suffix("_blocking").map(str::to_string).unwrap_or(m))
        .collect();
    assert!(exported.contains("get"), "the parser found {exported:?}");
    let mut named = BTreeSet::new();
    for (core, row) in table() {
        for name in row["uniffi"].split(',') {
            match name {
                "-" | "MISSING" => {}
                n => {
                    assert!(
                        exported.contains(n),
                        "FACADE.tsv names UniFFI's {n} (for {core}), which bindings/uniffi does not export"
                    );
                    named.insert(n.to_string());
                }
            }
        }
    }
    let unnamed: Vec<_> = exported.difference(&named).collect();
    assert!(
        unnamed.is_empty(),
        "UniFFI methods missing from bindings/FACADE.tsv: {unnamed:?}"
    );
}

/// Every binding exposes the whole facade: no cell is MISSING. A new public core method gets
/// its row with every binding's name (or `-` and why it is not the facade's) in the change
/// that adds it, and each language's own facade test then checks its name exists.
#[test]
fn no_binding_lacks_a_facade_method() {
    let missing: Vec<String> = table()
        .into_iter()
        .flat_map(|(core, row)| {
            ["python", "node", "go", "uniffi"]
                .into_iter()
                .filter(|b| row[*b].split(',').any(|n| n == "MISSING"))
                .map(|b| format!("{core} in {b}"))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        missing.is_empty(),
        "bindings lacking a facade method (bindings/FACADE.tsv): {missing:?}"
    );
}
