//! Golden-file mutation test: committed cases with bytes flipped, truncated, extended, the
//! header length, dtypes, shapes, `params` and other metadata corrupted, and special
//! values written into tensors, a fixed number of times from a fixed seed. Every mutant
//! must come back as exactly one outcome (pass, fail, malformed, mistrusted or
//! unsupported) and the run must finish: no panic (in loading or in the CPU backend), no
//! hang, no abort.

use moemla_conformance::{golden::committed_dir, load_cases, render, run, Report, Status};
use moemla_cpu::CpuBackend;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// How many mutants are made.
const MUTANTS: usize = 200;
/// The seed of the only random source.
const SEED: u64 = 0x6d6f_656d_6c61_0011;

/// Small committed cases of every op: routing with and without groups and bias, experts,
/// MLA causal and not, in F32, F16 and BF16.
const SOURCES: [&str; 5] = [
    "moe_route/f32/v3_t1.safetensors",
    "moe_route/bf16/v2lite_t1.safetensors",
    "moe_experts/bf16/t5_h64_i32_e4_k2.safetensors",
    "mla_decode/f16/d64_v48_b3_sq1_h1_blk16.safetensors",
    "mla_decode/f32/d64_v48_b2_sq2_h4_hkv2_causal_blk16.safetensors",
];

/// splitmix64: a tiny deterministic generator (no dependency, same sequence everywhere).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// A case file split into its header (JSON) and data section.
struct Parts {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn split(bytes: &[u8]) -> Parts {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    Parts {
        header,
        data: bytes[8 + n..].to_vec(),
    }
}

fn join(parts: &Parts) -> Vec<u8> {
    let header = serde_json::to_vec(&parts.header).unwrap();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&parts.data);
    bytes
}

/// The tensor names of a header.
fn tensors(parts: &Parts) -> Vec<String> {
    let names = parts.header.keys().filter(|k| *k != "__metadata__");
    names.cloned().collect()
}

/// A JSON value likely to break a parameter.
fn odd_value(rng: &mut Rng) -> Value {
    let values = [
        json!(0),
        json!(-1),
        json!(u64::MAX),
        json!(1u64 << 32),
        json!(1e300),
        json!(-0.0),
        json!(1e-300),
        json!(f64::MAX),
        json!(3),
        json!(7),
        json!("sigmoid"),
        json!("max"),
        json!(true),
        json!(null),
        json!([1, 2]),
        json!({"a": 1}),
        Value::from(rng.below(600)),
    ];
    rng.pick(&values).clone()
}

