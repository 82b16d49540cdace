//! `moemla bench` on the CPU: the host's physical limits bound every row of the same run.

use std::process::Command;

#[test]
fn physical_ceilings_bound_every_cpu_row_of_the_same_run() {
    let report =
        std::env::temp_dir().join(format!("moemla-bench-limits-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["bench", "--quick", "--backend", "cpu", "--json"])
        .arg(&report)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .output()
        .expect("run moemla");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&report).expect("report written");
    std::fs::remove_file(&report).ok();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");

    // The host's limits, with the read buffer at least 8x the last-level cache.
    let host = &doc["host"];
    assert!(host["fma_flops"].as_f64().unwrap() > 0.0, "{host}");
    assert!(host["read_bandwidth"].as_f64().unwrap() > 0.0, "{host}");
    let read_bytes = host["read_bytes"].as_u64().unwrap();
    if let Some(llc) = host["llc_bytes"].as_u64() {
        assert!(read_bytes >= 8 * llc, "{host}");
    }
    let bf16_native = host["bf16_flops"].as_f64().is_some();

    let ceilings = doc["ceilings"][0]["ceilings"].as_array().unwrap();
    assert_eq!(doc["ceilings"][0]["backend"], "cpu");
    let rows = doc["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "route + experts and decode in bf16 and f32");
    for c in ceilings {
        // The floors use physical limits; the old GEMM ceiling is reference only, labelled.
        assert_eq!(c["memory"]["name"], "read BW", "{c}");
        assert_eq!(c["memory"]["physical"], true, "{c}");
        assert_eq!(c["compute"]["physical"], true, "{c}");
        let compute = match (c["dtype"].as_str().unwrap(), bf16_native) {
            ("BF16", true) => "bf16 dot peak",
            _ => "f32 FMA peak",
        };
        assert_eq!(c["compute"]["name"], compute, "{c}");
        let reference = c["reference"].as_array().unwrap();
        assert!(
            reference
                .iter()
                .any(|r| r["name"] == "GEMM (achievable)" && r["physical"] == false),
            "{c}"
        );
    }
    for row in rows {
        let c = ceilings
            .iter()
            .find(|c| c["dtype"] == row["dtype"])
            .unwrap_or_else(|| panic!("no ceilings for {row}"));
        let (bw, flops) = (
            row["gb_per_s"].as_f64().unwrap() * 1e9,
            row["gflop_per_s"].as_f64().unwrap() * 1e9,
        );
        let (mem_limit, compute_limit) = (
            c["memory"]["rate"].as_f64().unwrap(),
            c["compute"]["rate"].as_f64().unwrap(),
        );
        assert!(bw > 0.0 && bw < mem_limit, "{row} vs {c}");
        assert!(flops > 0.0 && flops < compute_limit, "{row} vs {c}");
        // The host's rates bound it whatever ceilings entry carries them (a bf16 row may
        // pass the f32 peak on a native bf16 dot, so its own compute limit only).
        assert!(bw < host["read_bandwidth"].as_f64().unwrap(), "{row}");
        if row["dtype"] != "BF16" {
            assert!(flops < host["fma_flops"].as_f64().unwrap(), "{row}");
        }
        // The row names the ceiling its ratio is against.
        let ratio = row["roofline_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio < 1.0, "{row}");
        let limit = row["limit"].as_str().unwrap();
        let want = match row["bound"].as_str().unwrap() {
            "memory" => &c["memory"]["name"],
            _ => &c["compute"]["name"],
        };
        assert_eq!(limit, want, "{row}");
    }
    assert!(stdout.contains("physical limit"), "{stdout}");
    assert!(stdout.contains("achievable rate, not a limit"), "{stdout}");
}
