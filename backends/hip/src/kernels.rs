//! The kernel sources the backend compiles with hipRTC, embedded at build time.
//!
//! A module's source is the portability header followed by the shared CUDA/HIP kernel
//! file (the order `kernels/README.md` prescribes): exactly the text hipRTC receives.

/// The portability header shared with the CUDA backend.
pub const DEVICE_HEADER: &str = include_str!("../../../kernels/common/moemla_device.h");

/// Declarations of the HIP device built-ins hipRTC provides implicitly, for compiling the
/// same sources offline with `clang -x hip -nogpuinc -nogpulib` (CI). Never given to hipRTC.
pub const OFFLINE_SHIM: &str = include_str!("../../../kernels/hip/moemla_hip_offline.h");

/// One kernel module: a `.cu` file of `kernels/cuda`.
#[derive(Clone, Copy, Debug)]
pub struct KernelModule {
    /// Module name (the file stem), the key of the module cache.
    pub name: &'static str,
    /// The file's text (without the header).
    pub kernels: &'static str,
    /// Every `extern "C"` entry point it defines.
    pub entry_points: &'static [&'static str],
}

impl KernelModule {
    /// The complete translation unit: header, then kernels.
    pub fn source(&self) -> String {
        format!("{DEVICE_HEADER}\n{}", self.kernels)
    }
}

/// DeepSeek gating (`moe_route`).
pub const MOE_ROUTE: KernelModule = KernelModule {
    name: "moe_route",
    kernels: include_str!("../../../kernels/cuda/moe_route.cu"),
    entry_points: &[
        "moemla_moe_route_f32",
        "moemla_moe_route_f16",
        "moemla_moe_route_bf16",
    ],
};

/// Fused routed experts (`moe_experts`): align, gate-up + SwiGLU, down, combine.
pub const MOE_EXPERTS: KernelModule = KernelModule {
    name: "moe_experts",
    kernels: include_str!("../../../kernels/cuda/moe_experts.cu"),
    entry_points: &[
        "moemla_moe_align",
        "moemla_moe_gate_up_f32",
        "moemla_moe_gate_up_f16",
        "moemla_moe_gate_up_bf16",
        "moemla_moe_down_f32",
        "moemla_moe_down_f16",
        "moemla_moe_down_bf16",
        "moemla_moe_combine_f32",
        "moemla_moe_combine_f16",
        "moemla_moe_combine_bf16",
    ],
};

/// MLA decode (`mla_decode`): index check, split-KV decode, split combine.
pub const MLA_DECODE: KernelModule = KernelModule {
    name: "mla_decode",
    kernels: include_str!("../../../kernels/cuda/mla_decode.cu"),
    entry_points: &[
        "moemla_mla_check",
        "moemla_mla_decode_f32",
        "moemla_mla_decode_f16",
        "moemla_mla_decode_bf16",
        "moemla_mla_combine_f32",
        "moemla_mla_combine_f16",
        "moemla_mla_combine_bf16",
    ],
};

/// Every kernel module.
pub const SOURCES: &[KernelModule] = &[MOE_ROUTE, MOE_EXPERTS, MLA_DECODE];

#[cfg(test)]
mod tests {
    use super::{MLA_DECODE, MOE_EXPERTS, MOE_ROUTE};
    use moemla_core::DType;
    use moemla_kernel_plan::mla::MlaSizes;
    use moemla_kernel_plan::{experts, mla, route, DeviceLimits};

    /// Every kernel a plan launches is an entry point of the module the op loads.
    #[test]
    fn planned_kernels_are_listed_entry_points() {
        let limits = DeviceLimits {
            compute_units: 304,
            warp_size: 64,
            max_shared_bytes: 65536,
            tensor_cores: false,
            max_grid: DeviceLimits::HIP_GRID,
            max_grid_threads: DeviceLimits::HIP_GRID_THREADS,
        };
        let sizes = MlaSizes {
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
        for dtype in DType::FLOATS {
            let l = route::plan(4, 256, 8, 8, dtype, &limits).unwrap();
            assert!(
                MOE_ROUTE.entry_points.contains(&l.kernel.as_str()),
                "{}",
                l.kernel
            );
            let p = experts::plan(4, 7168, 2048, 256, 8, dtype, &limits).unwrap();
            for l in &p.launches {
                assert!(
                    MOE_EXPERTS.entry_points.contains(&l.kernel.as_str()),
                    "{}",
                    l.kernel
                );
            }
            let p = mla::plan(&sizes, dtype, &limits).unwrap();
            for l in &p.launches {
                assert!(
                    MLA_DECODE.entry_points.contains(&l.kernel.as_str()),
                    "{}",
                    l.kernel
                );
            }
        }
    }
}