/// Applies one random mutation to a case file; returns its kind and the new bytes.
fn mutate(rng: &mut Rng, original: &[u8]) -> (&'static str, Vec<u8>) {
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut bytes = original.to_vec();
    let mut parts = split(original);
    let kind = match rng.below(12) {
        0 => {
            // Flip 1..8 bits anywhere in the data section.
            for _ in 0..1 + rng.below(8) {
                let at = header_end + rng.below(bytes.len() - header_end);
                bytes[at] ^= 1 << rng.below(8);
            }
            return ("flip data bits", bytes);
        }
        1 => {
            // Flip a byte of the header JSON.
            let at = 8 + rng.below(header_end - 8);
            bytes[at] ^= 1 + rng.below(255) as u8;
            return ("flip header byte", bytes);
        }
        2 => {
            bytes.truncate(rng.below(bytes.len()));
            return ("truncate", bytes);
        }
        3 => {
            for _ in 0..1 + rng.below(64) {
                bytes.push(rng.next() as u8);
            }
            return ("extend", bytes);
        }
        4 => {
            let n = (header_end - 8) as u64;
            let lens = [
                0,
                1,
                n - 1,
                n + 1,
                n + 8,
                u64::MAX,
                u64::MAX - 7,
                1 << 40,
                bytes.len() as u64,
            ];
            bytes[..8].copy_from_slice(&rng.pick(&lens).to_le_bytes());
            return ("header length", bytes);
        }
        5 => {
            // One `params` field set to an odd value, removed, or an unknown one added.
            let meta = parts.header["__metadata__"].as_object_mut().unwrap();
            let mut params: Map<String, Value> =
                serde_json::from_str(meta["params"].as_str().unwrap()).unwrap();
            let keys: Vec<String> = params.keys().cloned().collect();
            match rng.below(4) {
                0 if !keys.is_empty() => {
                    params.remove(rng.pick(&keys));
                }
                1 => {
                    params.insert("extra".into(), json!(1));
                }
                _ if !keys.is_empty() => {
                    let key = rng.pick(&keys).clone();
                    params.insert(key, odd_value(rng));
                }
                _ => {
                    params.insert("top_k".into(), odd_value(rng));
                }
            }
            meta.insert(
                "params".into(),
                Value::from(Value::Object(params).to_string()),
            );
            "params field"
        }
        6 => {
            // `params` or `tolerance` JSON cut short or replaced; `op` renamed or dropped.
            let meta = parts.header["__metadata__"].as_object_mut().unwrap();
            match rng.below(5) {
                0 => {
                    let p = meta["params"].as_str().unwrap().to_string();
                    let cut = rng.below(p.len());
                    meta.insert("params".into(), Value::from(&p[..cut]));
                }
                1 => {
                    let op = rng.pick(&["moe_route", "moe_experts", "mla_decode", "", "x"]);
                    meta.insert("op".into(), Value::from(*op));
                }
                2 => {
                    meta.remove(*rng.pick(&["op", "params", "source"]));
                }
                3 => {
                    let tol = rng.pick(&[
                        r#"{"o":{"atol":0,"rtol":0}}"#,
                        r#"{"y":{"atol":1e9,"rtol":0}}"#,
                        r#"{"topk_weights":{"atol":-1,"rtol":0}}"#,
                        r#"{"lse":{"atol":NaN}}"#,
                        r#"[]"#,
                    ]);
                    meta.insert("tolerance".into(), Value::from(*tol));
                }
                _ => {
                    meta.insert("params".into(), json!({"not": "a string"}));
                }
            }
            "metadata"
        }
        7 => {
            // A tensor's dtype changed (sizes may or may not still add up).
            let name = rng.pick(&tensors(&parts)).clone();
            let dtype = rng.pick(&["F32", "F16", "BF16", "I32", "U8", "F64", "F8_E4M3", "Q4"]);
            parts.header[&name]["dtype"] = Value::from(*dtype);
            "dtype"
        }
        8 => {
            // A tensor's shape changed: dims permuted, one dim scaled, rank changed.
            let name = rng.pick(&tensors(&parts)).clone();
            let mut dims: Vec<u64> = (parts.header[&name]["shape"].as_array().unwrap())
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            match rng.below(5) {
                0 => dims.reverse(),
                1 if !dims.is_empty() => {
                    let at = rng.below(dims.len());
                    dims[at] = dims[at].saturating_mul(2);
                }
                2 if dims.len() >= 2 => {
                    let last = dims.pop().unwrap();
                    *dims.last_mut().unwrap() *= last;
                }
                3 => dims.push(1),
                _ => dims.insert(0, u64::MAX / 2),
            }
            parts.header[&name]["shape"] = json!(dims);
            "shape"
        }
        9 => {
            // A tensor's data offsets moved.
            let name = rng.pick(&tensors(&parts)).clone();
            let offsets = &mut parts.header[&name]["data_offsets"];
            let (s, e) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
            *offsets = match rng.below(4) {
                0 => json!([s, e + 4]),
                1 => json!([e, s]),
                2 => json!([s, u64::MAX]),
                _ => json!([s + 2, e]),
            };
            "data offsets"
        }
        10 => {
            // A tensor removed, or an unknown one added.
            let names = tensors(&parts);
            if rng.below(2) == 0 {
                parts.header.remove(rng.pick(&names));
            } else {
                let end = parts.data.len() as u64;
                parts.header.insert(
                    "in.extra".into(),
                    json!({"dtype": "F32", "shape": [1], "data_offsets": [end, end + 4]}),
                );
                parts.data.extend_from_slice(&1f32.to_le_bytes());
            }
            "tensor set"
        }
        _ => {
            // A special value written into one element of one tensor: huge or negative
            // indices and lengths, NaN and infinities in floats.
            let name = rng.pick(&tensors(&parts)).clone();
            let info = &parts.header[&name];
            let s = info["data_offsets"][0].as_u64().unwrap() as usize;
            let e = info["data_offsets"][1].as_u64().unwrap() as usize;
            let dtype = info["dtype"].as_str().unwrap().to_string();
            let width = if dtype == "F32" || dtype == "I32" {
                4
            } else {
                2
            };
            if e - s >= width {
                let at = s + rng.below((e - s) / width) * width;
                let value: Vec<u8> = match dtype.as_str() {
                    "I32" => rng
                        .pick(&[i32::MAX, i32::MIN, -1, -2, 1 << 20, 4095, 0])
                        .to_le_bytes()
                        .to_vec(),
                    "F32" => rng
                        .pick(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 3e38, -0.0])
                        .to_le_bytes()
                        .to_vec(),
                    // NaN, +inf, -inf and the largest finite value of F16 / BF16.
                    "F16" => rng
                        .pick(&[0x7e00u16, 0x7c00, 0xfc00, 0x7bff])
                        .to_le_bytes()
                        .to_vec(),
                    _ => rng
                        .pick(&[0x7fc0u16, 0x7f80, 0xff80, 0x7f7f])
                        .to_le_bytes()
                        .to_vec(),
                };
                parts.data[at..at + width].copy_from_slice(&value);
            }
            "special value"
        }
    };
    (kind, join(&parts))
}

