//! Malformed case files are reported with the file and the problem, count as failures,
//! and the run goes on with the other cases.

mod common;

use common::{fixture_set, write_case, TempDir, FIXTURE_CASES, ROUTE_PARAMS};
use moemla_conformance::{load_cases, render, run, Status};
use moemla_core::{DType, HostTensor};
use moemla_cpu::CpuBackend;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

type Tensors = BTreeMap<String, HostTensor>;
type Meta = BTreeMap<String, String>;

/// Reads a case file back as tensors and metadata.
fn read(path: &Path) -> (Tensors, Meta) {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            let dtype = DType::from_name(&v.dtype().to_string()).unwrap();
            let t = HostTensor::from_bytes(v.shape().to_vec(), dtype, v.data().to_vec()).unwrap();
            (name, t)
        })
        .collect();
    (tensors, meta)
}

/// Copies fixture `src` to `dst` (both relative to `dir`) after `edit`.
fn variant(dir: &Path, src: &str, dst: &str, edit: impl FnOnce(&mut Tensors, &mut Meta)) {
    let (mut tensors, mut meta) = read(&dir.join(src));
    edit(&mut tensors, &mut meta);
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tensors: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_case(&dir.join(dst), &meta, &tensors);
}

const MLA: &str = "mla_decode/f32/mla.safetensors";
const EXPERTS: &str = "moe_experts/f32/experts.safetensors";
const ROUTE: &str = "moe_route/f32/route.safetensors";

