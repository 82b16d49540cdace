//! The JSON and JUnit reports parse back with the right counts; the verdict (exit code)
//! follows failures, malformed files and required backends; the matrix shows every cell.

mod common;

use common::{fixture_set, TempDir, FIXTURE_CASES};
use moemla_conformance::{
    load_cases, render, run, run_unavailable, to_junit, CaseFile, ExitStatus, Report, RunInfo,
    Status, REQUIRED_CASE, SCHEMA_VERSION,
};
use moemla_core::calls::{MlaDecodeCall, MoeExpertsCall, MoeRouteCall};
use moemla_core::{
    Backend, BackendInfo, DType, DeviceTensor, HostTensor, MlaDecodeOutput, MoeRouteOutput, Result,
    Shape,
};
use moemla_cpu::CpuBackend;
use serde_json::Value;

/// The CPU backend declaring only F32 support.
struct F32Only(CpuBackend);

impl Backend for F32Only {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn info(&self) -> BackendInfo {
        let mut info = self.0.info();
        info.supported.retain(|s| s.dtype == DType::F32);
        info
    }
    fn alloc_zeroed(&self, shape: &Shape, dtype: DType) -> Result<DeviceTensor> {
        self.0.alloc_zeroed(shape, dtype)
    }
    fn upload(&self, host: &HostTensor) -> Result<DeviceTensor> {
        self.0.upload(host)
    }
    fn download(&self, tensor: &DeviceTensor) -> Result<HostTensor> {
        self.0.download(tensor)
    }
    fn synchronize(&self) -> Result<()> {
        self.0.synchronize()
    }
    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.0.moe_route(call)
    }
    fn moe_experts(&self, call: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        self.0.moe_experts(call)
    }
    fn mla_decode(&self, call: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.0.mla_decode(call)
    }
}

/// A malformed file whose name needs XML escaping.
const ODD_NAME: &str = "bad/a&b<'q'>\"x\".safetensors";

/// The case ID of the copy of the F32 MLA fixture whose expected `o` is off by 1.0.
const WRONG: &str = "mla_decode/f32/wrong.safetensors";

/// The fixtures plus one malformed file, plus [`WRONG`] (a numeric mismatch everywhere).
fn cases(dir: &TempDir) -> Vec<CaseFile> {
    fixture_set(&dir.0);
    std::fs::create_dir_all(dir.join("bad")).unwrap();
    std::fs::write(dir.join(ODD_NAME), b"\x01<not>&a file").unwrap();
    let mut cases = load_cases(&[&dir.0]);
    let mut wrong = (cases.iter().flatten())
        .find(|c| c.name == "mla_decode/f32/mla.safetensors")
        .unwrap()
        .clone();
    wrong.name = WRONG.to_string();
    let o = &wrong.expected["o"];
    let shifted: Vec<f32> = o.to_f32_vec().unwrap().iter().map(|v| v + 1.0).collect();
    let shifted = HostTensor::from_f32_as(o.shape().clone(), &shifted, DType::F32).unwrap();
    wrong.expected.insert("o".into(), shifted);
    cases.push(Ok(wrong));
    cases
}

/// Renames the (single) backend of a report, as a second column would be called.
fn renamed(mut report: Report, name: &str) -> Report {
    report.backends[0].name = name.to_string();
    report
        .results
        .iter_mut()
        .for_each(|o| o.backend = name.to_string());
    report
}

/// cpu: 6 pass + 1 fail + 1 error; lite: 3 pass + 3 unsupported + 1 fail + 1 error; ghost:
/// 7 unavailable + 1 error.
fn three_backends(cases: &[CaseFile]) -> Report {
    let mut report = run(&CpuBackend::new(), cases);
    report.extend(renamed(run(&F32Only(CpuBackend::new()), cases), "lite"));
    report.extend(run_unavailable(
        "ghost",
        "no <libghost.so> & \"no\" driver",
        cases,
    ));
    report
}

