//! `moemla bench` on the CPU: the host's physical limits bound every row of the same run.

use std::process::Command;

#[test]
fn physical_ceilings_bound_every_cpu_row_of_the_same_run() {
    let tmp = std::env::temp_dir();
    let report = tmp.join(format!("moemla-bench-limits-{}.json", std::process::id()));
    let plots = tmp.join(format!("moemla-bench-plots-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["bench", "--quick", "--backend", "cpu", "--json"])
        .arg(&report)
        .arg("--plot")
        .arg(&plots)
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
    // Measured before the rows and again after them; the host's rates are the best of all.
    let measurements = doc["host_measurements"].as_array().unwrap();
    assert_eq!(measurements.len(), 2, "{measurements:?}");
    for key in ["fma_flops", "read_bandwidth", "cache_read_bandwidth"] {
        let best = (measurements.iter())
            .map(|m| m[key].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(host[key].as_f64().unwrap(), best, "{key}: {measurements:?}");
    }
    for (i, step) in host["cache_steps"].as_array().unwrap().iter().enumerate() {
        let best = (measurements.iter())
            .map(|m| m["cache_steps"][i]["bandwidth"].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(
            step["bandwidth"].as_f64().unwrap(),
            best,
            "{measurements:?}"
        );
    }

    let ceilings = doc["ceilings"][0]["ceilings"].as_array().unwrap();
    assert_eq!(doc["ceilings"][0]["backend"], "cpu");
    let rows = doc["rows"].as_array().unwrap();
    // route + experts and decode in bf16 and f32, then contract v2: FP8 experts (w8a16,
    // w8a8), decode over the FP8 cache, sparse decode, the indexer, the decode step.
    assert_eq!(rows.len(), 11, "every quick case");
    let cases: Vec<&str> = rows.iter().map(|r| r["case"].as_str().unwrap()).collect();
    for want in [
        "moe_experts fp8 w8a16 T=4",
        "moe_experts fp8 w8a8 T=4",
        "mla_decode bf16 fp8 cache",
        "mla_sparse_decode bf16 fp8 cache",
        "dsa_indexer_topk bf16",
        "decode step bf16 append fp8 cache",
    ] {
        assert!(
            cases.iter().any(|c| c.starts_with(want)),
            "{want} in {cases:?}"
        );
    }
    // The decode step also reports its decode alone, faster than the step.
    let step = rows.iter().find(|r| r["op"] == "mla_cache_write").unwrap();
    let (name, alone) = (&step["parts"][0][0], step["parts"][0][1].as_f64().unwrap());
    assert_eq!(name, "decode alone", "{step}");
    assert!(alone > 0.0 && alone.is_finite(), "{step}");
    for c in ceilings {
        // Every limit measured before and after the rows, its rate the best of the two.
        let steps = c["cache_steps"].as_array().unwrap();
        for l in [&c["memory"], &c["memory_in_cache"], &c["compute"]]
            .into_iter()
            .chain(steps.iter().map(|s| &s["limit"]))
            .chain(c["reference"].as_array().unwrap())
        {
            let measured: Vec<f64> = (l["measured"].as_array().unwrap().iter())
                .map(|r| r.as_f64().unwrap())
                .collect();
            assert_eq!(measured.len(), 2, "{l}");
            assert_eq!(
                l["rate"].as_f64().unwrap(),
                measured.iter().copied().fold(0.0, f64::max),
                "{l}"
            );
        }
        // The floors use physical limits; the old GEMM ceiling is reference only, labelled.
        assert_eq!(c["memory"]["name"], "read BW", "{c}");
        assert_eq!(c["memory"]["physical"], true, "{c}");
        assert_eq!(c["memory_in_cache"]["name"], "cache read BW", "{c}");
        assert_eq!(c["memory_in_cache"]["physical"], true, "{c}");
        // The cache steps: 4 MiB, then 4 times larger each, up to the last-level cache,
        // one per step the host measured.
        let sizes: Vec<u64> = (steps.iter())
            .map(|s| s["from_bytes"].as_u64().unwrap())
            .collect();
        let host_sizes: Vec<u64> = (host["cache_steps"].as_array().unwrap().iter())
            .map(|s| s["bytes"].as_u64().unwrap())
            .collect();
        assert_eq!(sizes, host_sizes, "{c}");
        for (i, (s, &bytes)) in steps.iter().zip(&sizes).enumerate() {
            assert_eq!(bytes, 4 << 20 << (2 * i), "{c}");
            assert!(bytes <= host["llc_bytes"].as_u64().unwrap(), "{c}");
            assert_eq!(
                s["limit"]["name"],
                format!("read BW at {} MiB", bytes >> 20)
            );
            assert_eq!(s["limit"]["physical"], true, "{c}");
        }
        assert_eq!(c["compute"]["physical"], true, "{c}");
        // BF16 rows on a CPU with the native dot: the larger of its peak and the FMA's
        // (a bf16 product is exact in f32); the FMA peak says which dot rate it beat.
        let name = c["compute"]["name"].as_str().unwrap();
        let how = c["compute"]["how"].as_str().unwrap();
        match (c["dtype"].as_str().unwrap(), bf16_native) {
            ("BF16", true) => assert!(
                name == "bf16 dot peak"
                    || (name == "f32 FMA peak"
                        && how.contains("above this CPU's native bf16 dot peak")),
                "{c}"
            ),
            _ => assert_eq!(name, "f32 FMA peak", "{c}"),
        }
        let reference = c["reference"].as_array().unwrap();
        assert!(
            reference
                .iter()
                .any(|r| r["name"] == "GEMM (achievable)" && r["physical"] == false),
            "{c}"
        );
    }
    assert_rows_bounded(&doc, 0);
    assert!(stdout.contains("physical limit"), "{stdout}");
    assert!(stdout.contains("achievable rate, not a limit"), "{stdout}");

    // --plot: per op, time and fraction of the limit against its x dim, as SVG whose
    // series are the run's backend/dtype groups. Stderr is not a terminal: no bar.
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut written: Vec<String> = std::fs::read_dir(&plots)
        .expect("plot dir")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let want = [
        "dsa_indexer_topk_of_limit_vs_sk.svg",
        "dsa_indexer_topk_time_vs_sk.svg",
        "mla_cache_write_of_limit_vs_sk.svg",
        "mla_cache_write_time_vs_sk.svg",
        "mla_decode_of_limit_vs_sk.svg",
        "mla_decode_time_vs_sk.svg",
        "mla_sparse_decode_of_limit_vs_sk.svg",
        "mla_sparse_decode_time_vs_sk.svg",
        "moe_experts_of_limit_vs_T.svg",
        "moe_experts_time_vs_T.svg",
        "moe_route_of_limit_vs_T.svg",
        "moe_route_time_vs_T.svg",
    ];
    assert_eq!(written, want);
    let svg = std::fs::read_to_string(plots.join("mla_decode_of_limit_vs_sk.svg")).unwrap();
    let experts = std::fs::read_to_string(plots.join("moe_experts_time_vs_T.svg")).unwrap();
    std::fs::remove_dir_all(&plots).ok();
    for (doc, series) in [
        (
            &svg,
            vec![
                "cpu bf16 b=2 blk=64 h_q=4 s_q=2",
                "cpu f32 b=2 blk=64 h_q=4 s_q=2",
                "cpu bf16 fp8 cache b=2 blk=64 h_q=4 s_q=2",
            ],
        ),
        (
            &experts,
            vec![
                "cpu bf16 E=8 H=128 I=64 k=2",
                "cpu f32 E=8 H=128 I=64 k=2",
                "cpu bf16 fp8 w8a16 E=8 H=256 I=128 k=2",
                "cpu bf16 fp8 w8a8 E=8 H=256 I=128 k=2",
            ],
        ),
    ] {
        assert!(
            doc.starts_with("<svg") && doc.trim_end().ends_with("</svg>"),
            "{doc}"
        );
        for name in series {
            assert!(doc.contains(name), "{name} in {doc}");
        }
    }
}

/// The same discipline on OpenCL where this machine has it (PoCL, on this CPU): the host's
/// limits bound every OpenCL row of the same run, and the device's own limit kernels (read
/// reduction, FMA loop) are measured before and after the rows beside them. Skipped where
/// no OpenCL device opens, unless MOEMLA_REQUIRE names opencl.
#[test]
fn physical_ceilings_bound_every_opencl_row_of_the_same_run() {
    let report = std::env::temp_dir().join(format!(
        "moemla-bench-limits-opencl-{}.json",
        std::process::id()
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["bench", "--quick", "--backend", "opencl", "--json"])
        .arg(&report)
        .env_remove("MOEMLA_BACKEND")
        .output()
        .expect("run moemla");
    let required = std::env::var("MOEMLA_REQUIRE").is_ok_and(|r| r.contains("opencl"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && !required && stderr.contains("unavailable") {
        eprintln!("skipped: no OpenCL device ({stderr})");
        return;
    }
    assert!(
        out.status.success(),
        "{}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).unwrap();
    std::fs::remove_file(&report).ok();
    assert_eq!(doc["ceilings"][0]["backend"], "opencl");
    let ceilings = doc["ceilings"][0]["ceilings"].as_array().unwrap();
    for c in ceilings {
        let reference = c["reference"].as_array().unwrap();
        // On a CPU device (PoCL) the floors are the host's; the device's kernels' rates
        // are shown beside them. On a GPU they are the floors.
        let on_host = c["memory"]["name"] == "read BW" && !c["memory_in_cache"].is_null();
        let device: Vec<&serde_json::Value> = if on_host {
            (reference.iter())
                .filter(|r| r["name"] == "device read BW" || r["name"] == "device f32 FMA peak")
                .collect()
        } else {
            vec![&c["memory"], &c["compute"]]
        };
        assert_eq!(device.len(), 2, "{c}");
        for l in device {
            assert_eq!(l["physical"], true, "{l}");
            assert!(l["rate"].as_f64().unwrap() > 0.0, "{l}");
            assert_eq!(l["measured"].as_array().unwrap().len(), 2, "{l}");
            assert!(l["how"].as_str().unwrap().starts_with("OpenCL "), "{l}");
        }
    }
    assert_rows_bounded(&doc, 0);
}

#[test]
fn filter_keeps_only_the_cases_whose_text_contains_it() {
    let report =
        std::env::temp_dir().join(format!("moemla-bench-filter-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args([
            "bench",
            "--quick",
            "--backend",
            "cpu",
            "--filter",
            "fp8 w8a16",
            "--filter",
        ])
        .arg("dsa_indexer_topk")
        .arg("--json")
        .arg(&report)
        .env_remove("MOEMLA_REQUIRE")
        .env_remove("MOEMLA_BACKEND")
        .output()
        .expect("run moemla");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).unwrap();
    std::fs::remove_file(&report).ok();
    let cases: Vec<&str> = doc["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(cases.len(), 2, "{cases:?}");
    assert!(cases[0].starts_with("moe_experts fp8 w8a16 "), "{cases:?}");
    assert!(cases[1].starts_with("dsa_indexer_topk "), "{cases:?}");
    // An unknown peer is a usage error naming both peers.
    let out = Command::new(env!("CARGO_BIN_EXE_moemla"))
        .args(["bench", "--quick", "--backend", "cpu", "--peer", "jax"])
        .output()
        .expect("run moemla");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown peer `jax` (supported: numpy, torch)"),
        "{err}"
    );
}

/// Every row of the `index`th backend in `doc` (a `moemla bench --json` report) stays
/// below the memory and compute limits of its dtype's ceilings (on the CPU backend also the
/// host's best rates), and names the limit its ratio is against.
fn assert_rows_bounded(doc: &serde_json::Value, index: usize) {
    let host = &doc["host"];
    let ceilings = doc["ceilings"][index]["ceilings"].as_array().unwrap();
    let backend = doc["ceilings"][index]["backend"].as_str().unwrap();
    let rows: Vec<_> = (doc["rows"].as_array().unwrap().iter())
        .filter(|r| r["backend"] == backend)
        .collect();
    assert!(!rows.is_empty(), "{backend}");
    for row in rows {
        let c = ceilings
            .iter()
            .find(|c| c["dtype"] == row["dtype"])
            .unwrap_or_else(|| panic!("no ceilings for {row}"));
        let (bw, flops) = (
            row["gb_per_s"].as_f64().unwrap() * 1e9,
            row["gflop_per_s"].as_f64().unwrap() * 1e9,
        );
        // Rows whose data fits in the last-level cache are against the largest cache step
        // at most their bytes (below the first, the cache read bandwidth), the others
        // against memory's.
        let bytes = row["bytes"].as_f64().unwrap();
        let in_cache = c["cache_bytes"].as_f64().is_some_and(|fits| bytes <= fits);
        // A larger buffer's rate that came out higher bounds a smaller one too: the limit
        // is the best of the chosen one, the larger steps and memory's.
        let steps = c["cache_steps"].as_array().unwrap();
        let from = steps
            .iter()
            .rposition(|s| s["from_bytes"].as_f64().unwrap() <= bytes)
            .map_or(0, |i| i + 1);
        let chosen = match from {
            0 => &c["memory_in_cache"],
            i => &steps[i - 1]["limit"],
        };
        let rate = |l: &serde_json::Value| l["rate"].as_f64().unwrap();
        let memory = if in_cache {
            (steps[from..].iter().map(|s| &s["limit"]))
                .chain([&c["memory"]])
                .fold(
                    chosen,
                    |best, l| if rate(l) > rate(best) { l } else { best },
                )
        } else {
            &c["memory"]
        };
        assert_eq!(row["memory_limit"], memory["name"], "{row}");
        let (mem_limit, compute_limit) = (
            memory["rate"].as_f64().unwrap(),
            c["compute"]["rate"].as_f64().unwrap(),
        );
        assert!(bw > 0.0 && bw < mem_limit, "{row} vs {c}");
        assert!(flops > 0.0 && flops < compute_limit, "{row} vs {c}");
        // On the CPU backend the host's best rates bound it whatever ceilings entry carries
        // them (a bf16 row may pass the f32 peak on a native bf16 dot, so its own compute
        // limit only). (An OpenCL device's floors may be its own kernels' better rates.)
        if backend == "cpu" {
            let host_steps = host["cache_steps"].as_array().unwrap();
            let host_bw = match (in_cache, from) {
                (true, 0) => host["cache_read_bandwidth"].as_f64().unwrap(),
                (true, i) => host_steps[i - 1]["bandwidth"].as_f64().unwrap(),
                _ => host["read_bandwidth"].as_f64().unwrap(),
            };
            // Quick rows move less than the first cache step (4 MiB): they are against the
            // cache read bandwidth or memory's; the choice among steps is checked by the
            // ceilings' unit tests.
            let host_bw = (host_steps[from..].iter())
                .map(|s| s["bandwidth"].as_f64().unwrap())
                .chain([host["read_bandwidth"].as_f64().unwrap()])
                .filter(|_| in_cache)
                .fold(host_bw, f64::max);
            assert!(bw < host_bw, "{row}");
            if row["dtype"] != "BF16" {
                assert!(flops < host["fma_flops"].as_f64().unwrap(), "{row}");
            }
        }
        // The row names the ceiling its ratio is against.
        let ratio = row["roofline_ratio"].as_f64().unwrap();
        assert!(ratio > 0.0 && ratio < 1.0, "{row}");
        let limit = row["limit"].as_str().unwrap();
        let want = match row["bound"].as_str().unwrap() {
            "memory" => &memory["name"],
            _ => &c["compute"]["name"],
        };
        assert_eq!(limit, want, "{row}");
    }
}