/// Writes the fixtures plus one malformed file per problem; returns (file, expected text).
fn malformed_set(dir: &Path) -> Vec<(&'static str, &'static str)> {
    fixture_set(dir);
    variant(dir, MLA, "bad/missing_tensor.safetensors", |t, _| {
        t.remove("in.kv_cache");
    });
    variant(dir, ROUTE, "bad/bad_params.safetensors", |_, m| {
        m.insert(
            "params".into(),
            r#"{"score_func":"sigmoid","top_k":"two"}"#.into(),
        );
    });
    variant(dir, ROUTE, "bad/unknown_op.safetensors", |_, m| {
        m.insert("op".into(), "moe_gate".into());
    });
    variant(dir, EXPERTS, "bad/wrong_dtype.safetensors", |t, _| {
        let ids = &t["in.topk_ids"];
        let as_f32: Vec<f32> = ids
            .to_i32_vec()
            .unwrap()
            .iter()
            .map(|&i| i as f32)
            .collect();
        let wrong = HostTensor::from_slice(ids.shape().clone(), &as_f32).unwrap();
        t.insert("in.topk_ids".into(), wrong);
    });
    variant(dir, MLA, "bad/missing_run_input.safetensors", |t, _| {
        t.remove("in.q");
    });
    variant(dir, ROUTE, "bad/missing_logits.safetensors", |t, _| {
        t.remove("in.logits");
    });
    variant(dir, EXPERTS, "bad/missing_x.safetensors", |t, _| {
        t.remove("in.x");
    });
    variant(
        dir,
        ROUTE,
        "bad/missing_expected_ids.safetensors",
        |t, _| {
            t.remove("out.topk_ids");
        },
    );
    variant(dir, ROUTE, "bad/top_k_u64_max.safetensors", |_, m| {
        let params = ROUTE_PARAMS.replace(r#""top_k":2"#, &format!(r#""top_k":{}"#, u64::MAX));
        m.insert("params".into(), params);
    });
    variant(dir, ROUTE, "bad/top_k_above_u64.safetensors", |_, m| {
        let params = ROUTE_PARAMS.replace(r#""top_k":2"#, r#""top_k":18446744073709551616"#);
        m.insert("params".into(), params);
    });
    variant(dir, ROUTE, "bad/top_k_negative.safetensors", |_, m| {
        let params = ROUTE_PARAMS.replace(r#""top_k":2"#, r#""top_k":-1"#);
        m.insert("params".into(), params);
    });
    variant(dir, ROUTE, "bad/top_k_not_ids_width.safetensors", |_, m| {
        let params = ROUTE_PARAMS.replace(r#""top_k":2"#, r#""top_k":1"#);
        m.insert("params".into(), params);
    });
    variant(dir, MLA, "bad/head_dim_v_text.safetensors", |_, m| {
        let params = m["params"].replace(r#""head_dim_v":8"#, r#""head_dim_v":"8""#);
        m.insert("params".into(), params);
    });
    variant(dir, EXPERTS, "bad/loose_tolerance.safetensors", |_, m| {
        m.insert(
            "tolerance".into(),
            r#"{"y":{"atol":1.0,"rtol":0.0}}"#.into(),
        );
    });
    variant(dir, EXPERTS, "bad/output_shape.safetensors", |t, _| {
        let y = t["out.y"].to_f32_vec().unwrap();
        let cut = HostTensor::from_slice([1, y.len() - 8], &y[8..]).unwrap();
        t.insert("out.y".into(), cut);
    });
    variant(dir, EXPERTS, "bad/input_shape.safetensors", |t, _| {
        let w2 = t["in.w2"].clone();
        let dims = w2.dims().to_vec();
        let swapped = [dims[0], dims[2], dims[1]];
        let wrong = HostTensor::from_bytes(swapped, w2.dtype(), w2.as_bytes().to_vec()).unwrap();
        t.insert("in.w2".into(), wrong);
    });
    variant(
        dir,
        ROUTE,
        "bad/duplicate_expected_id.safetensors",
        |t, _| {
            let ids = &t["out.topk_ids"];
            let mut v = ids.to_i32_vec().unwrap();
            v[1] = v[0];
            t.insert(
                "out.topk_ids".into(),
                HostTensor::from_slice(ids.shape().clone(), &v).unwrap(),
            );
        },
    );
    std::fs::write(
        dir.join("bad/not_safetensors.safetensors"),
        b"not a tensor file",
    )
    .unwrap();
    vec![
        ("missing_tensor", "missing tensor `in.kv_cache`"),
        ("bad_params", "bad `params` JSON for moe_route"),
        ("unknown_op", "unknown op `moe_gate`"),
        ("wrong_dtype", "tensor `in.topk_ids` must be I32, got F32"),
        ("missing_run_input", "missing tensor `in.q`"),
        ("missing_logits", "missing tensor `in.logits`"),
        ("missing_x", "missing tensor `in.x`"),
        ("missing_expected_ids", "missing tensor `out.topk_ids`"),
        (
            "top_k_u64_max",
            "bad parameter `top_k`: must be in 1..=E (8, from `in.logits`), got 18446744073709551615",
        ),
        (
            "top_k_above_u64",
            "bad `params` JSON for moe_route: parameter `top_k` = 1.8446744073709552e+19: invalid type",
        ),
        ("top_k_negative", "parameter `top_k` = -1: invalid value: integer `-1`"),
        ("top_k_not_ids_width", "bad parameter `top_k` (1) for the expected `out.topk_ids` of shape [4, 2]"),
        ("head_dim_v_text", "parameter `head_dim_v` = \"8\": invalid type: string"),
        ("loose_tolerance", "may only tighten"),
        (
            "output_shape",
            "`out.y` has shape [1, 16], but the op returns [3, 8]",
        ),
        ("input_shape", "inputs break the contract"),
        ("duplicate_expected_id", "row 0 names expert"),
        ("not_safetensors", "not a valid safetensors file"),
    ]
}

#[test]
fn malformed_files_fail_with_their_name_and_the_run_continues() {
    let dir = TempDir::new("malformed");
    let expected = malformed_set(&dir.0);
    let cases = load_cases(&[&dir.0]);
    assert_eq!(cases.len(), FIXTURE_CASES + expected.len());
    let report = run(&CpuBackend::new(), &cases);
    let shown = render(&report);
    for (file, text) in &expected {
        let name = format!("bad/{file}.safetensors");
        let o = report.results.iter().find(|o| o.case == name).unwrap();
        assert_eq!(o.status, Status::Error, "{name}\n{shown}");
        let message = o.message.as_deref().unwrap();
        assert!(message.contains(text), "{name}: {message}");
        let named = format!("malformed case {}: ", dir.join(&name).display());
        assert!(message.starts_with(&named), "{message}");
        assert!(shown.contains(&name), "{shown}");
    }
    let counts = report.counts(None);
    assert_eq!(
        (counts.passed, counts.failed, counts.errors),
        (FIXTURE_CASES, 0, expected.len()),
        "{shown}"
    );
    let verdict = report.verdict(&[]);
    assert!(!verdict.ok);
    assert_eq!(verdict.exit, moemla_conformance::ExitStatus::Goldens);
}

#[test]
fn a_tightened_tolerance_is_applied() {
    let dir = TempDir::new("tight");
    fixture_set(&dir.0);
    variant(&dir.0, MLA, "tight/exact.safetensors", |_, m| {
        m.insert(
            "tolerance".into(),
            r#"{"o":{"atol":0.0,"rtol":0.0}}"#.into(),
        );
    });
    let cases = load_cases(&[dir.join("tight")]);
    let case = cases[0].as_ref().unwrap();
    assert_eq!(case.tolerances["o"].atol, 0.0);
    assert_eq!(
        case.tolerances["lse"].atol, 1e-4,
        "untouched outputs keep the default"
    );
    // f32 accumulation cannot match the f64 reference bit for bit everywhere.
    let report = run(&CpuBackend::new(), &cases);
    let o = &report.results[0];
    assert_eq!(o.status, Status::Fail, "{}", render(&report));
    assert!(!o.comparisons[0].passed && o.comparisons[1].passed);
}

#[test]
fn missing_and_empty_directories_are_errors() {
    let dir = TempDir::new("empty");
    let missing = dir.join("nowhere");
    let cases = load_cases(&[&dir.0, &missing]);
    assert_eq!(cases.len(), 2);
    let messages: Vec<String> = cases
        .iter()
        .map(|c| c.as_ref().unwrap_err().to_string())
        .collect();
    assert!(
        messages[0].contains("no .safetensors case files"),
        "{}",
        messages[0]
    );
    assert!(messages[1].contains("does not exist"), "{}", messages[1]);
    let report = run(&CpuBackend::new(), &cases);
    assert_eq!(report.counts(None).errors, 2);
    assert_eq!(
        report.verdict(&[]).exit,
        moemla_conformance::ExitStatus::Goldens
    );
}