#[test]
fn json_report_has_one_object_per_case_and_backend() {
    let dir = TempDir::new("json");
    let cases = cases(&dir);
    let report = three_backends(&cases);
    let doc: Value = serde_json::from_str(&report.to_json()).unwrap();
    let s = &doc["summary"];
    let counts = (
        &s["passed"],
        &s["failed"],
        &s["skipped"],
        &s["unsupported"],
        &s["unavailable"],
    );
    assert_eq!(
        counts,
        (
            &Value::from(9),
            &Value::from(2),
            &Value::from(10),
            &Value::from(3),
            &Value::from(7)
        )
    );
    assert_eq!(s["errors"], 3);
    // Without a stored verdict: the malformed file wins (goldens, 4).
    assert_eq!(doc["schema_version"], SCHEMA_VERSION);
    assert_eq!(
        (&doc["outcome"], &doc["exit_code"]),
        (&Value::from("goldens"), &Value::from(4))
    );
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 3 * (FIXTURE_CASES + 2));
    let keys = [
        "case", "path", "op", "dtype", "backend", "status", "max_abs", "max_rel",
    ];
    for r in results {
        for key in keys.iter().chain(&["worst_index", "message"]) {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
    let find = |backend: &str, case: &str| {
        (results.iter())
            .find(|r| r["backend"] == backend && r["case"] == case)
            .unwrap()
    };
    let pass = find("cpu", "mla_decode/bf16/mla.safetensors");
    assert_eq!(
        (&pass["status"], &pass["op"], &pass["dtype"]),
        (
            &Value::from("pass"),
            &Value::from("mla_decode"),
            &Value::from("BF16")
        )
    );
    assert!(pass["max_abs"].as_f64().unwrap() < 2e-2);
    assert_eq!(pass["worst_index"].as_array().unwrap().len(), 4);
    // A passing case records its exact worst ratio: the largest over its comparisons,
    // each of which is below 1 and consistent with its maximum absolute error.
    let ratio = pass["worst_ratio"].as_f64().unwrap();
    assert!(ratio > 0.0 && ratio < 1.0, "{pass}");
    let per_output: Vec<f64> = (pass["comparisons"].as_array().unwrap().iter())
        .map(|c| c["worst_ratio"].as_f64().unwrap())
        .collect();
    assert_eq!(per_output.iter().copied().fold(0.0, f64::max), ratio);
    let error = find("cpu", ODD_NAME);
    assert_eq!(error["status"], "error");
    assert!(error["message"].as_str().unwrap().contains(ODD_NAME));
    let wrong = find("cpu", WRONG);
    assert_eq!(wrong["status"], "fail");
    // Off by 1.0 everywhere against an allowance of atol + rtol * |exp| (well under 1).
    assert!(wrong["worst_ratio"].as_f64().unwrap() > 10.0, "{wrong}");
    assert_eq!(
        find("lite", "moe_route/bf16/route.safetensors")["status"],
        "unsupported"
    );
    assert_eq!(
        find("ghost", "moe_route/f32/route.safetensors")["status"],
        "unavailable"
    );
    let backends = doc["backends"].as_array().unwrap();
    let per_backend: Vec<(&str, u64, u64, u64)> = (backends.iter())
        .map(|b| {
            let s = &b["summary"];
            let n = |k: &str| s[k].as_u64().unwrap();
            (
                b["name"].as_str().unwrap(),
                n("passed"),
                n("failed"),
                n("skipped"),
            )
        })
        .collect();
    assert_eq!(
        per_backend,
        [("cpu", 6, 1, 0), ("lite", 3, 1, 3), ("ghost", 0, 0, 7)]
    );
    assert_eq!(backends[2]["available"], false);
    assert_eq!(backends[2]["device"], Value::Null);
    let device = &backends[0]["device"];
    assert_eq!(device["vendor"], "moemla");
    assert_eq!(
        device["fingerprint"],
        format!("cpu/moemla/{}", device["device"].as_str().unwrap())
    );
}

#[test]
fn junit_is_well_formed_with_the_right_counts() {
    let dir = TempDir::new("junit");
    let cases = cases(&dir);
    let report = three_backends(&cases);
    let xml = to_junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let attr = |n: roxmltree::Node, a: &str| n.attribute(a).unwrap().parse::<usize>().unwrap();
    assert_eq!(
        (
            attr(root, "tests"),
            attr(root, "failures"),
            attr(root, "errors")
        ),
        (24, 2, 3)
    );
    // Not in junit-10.xsd's <testsuites>.
    assert_eq!(root.attribute("skipped"), None);
    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    let names: Vec<&str> = suites
        .iter()
        .map(|s| s.attribute("name").unwrap())
        .collect();
    assert_eq!(names, ["cpu", "lite", "ghost"]);
    let want = [(8, 1, 0, 1), (8, 1, 3, 1), (8, 0, 7, 1)];
    for (suite, want) in suites.iter().zip(want) {
        let cases: Vec<_> = suite
            .children()
            .filter(|n| n.has_tag_name("testcase"))
            .collect();
        let with = |tag: &str| {
            cases
                .iter()
                .filter(|c| c.children().any(|n| n.has_tag_name(tag)))
                .count()
        };
        let got = (cases.len(), with("failure"), with("skipped"), with("error"));
        assert_eq!(got, want);
        assert_eq!(
            (
                attr(*suite, "tests"),
                attr(*suite, "failures"),
                attr(*suite, "skipped"),
                attr(*suite, "errors")
            ),
            want
        );
    }
    // Names and messages survive escaping.
    let odd = doc
        .descendants()
        .find(|n| n.attribute("name") == Some(ODD_NAME))
        .unwrap();
    let error = odd.children().find(|n| n.has_tag_name("error")).unwrap();
    assert!(error.attribute("message").unwrap().contains(ODD_NAME));
    let wrong = doc
        .descendants()
        .find(|n| n.attribute("name") == Some(WRONG))
        .unwrap();
    assert!(wrong.children().any(|n| n.has_tag_name("failure")));
    assert!(xml.contains("no &lt;libghost.so&gt; &amp; &quot;no&quot; driver"));
}

#[test]
fn verdict_fails_on_failures_and_on_required_backends() {
    let dir = TempDir::new("verdict");
    let cases = cases(&dir);
    let report = three_backends(&cases);
    let v = report.verdict(&[]);
    assert!(!v.ok);
    assert_eq!(
        v.reasons,
        [
            format!("1 malformed or unreadable case file(s): {ODD_NAME}"),
            "1 case(s) failed on backend `cpu`".to_string(),
            "1 case(s) failed on backend `lite`".to_string()
        ]
    );
    assert_eq!(v.exit, ExitStatus::Goldens);
    let v = report.verdict(&["ghost".into(), "lite".into(), "cuda".into()]);
    assert!(v
        .reasons
        .iter()
        .any(|r| r.starts_with("required backend `ghost` is unavailable: no <libghost")));
    assert!(v
        .reasons
        .iter()
        .any(|r| r == "required backend `lite` skipped 3 case(s) as unsupported"));
    assert!(v
        .reasons
        .iter()
        .any(|r| r == "required backend `cuda` was not run"));

    // Without the malformed file: a numeric mismatch.
    let well_formed: Vec<CaseFile> = cases.iter().filter(|c| c.is_ok()).cloned().collect();
    let v = run(&CpuBackend::new(), &well_formed).verdict(&[]);
    assert_eq!((v.ok, v.exit), (false, ExitStatus::Mismatch));

    // Only passing cases: an unavailable backend does not count...
    let good: Vec<CaseFile> = (cases.into_iter())
        .filter(|c| c.as_ref().is_ok_and(|c| c.name != WRONG))
        .collect();
    let mut report = run(&CpuBackend::new(), &good);
    report.extend(run_unavailable("ghost", "no driver", &good));
    let v = report.verdict(&["cpu".into()]);
    assert_eq!((v.ok, v.exit), (true, ExitStatus::Pass));
    // ...unless it is required.
    let v = report.verdict(&["ghost".into()]);
    assert_eq!((v.ok, v.exit), (false, ExitStatus::RequiredBackend));
    assert_eq!(report.counts(None).line(), "6 passed, 0 failed, 6 skipped");
}

#[test]
fn matrix_shows_every_cell_and_the_failures() {
    let dir = TempDir::new("matrix");
    let report = three_backends(&cases(&dir));
    let text = render(&report);
    let row = |case: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(case))
            .unwrap()
            .to_string()
    };
    let cells = |line: String| {
        line.split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(cells(row("moe_route/bf16/route")), ["PASS", "unsup", "n/a"]);
    assert_eq!(cells(row("mla_decode/f32/mla")), ["PASS", "PASS", "n/a"]);
    assert_eq!(cells(row("passed")), ["6/8", "3/8", "0/8"]);
    assert_eq!(cells(row("bad/")), ["ERROR", "ERROR", "ERROR"]);
    assert!(text.contains("malformed case files"), "{text}");
    let unsupported = text.matches("[lite] 1 case(s) unsupported: `cpu` does not list");
    assert_eq!(unsupported.count(), 3, "{text}");
    assert!(text.contains("[ghost] 7 case(s) not run"), "{text}");
    // Groups follow contract order: moe_route, moe_experts, mla_decode; F32, F16, BF16.
    let at = |s: &str| text.find(s).unwrap();
    assert!(at("moe_route F32") < at("moe_route BF16"));
    assert!(at("moe_route BF16") < at("moe_experts F32"));
    assert!(at("moe_experts BF16") < at("mla_decode F32"));
    assert_eq!(
        report
            .results
            .iter()
            .filter(|o| o.status == Status::Fail)
            .count(),
        2
    );
}

