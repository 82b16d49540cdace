//! examples/engine_step.rs on cpu and opencl: after warm-up each step allocates nothing and
//! uploads nothing (`Backend::traffic`), reads only the ids and output rows it means to, and
//! gives exactly what the same step gives the old way (a host mirror of the cache uploaded
//! whole, fresh uploads, the allocating ops). OpenCL is skipped where it is unavailable,
//! unless `MOEMLA_REQUIRE` names it.

#[path = "../../../examples/engine_step.rs"]
mod engine_step;

use engine_step::{check_step_traffic, Engine, Mirror, Model, B, H, STEPS, TOP_K};
use moemla::core::{Backend, DType, Error, Traffic};
use std::sync::Arc;

/// Backend `name`, or `None` (skipped) when it is unavailable and not required.
fn open(name: &str) -> Option<Arc<dyn Backend>> {
    match moemla::select(Some(name)) {
        Ok(b) => Some(b),
        Err(e @ Error::Unavailable { .. }) => {
            let required = std::env::var("MOEMLA_REQUIRE")
                .is_ok_and(|v| v.split(',').any(|n| n.trim().eq_ignore_ascii_case(name)));
            assert!(!required, "{name} is required by MOEMLA_REQUIRE: {e}");
            println!("skipped: {e}");
            None
        }
        Err(e) => panic!("opening {name} failed: {e}"),
    }
}

/// Runs every step on `be`, checking each against the mirror and each step after the
/// first against the traffic rule; returns the per-step traffic.
fn run(be: Arc<dyn Backend>) -> Vec<Traffic> {
    let model = Model::new().unwrap();
    let mut engine = Engine::warm_up(be.clone(), &model).unwrap();
    let mut mirror = Mirror::new(&model).unwrap();
    let mut steps = Vec::new();
    let mut before = be.traffic().expect("the backend counts its traffic");
    for s in 0..STEPS {
        engine.step(s).unwrap();
        let now = be.traffic().unwrap();
        steps.push(now.since(&before));
        // The reference (it uploads and allocates: outside the counted window).
        let (ids, y) = mirror.step(&*be, &model, s).unwrap();
        before = be.traffic().unwrap();
        assert_eq!(engine.host_ids.to_i32_vec().unwrap(), ids, "step {s}: ids");
        assert_eq!(engine.host_y.dims(), &[B, H]);
        assert_eq!(engine.host_y.dtype(), DType::BF16);
        assert_eq!(engine.host_y.as_bytes(), y.as_bytes(), "step {s}: y");
    }
    // Every id names an expert (the top-k is full: no -1), and y is not all zero.
    let ids = engine.host_ids.to_i32_vec().unwrap();
    assert!(ids.len() == B * TOP_K && ids.iter().all(|&i| (0..16).contains(&i)));
    let y = engine.host_y.to_f32_vec().unwrap();
    assert!(y.iter().all(|v| v.is_finite()) && y.iter().any(|&v| v != 0.0));
    for (s, step) in steps.iter().enumerate().skip(1) {
        check_step_traffic(step).unwrap_or_else(|e| panic!("step {s}: {e}"));
        assert_eq!(step, &steps[1], "step {s}: every step moves the same");
    }
    steps
}

#[test]
fn cpu_steps_allocate_nothing_and_read_only_ids_and_output() {
    let Some(be) = open("cpu") else { return };
    let steps = run(be);
    // Exactly the two reads: ids (B x TOP_K I32) and y (B x H BF16).
    let want = Traffic {
        downloads: 2,
        download_bytes: (B * TOP_K * 4 + B * H * 2) as u64,
        ..Traffic::default()
    };
    assert_eq!(steps[1], want);
}

#[test]
fn opencl_steps_allocate_nothing_and_read_only_ids_output_and_error_flags() {
    let Some(be) = open("opencl") else { return };
    let steps = run(be);
    // The two reads, and the one read of the step's index-error flag words (8 bytes per
    // checked argument) that the first of them makes.
    let data = (B * TOP_K * 4 + B * H * 2) as u64;
    assert_eq!(steps[1].downloads, 3, "{}", steps[1]);
    let flags = steps[1].download_bytes - data;
    assert!(
        flags > 0 && flags.is_multiple_of(8) && flags <= 8 * 16,
        "{}",
        steps[1]
    );
}
