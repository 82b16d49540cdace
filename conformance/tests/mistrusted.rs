//! "Mistrusted" (benchdnn's word): a case whose expected float outputs are ALL zeros proves
//! nothing, since a backend that writes nothing would pass it. Such a case is its own
//! status in the matrix, JSON and JUnit, neither pass nor fail. One all-zero output beside
//! one that is not (every attention range empty: `o` zeros, `lse` -inf) is an ordinary case.

mod common;

use common::{fixture_set, write_case, TempDir, EXP_H, EXP_T, MLA_B, MLA_DV, MLA_HQ, MLA_SQ};
use moemla_conformance::{load_cases, render, run, to_junit, Report, Status};
use moemla_core::{DType, HostTensor};
use moemla_cpu::CpuBackend;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

type Tensors = BTreeMap<String, HostTensor>;
type Meta = BTreeMap<String, String>;

/// Copies case `src` to `dst` (both relative to `dir`) after `edit`.
fn variant(dir: &Path, src: &str, dst: &str, edit: impl FnOnce(&mut Tensors, &mut Meta)) {
    let bytes = std::fs::read(dir.join(src)).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta: Meta = header.metadata().clone().unwrap().into_iter().collect();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Tensors = (st.tensors().into_iter())
        .map(|(name, v)| {
            let dtype = DType::from_name(&v.dtype().to_string()).unwrap();
            let t = HostTensor::from_bytes(v.shape().to_vec(), dtype, v.data().to_vec()).unwrap();
            (name, t)
        })
        .collect();
    edit(&mut tensors, &mut meta);
    let meta: Vec<(&str, &str)> = meta.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let tensors: Vec<(&str, &HostTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    write_case(&dir.join(dst), &meta, &tensors);
}

/// An F32 tensor of `dims` holding `value` everywhere.
fn filled(dims: &[usize], value: f32) -> HostTensor {
    let n = dims.iter().product();
    HostTensor::from_slice(dims.to_vec(), &vec![value; n]).unwrap()
}

const EMPTY_MLA: &str = "edge/mla_all_empty.safetensors";
const ZERO_EXPERTS: &str = "edge/experts_zero_weights.safetensors";
const WRONG_ZEROS: &str = "edge/experts_zeros_expected_wrongly.safetensors";

/// The fixtures plus the three edge cases above.
fn edge_set(dir: &Path) {
    fixture_set(dir);
    // Every sequence empty (non-causal, seqlen 0): o is all zeros, lse all -inf. Valid.
    variant(dir, "mla_decode/f32/mla.safetensors", EMPTY_MLA, |t, m| {
        t.insert(
            "in.cache_seqlens".into(),
            HostTensor::from_slice([MLA_B], &[0i32, 0]).unwrap(),
        );
        let params = m["params"].replace(r#""causal":true"#, r#""causal":false"#);
        m.insert("params".into(), params);
        t.insert(
            "out.o".into(),
            filled(&[MLA_B, MLA_SQ, MLA_HQ, MLA_DV], 0.0),
        );
        t.insert(
            "out.lse".into(),
            filled(&[MLA_B, MLA_HQ, MLA_SQ], f32::NEG_INFINITY),
        );
    });
    // Every routing weight 0: y is truly all zeros, so the case proves nothing.
    variant(
        dir,
        "moe_experts/f32/experts.safetensors",
        ZERO_EXPERTS,
        |t, _| {
            let w = &t["in.topk_weights"];
            t.insert("in.topk_weights".into(), filled(w.dims(), 0.0));
            t.insert("out.y".into(), filled(&[EXP_T, EXP_H], 0.0));
        },
    );
    // Expected zeros where the op does compute something: a plain failure.
    variant(
        dir,
        "moe_experts/f32/experts.safetensors",
        WRONG_ZEROS,
        |t, _| {
            t.insert("out.y".into(), filled(&[EXP_T, EXP_H], 0.0));
        },
    );
}

fn edge_report(tag: &str) -> Report {
    let dir = TempDir::new(tag);
    edge_set(&dir.0);
    let cases = load_cases(&[&dir.0]);
    assert!(cases.iter().all(|c| c.is_ok()), "every edge case loads");
    run(&CpuBackend::new(), &cases)
}

fn status(report: &Report, case: &str) -> Status {
    let o = report.results.iter().find(|o| o.case == case).unwrap();
    o.status
}

#[test]
fn only_a_case_whose_every_float_output_is_zero_is_mistrusted() {
    let report = edge_report("mistrust");
    let text = render(&report);
    assert_eq!(status(&report, EMPTY_MLA), Status::Pass, "{text}");
    assert_eq!(status(&report, ZERO_EXPERTS), Status::Mistrusted, "{text}");
    assert_eq!(status(&report, WRONG_ZEROS), Status::Fail, "{text}");
    let mistrusted = (report.results.iter())
        .find(|o| o.case == ZERO_EXPERTS)
        .unwrap();
    let why = mistrusted.message.as_deref().unwrap();
    assert!(
        why.contains("every expected float output (out.y) is all zeros"),
        "{why}"
    );
    // The loaded case carries the reason; the ordinary edge case does not.
    let dir = TempDir::new("mistrust-load");
    edge_set(&dir.0);
    let cases = load_cases(&[&dir.0]);
    let case = |name: &str| {
        (cases.iter().flatten())
            .find(|c| c.name == name)
            .unwrap()
            .clone()
    };
    assert!(case(ZERO_EXPERTS).mistrusted.is_some());
    assert!(case(EMPTY_MLA).mistrusted.is_none());
    assert!(case(WRONG_ZEROS).mistrusted.is_some());
}

#[test]
fn mistrusted_is_its_own_status_in_counts_matrix_json_and_junit() {
    let report = edge_report("mistrust-reports");
    let counts = report.counts(None);
    assert_eq!(
        (
            counts.passed,
            counts.failed,
            counts.mistrusted,
            counts.skipped()
        ),
        (7, 1, 1, 0)
    );
    assert_eq!(counts.line(), "7 passed, 1 failed, 0 skipped, 1 mistrusted");
    // Neither pass nor fail: only the wrong-zeros case fails the run.
    assert_eq!(
        report.verdict(&[]).reasons,
        ["1 case(s) failed on backend `cpu`"]
    );

    let text = render(&report);
    let row = (text.lines())
        .find(|l| l.trim_start().starts_with("edge/experts_zero_weights"))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("mistr"), "{text}");
    assert!(
        text.contains("mistrusted (within tolerance, but proves nothing"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "[cpu] {ZERO_EXPERTS}: every expected float output"
    )));
    let footer = text.lines().find(|l| l.starts_with("passed")).unwrap();
    assert_eq!(footer.split_whitespace().nth(1), Some("7/9"), "{text}");

    let doc: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(doc["summary"]["mistrusted"], 1);
    assert_eq!(doc["summary"]["skipped"], 0);
    assert_eq!(doc["backends"][0]["summary"]["mistrusted"], 1);
    let result = (doc["results"].as_array().unwrap().iter())
        .find(|r| r["case"] == ZERO_EXPERTS)
        .unwrap();
    assert_eq!(result["status"], "mistrusted");

    let xml = to_junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    // junit-10.xsd has no `skipped` on <testsuites>: the suite carries it.
    assert_eq!(root.attribute("skipped"), None);
    let suite = root.first_element_child().unwrap();
    assert_eq!(suite.attribute("skipped"), Some("1"));
    assert_eq!(root.attribute("failures"), Some("1"));
    let case = (doc.descendants())
        .find(|n| n.attribute("name") == Some(ZERO_EXPERTS))
        .unwrap();
    let skipped = case.children().find(|n| n.has_tag_name("skipped")).unwrap();
    let message = skipped.attribute("message").unwrap();
    assert!(
        message.starts_with("mistrusted: every expected float output"),
        "{message}"
    );
    assert!(!case.children().any(|n| n.has_tag_name("failure")));
}
