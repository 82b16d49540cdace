//! The kernel modules: one per `.cu` file of `kernels/cuda`, each compiled as the
//! portability header followed by the file (kernels/README.md), with its entry points.

/// The portability header, prepended to every module.
pub const DEVICE_HEADER: &str = include_str!("../../../kernels/common/moemla_device.h");

/// One kernel module (one `.cu` file under `kernels/cuda`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `moe_route.cu`: DeepSeek gating.
    MoeRoute,
    /// `moe_experts.cu`: align, gate-up + SwiGLU, down, combine.
    MoeExperts,
    /// `mla_decode.cu`: index check, split-KV decode, split combine (dense and sparse).
    MlaDecode,
    /// `mla_kv_quantize.cu`: rows to the 656-byte FP8 cache layout, and `mla_cache_write`
    /// (dense or FP8 rows into a paged cache in place, through the same row writer).
    MlaKvQuantize,
    /// `dsa_indexer_topk.cu`: the lightning indexer's scores and their top-k.
    DsaIndexerTopk,
}

impl Module {
    /// Every module.
    pub const ALL: [Module; 5] = [
        Module::MoeRoute,
        Module::MoeExperts,
        Module::MlaDecode,
        Module::MlaKvQuantize,
        Module::DsaIndexerTopk,
    ];

