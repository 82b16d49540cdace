//! README.md's backend-status table is what the backends claim, never stale.

#[test]
fn readme_backend_status_table_is_generated_from_the_backends_claims() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(path).expect("read README.md");
    let (begin, end) = (
        "<!-- backend-status:begin -->\n",
        "<!-- backend-status:end -->",
    );
    let start = readme.find(begin).expect("begin marker in README.md") + begin.len();
    let stop = start + readme[start..].find(end).expect("end marker in README.md");
    let fresh = moemla_cli::status_table(&moemla::compiled_in());
    assert!(
        readme[start..stop] == fresh,
        "README.md's backend-status table is stale. Replace the lines between the markers \
         with the output of `cargo run -- devices --readme-table`:\n{fresh}"
    );
}