/// The class of an outcome, for counting.
fn class(status: Status, message: Option<&str>) -> &'static str {
    match status {
        Status::Pass => "pass",
        Status::Mistrusted => "mistrusted",
        Status::Unsupported => "unsupported",
        Status::Unavailable => "unavailable",
        Status::Error if message.is_some_and(|m| m.starts_with("malformed case")) => "malformed",
        Status::Error => "error without a malformed-case message",
        Status::Fail => "fail",
    }
}

/// Writes the mutants (and the unmutated sources) into `dir`; returns each mutant's kind.
fn write_mutants(dir: &Path) -> BTreeMap<String, &'static str> {
    let mut rng = Rng(SEED);
    let sources: Vec<Vec<u8>> = (SOURCES.iter())
        .map(|s| std::fs::read(committed_dir().join(s)).unwrap())
        .collect();
    for (name, bytes) in SOURCES.iter().zip(&sources) {
        let path = dir.join("original").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    let mut kinds = BTreeMap::new();
    for i in 0..MUTANTS {
        let source = rng.below(sources.len());
        let (kind, bytes) = mutate(&mut rng, &sources[source]);
        let name = format!("mutant/{i:03}.safetensors");
        std::fs::write(dir.join(&name), bytes).unwrap();
        kinds.insert(name, kind);
    }
    kinds
}

/// Loads and runs `dir` on the CPU backend in a thread, failing if it takes over 5 minutes.
fn load_and_run(dir: PathBuf) -> Report {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let report = run(&CpuBackend::new(), &load_cases(&[dir]));
        let _ = tx.send(report);
    });
    rx.recv_timeout(Duration::from_secs(300))
        .expect("the runner hung on a mutated golden file")
}

#[test]
fn mutated_golden_files_are_each_reported_and_the_run_goes_on() {
    let dir = std::env::temp_dir().join(format!("moemla-mutation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("mutant")).unwrap();
    let kinds = write_mutants(&dir);
    let report = load_and_run(dir.clone());
    let _ = std::fs::remove_dir_all(&dir);

    assert_eq!(report.results.len(), MUTANTS + SOURCES.len());
    let mut by_class: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_kind: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for o in &report.results {
        let message = o.message.as_deref();
        assert!(
            !message.is_some_and(|m| m.contains("panicked")),
            "{}: {message:?}",
            o.case
        );
        let class = class(o.status, message);
        if o.case.starts_with("original/") {
            assert_eq!(o.status, Status::Pass, "{}: {message:?}", o.case);
            continue;
        }
        *by_class.entry(class).or_default() += 1;
        *by_kind.entry((kinds[&o.case], class)).or_default() += 1;
    }
    eprintln!("{MUTANTS} mutants (seed {SEED:#x}): {by_class:?}");
    for ((kind, class), n) in &by_kind {
        eprintln!("  {kind:>16} -> {class}: {n}");
    }
    assert_eq!(by_class.values().sum::<usize>(), MUTANTS);
    assert!(!by_class.contains_key("unavailable"));
    // The mutations reach every stage: unreadable files, files that load but break the
    // contract or differ, and files the mutation left valid.
    for class in ["malformed", "fail", "pass"] {
        assert!(
            by_class.get(class).is_some_and(|&n| n > 0),
            "no `{class}` outcome: {by_class:?}\n{}",
            render(&report)
        );
    }
}
