//! Every kernel the plans launch is an entry point of the module the backend loads it from,
//! and every entry point is defined in that module's source (no NVRTC needed).

use moemla_core::DType;
use moemla_cuda::nvrtc::Module;
use moemla_kernel_plan::mla::{self, MlaSizes};
use moemla_kernel_plan::{experts, route, DeviceLimits};

fn limits(tensor_cores: bool) -> DeviceLimits {
    DeviceLimits {
        compute_units: 132,
        warp_size: 32,
        max_shared_bytes: 227 * 1024,
        tensor_cores,
        max_grid: DeviceLimits::CUDA_GRID,
        max_grid_threads: u64::MAX,
    }
}

fn assert_in(module: Module, kernel: &str) {
    assert!(
        module.entry_points().iter().any(|e| e == kernel),
        "{kernel} is not an entry point of {}",
        module.file_name()
    );
}

#[test]
fn planned_kernels_are_entry_points_of_their_modules() {
    for dtype in DType::FLOATS {
        for tc in [false, true] {
            let l = route::plan(4, 64, 6, 8, dtype, &limits(tc)).unwrap();
            assert_in(Module::MoeRoute, &l.kernel);
            let p = experts::plan(4, 64, 32, 8, 2, dtype, &limits(tc)).unwrap();
            for l in &p.launches {
                assert_in(Module::MoeExperts, &l.kernel);
            }
            let s = MlaSizes {
                batch: 2,
                s_q: 1,
                h_q: 16,
                h_kv: 1,
                d_qk: 576,
                d_v: 512,
                num_blocks: 8,
                block_size: 64,
                max_blocks: 4,
            };
            let p = mla::plan(&s, dtype, &limits(tc)).unwrap();
            for l in &p.launches {
                assert_in(Module::MlaDecode, &l.kernel);
            }
        }
    }
}

#[test]
fn every_entry_point_is_defined_in_its_source() {
    for module in Module::ALL {
        let body = module.body();
        for entry in module.entry_points() {
            // Either written out or produced by the module's per-dtype macro.
            let (base, sfx) = entry.rsplit_once('_').unwrap();
            let direct = body.contains(&format!("void {entry}("));
            let via_macro = body.contains(&format!("void {base}_##SFX("))
                && body.contains(&format!("({sfx}, "));
            assert!(
                direct || via_macro,
                "{entry} not found in {}",
                module.file_name()
            );
        }
    }
}