    /// The module's name (the file stem), as compile logs and caches name it.
    pub fn name(self) -> &'static str {
        match self {
            Module::MoeRoute => "moe_route",
            Module::MoeExperts => "moe_experts",
            Module::MlaDecode => "mla_decode",
            Module::MlaKvQuantize => "mla_kv_quantize",
            Module::DsaIndexerTopk => "dsa_indexer_topk",
        }
    }

    /// The file name under `kernels/cuda`.
    pub fn file_name(self) -> &'static str {
        match self {
            Module::MoeRoute => "moe_route.cu",
            Module::MoeExperts => "moe_experts.cu",
            Module::MlaDecode => "mla_decode.cu",
            Module::MlaKvQuantize => "mla_kv_quantize.cu",
            Module::DsaIndexerTopk => "dsa_indexer_topk.cu",
        }
    }

    /// The `.cu` text.
    pub fn body(self) -> &'static str {
        match self {
            Module::MoeRoute => include_str!("../../../kernels/cuda/moe_route.cu"),
            Module::MoeExperts => include_str!("../../../kernels/cuda/moe_experts.cu"),
            Module::MlaDecode => include_str!("../../../kernels/cuda/mla_decode.cu"),
            Module::MlaKvQuantize => include_str!("../../../kernels/cuda/mla_kv_quantize.cu"),
            Module::DsaIndexerTopk => include_str!("../../../kernels/cuda/dsa_indexer_topk.cu"),
        }
    }

    /// The `extern "C"` entry points the module defines.
    pub fn entry_points(self) -> &'static [&'static str] {
        match self {
            Module::MoeRoute => &[
                "moemla_moe_route_f32",
                "moemla_moe_route_f16",
                "moemla_moe_route_bf16",
                "moemla_moe_route_hash_resolve",
            ],
            Module::MoeExperts => &[
                "moemla_moe_align",
                "moemla_moe_gate_up_f32",
                "moemla_moe_gate_up_f16",
                "moemla_moe_gate_up_bf16",
                "moemla_moe_gate_up_w8a16_f32",
                "moemla_moe_gate_up_w8a16_f16",
                "moemla_moe_gate_up_w8a16_bf16",
                "moemla_moe_gate_up_w8a8_f32",
                "moemla_moe_gate_up_w8a8_f16",
                "moemla_moe_gate_up_w8a8_bf16",
                "moemla_moe_down_f32",
                "moemla_moe_down_f16",
                "moemla_moe_down_bf16",
                "moemla_moe_down_w8a16_f32",
                "moemla_moe_down_w8a16_f16",
                "moemla_moe_down_w8a16_bf16",
                "moemla_moe_down_w8a8_f32",
                "moemla_moe_down_w8a8_f16",
                "moemla_moe_down_w8a8_bf16",
                "moemla_moe_quant_f32",
                "moemla_moe_quant_f16",
                "moemla_moe_quant_bf16",
                "moemla_moe_combine_f32",
                "moemla_moe_combine_f16",
                "moemla_moe_combine_bf16",
                "moemla_moe_shared_rows",
                "moemla_moe_combine_shared_f32",
                "moemla_moe_combine_shared_f16",
                "moemla_moe_combine_shared_bf16",
            ],
            Module::MlaDecode => &[
                "moemla_mla_check",
                "moemla_mla_decode_f32",
                "moemla_mla_decode_f16",
                "moemla_mla_decode_bf16",
                "moemla_mla_decode_fp8_f32",
                "moemla_mla_decode_fp8_f16",
                "moemla_mla_decode_fp8_bf16",
                "moemla_mla_combine_f32",
                "moemla_mla_combine_f16",
                "moemla_mla_combine_bf16",
                "moemla_mla_sparse_check",
                "moemla_mla_sparse_decode_f32",
                "moemla_mla_sparse_decode_f16",
                "moemla_mla_sparse_decode_bf16",
                "moemla_mla_sparse_decode_fp8_f32",
                "moemla_mla_sparse_decode_fp8_f16",
                "moemla_mla_sparse_decode_fp8_bf16",
                "moemla_mla_sparse_combine_f32",
                "moemla_mla_sparse_combine_f16",
                "moemla_mla_sparse_combine_bf16",
            ],
            Module::MlaKvQuantize => &[
                "moemla_mla_kv_quantize_f32",
                "moemla_mla_kv_quantize_f16",
                "moemla_mla_kv_quantize_bf16",
                "moemla_mla_cache_write_dense",
                "moemla_mla_cache_write_fp8_f32",
                "moemla_mla_cache_write_fp8_f16",
                "moemla_mla_cache_write_fp8_bf16",
                "moemla_cache_winner_clear",
                "moemla_cache_winner_insert",
            ],
            Module::DsaIndexerTopk => &[
                "moemla_dsa_indexer_scores_f32",
                "moemla_dsa_indexer_scores_f16",
                "moemla_dsa_indexer_scores_bf16",
                "moemla_dsa_indexer_topk",
            ],
        }
    }

    /// The translation unit NVRTC / hipRTC compile: the header, then the module, with a
    /// `#line` so compiler messages name the `.cu` file and its own line numbers.
    pub fn source(self) -> String {
        format!(
            "{DEVICE_HEADER}\n#line 1 \"{}\"\n{}",
            self.file_name(),
            self.body()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::Module;
    use moemla_core::DType;
    use moemla_kernel_plan::dsa_indexer::{self, IndexerSizes};
    use moemla_kernel_plan::experts::Precision;
    use moemla_kernel_plan::mla::{self, MlaSizes};
    use moemla_kernel_plan::{cache_write, experts, kv_quantize, route, DeviceLimits};

    /// The decode kernel's tensor-core path runs only when launched with exactly
    /// `MOEMLA_MLA_THREADS` threads: the plan's block must be that number, or the path would
    /// switch off silently (the portable path gives the same numbers, so no golden fails).
    #[test]
    fn the_plans_decode_block_is_the_kernels_thread_count() {
        let line = Module::MlaDecode
            .body()
            .lines()
            .find_map(|l| l.strip_prefix("#define MOEMLA_MLA_THREADS "))
            .expect("mla_decode.cu defines MOEMLA_MLA_THREADS");
        assert_eq!(line.trim().parse::<u32>().unwrap(), mla::DECODE_BLOCK);
    }

    /// The limits of both APIs: CUDA (tensor cores on and off) and HIP (64-lane waves).
    fn devices() -> [DeviceLimits; 3] {
        [
            DeviceLimits::cuda(132, 227 * 1024, false),
            DeviceLimits::cuda(132, 227 * 1024, true),
            DeviceLimits::hip(304, 64, 64 * 1024),
        ]
    }

    fn assert_in(module: Module, kernel: &str) {
        assert!(
            module.entry_points().contains(&kernel),
            "{kernel} is not an entry point of {}",
            module.file_name()
        );
    }

    /// Every kernel a plan launches is an entry point of the module the runner loads it
    /// from, on every device kind and dtype.
    #[test]
    fn planned_kernels_are_entry_points_of_their_modules() {
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
        let indexer = IndexerSizes {
            batch: 2,
            s_q: 2,
            h_i: 64,
            d_i: 128,
            num_blocks: 8,
            block_size: 64,
            max_blocks: 4,
            top_k: 64,
        };
        for limits in devices() {
            for dtype in DType::FLOATS {
                let l = route::plan(4, 256, 8, 8, dtype, &limits).unwrap();
                assert_in(Module::MoeRoute, &l.kernel);
                for precision in [Precision::Native, Precision::W8A16, Precision::W8A8] {
                    let p = experts::plan_with(4, 7168, 2048, 256, 8, dtype, precision, &limits)
                        .unwrap();
                    for l in p.launches.iter().chain(&p.quant_x).chain(&p.quant_act) {
                        assert_in(Module::MoeExperts, &l.kernel);
                    }
                }
                let l = kv_quantize::plan(7, dtype, &limits).unwrap();
                assert_in(Module::MlaKvQuantize, &l.kernel);
                for fp8 in [false, true] {
                    let p = cache_write::plan(7, 576, dtype, fp8, 64, &limits).unwrap();
                    assert_in(Module::MlaKvQuantize, &p.launch.kernel);
                }
                let l = route::hash_resolve();
                assert_in(Module::MoeRoute, &l.kernel);
                let p = dsa_indexer::plan(&indexer, dtype, &limits).unwrap();
                assert_in(Module::MlaDecode, &p.launches[0].kernel);
                for l in &p.launches[1..] {
                    assert_in(Module::DsaIndexerTopk, &l.kernel);
                }
                for fp8 in [false, true] {
                    let p = mla::plan_with(&sizes, dtype, fp8, &limits).unwrap();
                    for l in &p.launches {
                        assert_in(Module::MlaDecode, &l.kernel);
                    }
                }
            }
        }
    }

    /// Every listed entry point is defined in its module's source, written out or through
    /// the module's per-dtype macro, and every `__global__` definition is listed.
    #[test]
    fn every_entry_point_is_defined_in_its_source_and_listed() {
        for module in Module::ALL {
            let body = module.body();
            for entry in module.entry_points() {
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
            let defined = body.matches("__global__ void ").count();
            let macros = body.matches("_##SFX(").count();
            let per_macro = 3; // f32, f16, bf16
            assert_eq!(
                defined - macros + macros * per_macro,
                module.entry_points().len(),
                "{}: entry points listed vs defined",
                module.file_name()
            );
        }
    }

    #[test]
    fn the_source_is_the_header_then_the_module() {
        let src = Module::MoeExperts.source();
        assert!(src.starts_with(super::DEVICE_HEADER));
        assert!(src.contains("#line 1 \"moe_experts.cu\"\n// moe_experts.cu"));
    }
}
