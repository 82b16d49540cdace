//! Case selection: `--filter` / `--exclude` (op names or globs on case IDs) and
//! `--shard i/n`.

use crate::case::CaseFile;

/// The case ID of a case file (well formed or not).
pub fn case_id(file: &CaseFile) -> &str {
    match file {
        Ok(case) => &case.name,
        Err(err) => &err.name,
    }
}

/// Whether `file` matches `pattern`: the case's op name exactly (`mla_decode`), or a glob
/// on its case ID, where `*` matches any run of characters (slashes included) and `?` any
/// one character (`mla_decode/bf16/*`, `*v3*`). With several golden roots the ID starts
/// with `<root>:`; a glob matches the ID with or without that prefix.
///
/// A malformed file (no op known) matches an op name when its path (without the root
/// prefix) starts with `<op>/`.
pub fn matches(pattern: &str, file: &CaseFile) -> bool {
    let id = case_id(file);
    let rel = id.split_once(':').map_or(id, |(_, rel)| rel);
    let op_matches = match file {
        Ok(case) => case.op.name() == pattern,
        Err(_) => rel.starts_with(&format!("{pattern}/")),
    };
    op_matches || glob_match(pattern, id) || glob_match(pattern, rel)
}

/// `--shard i/n`: shard `index` (1-based) of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Which shard, from 1 to `count`.
    pub index: u64,
    /// How many shards.
    pub count: u64,
}

impl Shard {
    /// Parses `i/n` with `1 <= i <= n`.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {text:?}: expected i/n with 1 <= i <= n (e.g. 2/4)");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u64 = i.trim().parse().map_err(|_| bad())?;
        let count: u64 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// Whether the case `id` belongs to this shard: FNV-1a (64 bit) of the ID modulo the
    /// shard count, so a case stays in its shard whatever other cases are added or
    /// removed, and the shards of one count partition every set.
    pub fn contains(&self, id: &str) -> bool {
        let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        hash % self.count == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Which cases a run takes: every case matching one of `filters` (all when none), minus
/// those matching one of `excludes`, within `shard`.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// `--filter` patterns ([`matches()`]).
    pub filters: Vec<String>,
    /// `--exclude` patterns ([`matches()`]).
    pub excludes: Vec<String>,
    /// `--shard`, if any.
    pub shard: Option<Shard>,
}

impl Selection {
    /// Whether `file` is selected.
    pub fn selects(&self, file: &CaseFile) -> bool {
        (self.filters.is_empty() || self.filters.iter().any(|p| matches(p, file)))
            && !self.excludes.iter().any(|p| matches(p, file))
            && self.shard.is_none_or(|s| s.contains(case_id(file)))
    }

    /// The selected case files, in their order.
    pub fn apply(&self, cases: Vec<CaseFile>) -> Vec<CaseFile> {
        cases.into_iter().filter(|f| self.selects(f)).collect()
    }
}

/// Keeps the case files that match `pattern` (see [`matches()`]).
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
    use super::{glob_match, Shard};

    #[test]
    fn shards_partition_ids_and_parse_strictly() {
        let ids: Vec<String> = (0..200)
            .map(|i| format!("op/f32/case{i}.safetensors"))
            .collect();
        for count in [1, 2, 3, 7] {
            let shards: Vec<Shard> = (1..=count).map(|index| Shard { index, count }).collect();
            let mut sizes = vec![0; count as usize];
            for id in &ids {
                let owners: Vec<usize> = (shards.iter().enumerate())
                    .filter(|(_, s)| s.contains(id))
                    .map(|(i, _)| i)
                    .collect();
                assert_eq!(owners.len(), 1, "{id} in shards {owners:?} of {count}");
                sizes[owners[0]] += 1;
            }
            // A hash split: every shard gets some of 200 cases.
            assert!(sizes.iter().all(|&n| n > 0), "{sizes:?}");
        }
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (even): shard 1 of 2.
        assert!(Shard { index: 1, count: 2 }.contains("a"));
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "-1/2", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }

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
