//! `--filter`: pick cases by op name or by a glob on their relative path.

use crate::case::CaseFile;

/// Whether `file` matches `pattern`: the case's op name exactly (`mla_decode`), or a glob
/// on its path relative to its golden directory, where `*` matches any run of characters
/// (slashes included) and `?` any one character (`mla_decode/bf16/*`, `*v3*`).
///
/// A malformed file (no op known) matches an op name when its path starts with `<op>/`.
pub fn matches(pattern: &str, file: &CaseFile) -> bool {
    let (name, op_matches) = match file {
        Ok(case) => (&case.name, case.op.name() == pattern),
        Err(err) => (&err.name, err.name.starts_with(&format!("{pattern}/"))),
    };
    op_matches || glob_match(pattern, name)
}

/// Keeps the case files that match `pattern` (see [`matches`]).
pub fn filter_cases(cases: Vec<CaseFile>, pattern: &str) -> Vec<CaseFile> {
    cases.into_iter().filter(|f| matches(pattern, f)).collect()
}

/// Glob match of the whole of `text`: `*` any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_whole_paths() {
        assert!(glob_match(
            "mla_decode/bf16/*",
            "mla_decode/bf16/a/b.safetensors"
        ));
        assert!(glob_match("*v3*", "moe_route/f32/v3_t33.safetensors"));
        assert!(glob_match("moe_route/f?6/*", "moe_route/f16/x.safetensors"));
        assert!(!glob_match(
            "moe_route/f?6/*",
            "moe_route/bf16/x.safetensors"
        ));
        assert!(!glob_match("mla_decode", "mla_decode/f32/x.safetensors"));
        assert!(glob_match("", ""));
        assert!(glob_match("**", ""));
        assert!(!glob_match("a*b", "acbd"));
        assert!(glob_match("a*b*", "acbd"));
    }
}