#[test]
fn allow_unsupported_accepts_declared_gaps_of_a_required_backend_only() {
    let dir = TempDir::new("allow");
    let good: Vec<CaseFile> = (cases(&dir).into_iter())
        .filter(|c| c.as_ref().is_ok_and(|c| c.name != WRONG))
        .collect();
    let report = renamed(run(&F32Only(CpuBackend::new()), &good), "lite");
    assert_eq!(report.counts(None).unsupported, 3);
    let required = ["lite".to_string()];
    assert!(
        !report.verdict(&required).ok,
        "unsupported cells of a required backend fail"
    );
    assert!(report.verdict_allowing(&required, &required).ok);
    // Allowing gaps never excuses an unavailable required backend.
    let ghost = ["ghost".to_string()];
    assert!(!report.verdict_allowing(&ghost, &ghost).ok);
}

#[test]
fn finish_makes_required_backends_failing_cells_that_agree_with_the_exit_code() {
    let dir = TempDir::new("finish");
    fixture_set(&dir.0);
    let good = load_cases(&[&dir.0]);
    let mut report = run(&CpuBackend::new(), &good);
    report.extend(renamed(run(&F32Only(CpuBackend::new()), &good), "lite"));
    report.extend(run_unavailable("ghost", "no driver", &good));
    report.run = RunInfo::now();
    let required = ["ghost".to_string(), "lite".to_string(), "cuda".to_string()];
    let verdict = report.finish(&required, &[]);
    assert_eq!(verdict.exit, ExitStatus::RequiredBackend);
    assert_eq!(verdict.reasons.len(), 3, "{:?}", verdict.reasons);
    // One failing cell per required problem, with its reason; cuda gets a column.
    let required_cells: Vec<(&str, &str)> = (report.results.iter())
        .filter(|o| o.case == REQUIRED_CASE)
        .map(|o| {
            assert_eq!(o.status, Status::Fail);
            (o.backend.as_str(), o.message.as_deref().unwrap())
        })
        .collect();
    assert_eq!(
        required_cells,
        [
            (
                "ghost",
                "required backend `ghost` is unavailable: no driver"
            ),
            (
                "lite",
                "required backend `lite` skipped 3 case(s) as unsupported"
            ),
            ("cuda", "required backend `cuda` was not run"),
        ]
    );
    assert!(report
        .backends
        .iter()
        .any(|b| b.name == "cuda" && !b.available));

    let doc: Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(
        (&doc["outcome"], &doc["exit_code"]),
        (&Value::from("required_backend"), &Value::from(3))
    );
    assert_eq!(doc["summary"]["failed"], 3);
    assert_eq!(doc["reasons"].as_array().unwrap().len(), 3);
    let stamp = doc["run"]["timestamp"].as_str().unwrap();
    assert!(stamp.len() == 20 && stamp.ends_with('Z'), "{stamp}");
    assert!(!doc["run"]["hostname"].as_str().unwrap().is_empty());

    let xml = to_junit(&report);
    let doc = roxmltree::Document::parse(&xml).unwrap();
    assert_eq!(doc.root_element().attribute("failures"), Some("3"));
    for suite in doc.descendants().filter(|n| n.has_tag_name("testsuite")) {
        let name = suite.attribute("name").unwrap();
        let failures = suite.attribute("failures").unwrap();
        let want = if name == "cpu" { "0" } else { "1" };
        assert_eq!(failures, want, "{name}");
        assert_eq!(suite.attribute("timestamp"), Some(&stamp[..19]));
        assert!(suite.attribute("hostname").is_some());
    }
    let ghost_required = (doc.descendants())
        .find(|n| {
            n.attribute("name") == Some(REQUIRED_CASE)
                && n.attribute("classname") == Some("ghost.required")
        })
        .unwrap();
    let failure = ghost_required.first_element_child().unwrap();
    assert_eq!(failure.tag_name().name(), "failure");
    assert!(failure.attribute("message").unwrap().contains("no driver"));
    // The unavailable backend's cases are skipped with the reason.
    let skipped = (doc.descendants())
        .filter(|n| n.has_tag_name("skipped"))
        .filter(|n| n.attribute("message") == Some("unavailable: no driver"))
        .count();
    assert_eq!(skipped, FIXTURE_CASES);
    assert!(text_has_required_group(&render(&report)));
}

/// Whether the matrix shows the required backends' cells in their own group.
fn text_has_required_group(text: &str) -> bool {
    text.lines().any(|l| l == "required backends")
}
