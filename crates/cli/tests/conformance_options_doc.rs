//! docs/conformance.md's options table lists exactly the options `moemla conformance
//! --help` has (`--help` aside): a flag added to the command without a row, or a row left
//! for a removed flag, fails here.

use std::collections::BTreeSet;
use std::process::Command;

/// The `--long` options `moemla conformance --help` lists, `--help` aside.
fn help_options() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["conformance", "--help"])
        .output()
        .expect("run moemla");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    (help.lines())
        .filter_map(|line| {
            let line = line.trim_start();
            // "-h, --help": the short form first.
            let b = line.as_bytes();
            let line = match (b.first(), b.get(2)) {
                (Some(b'-'), Some(b',')) if b.get(1) != Some(&b'-') => line[3..].trim_start(),
                _ => line,
            };
            let name = line.strip_prefix("--")?;
            let name: String = (name.chars())
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty() && name != "help").then(|| format!("--{name}"))
        })
        .collect()
}

/// Every `--long` option named in the first cell of docs/conformance.md's options table
/// (the table under the `| option | meaning |` header).
fn table_options() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/conformance.md"
    ))
    .expect("read docs/conformance.md");
    let rows: Vec<&str> = (doc.lines())
        .skip_while(|l| !l.starts_with("| option | meaning |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(!rows.is_empty(), "no options table in docs/conformance.md");
    let mut options = BTreeSet::new();
    for row in rows {
        let cell = row.trim_start_matches('|').split(" | ").next().unwrap();
        for part in cell.split("--").skip(1) {
            let name: String = (part.chars())
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            assert!(!name.is_empty(), "a bare `--` in the row {row}");
            options.insert(format!("--{name}"));
        }
    }
    options
}

#[test]
fn the_options_table_matches_the_commands_help() {
    let (help, table) = (help_options(), table_options());
    assert!(
        help.contains("--backend") && help.contains("--require"),
        "{help:?}"
    );
    let undocumented: Vec<_> = help.difference(&table).collect();
    let stale: Vec<_> = table.difference(&help).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/conformance.md's options table: missing {undocumented:?}; not options of \
         `moemla conformance` {stale:?}"
    );
}
