//! `backend_tests!`: one `#[test]` per behaviour of the suite, for one backend.

/// Instantiates the whole suite for one backend, as a module named `$name` holding one
/// `#[test]` per behaviour (so each failure is named).
///
/// ```ignore
/// moemla_testsuite::backend_tests!(cpu, || Ok(std::sync::Arc::new(moemla_cpu::CpuBackend::new())));
/// // A slow backend may run fewer proptest cases (env PROPTEST_CASES still overrides):
/// moemla_testsuite::backend_tests!(opencl, moemla_opencl::shared,
///     moemla_testsuite::SuiteConfig { proptest_cases: 8, ..Default::default() });
/// // A backend whose vendor ops cannot do some shapes skips on `Error::Unsupported`:
/// moemla_testsuite::backend_tests!(ascend, factory,
///     moemla_testsuite::SuiteConfig { allow_unsupported: true, ..Default::default() });
/// ```
///
/// The factory (`FnOnce() -> moemla_core::Result<Arc<dyn Backend>>`) is called once per
/// test binary and its backend shared by all tests. If it returns `Error::Unavailable`,
/// every test prints `skipped: <reason>` and passes, unless env `MOEMLA_REQUIRE` (comma
/// list) names `$name` or the error's backend: then every test fails with the reason.
#[macro_export]
macro_rules! backend_tests {
    ($name:ident, $factory:expr) => {
        $crate::backend_tests!($name, $factory, $crate::SuiteConfig::default());
    };
    ($name:ident, $factory:expr, $config:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            static SUITE: ::std::sync::OnceLock<$crate::Suite> = ::std::sync::OnceLock::new();

            fn suite() -> &'static $crate::Suite {
                SUITE.get_or_init(|| $crate::Suite::new(stringify!($name), $factory, $config))
            }

            $crate::__suite_tests!(suite);
        }
    };
}

/// The list of tests, the one registry of the suite: each entry is
/// `test_name: module::function(extra args);` and becomes `#[test] fn test_name()` calling
/// `moemla_testsuite::module::function(ctx, extra args)`. To add a behaviour, write a
/// `pub fn(ctx: &Ctx<'_>, ..)` that panics on failure and add one line here.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($suite:ident) => {
        $crate::__suite_tests!(@emit $suite run
            moe_route_v3_f32: cases::route::v3(F32);
            moe_route_v3_f16: cases::route::v3(F16);
            moe_route_v3_bf16: cases::route::v3(BF16);
            moe_route_v2_f32: cases::route::v2(F32);
            moe_route_v2_f16: cases::route::v2(F16);
            moe_route_v2_bf16: cases::route::v2(BF16);
            moe_route_v2_lite_f32: cases::route::v2_lite(F32);
            moe_route_v2_lite_f16: cases::route::v2_lite(F16);
            moe_route_v2_lite_bf16: cases::route::v2_lite(BF16);
            moe_route_small_groups_f32: cases::route::small_groups(F32);
            moe_route_small_groups_f16: cases::route::small_groups(F16);
            moe_route_small_groups_bf16: cases::route::small_groups(BF16);
            moe_route_top_k_equals_experts_f32: cases::route::top_k_equals_experts(F32);
            moe_route_top_k_equals_experts_bf16: cases::route::top_k_equals_experts(BF16);
            moe_route_renorm_all_zero_scores: cases::route::renorm_all_zero_scores();
            moe_route_nan_scores_rank_last: cases::route::nan_scores_rank_last();

            moe_experts_small_f32: cases::experts::small(F32);
            moe_experts_small_f16: cases::experts::small(F16);
            moe_experts_small_bf16: cases::experts::small(BF16);
            moe_experts_moderate_f32: cases::experts::moderate(F32);
            moe_experts_moderate_f16: cases::experts::moderate(F16);
            moe_experts_moderate_bf16: cases::experts::moderate(BF16);
            moe_experts_all_slots_empty_f32: cases::experts::all_slots_empty(F32);
            moe_experts_all_slots_empty_bf16: cases::experts::all_slots_empty(BF16);
            moe_experts_repeated_id_counts_twice_f32: cases::experts::repeated_id_counts_twice(F32);
            moe_experts_repeated_id_counts_twice_f16: cases::experts::repeated_id_counts_twice(F16);
            moe_experts_most_experts_idle_f32: cases::experts::most_experts_idle(F32);
            moe_experts_most_experts_idle_bf16: cases::experts::most_experts_idle(BF16);
            moe_experts_odd_sizes_f32: cases::experts::odd_sizes(F32);
            moe_experts_odd_sizes_f16: cases::experts::odd_sizes(F16);
            moe_experts_odd_sizes_bf16: cases::experts::odd_sizes(BF16);
            moe_experts_single_token_top8_f32: cases::experts::single_token_top8(F32);
            moe_experts_single_token_top8_f16: cases::experts::single_token_top8(F16);
            moe_experts_single_token_top8_bf16: cases::experts::single_token_top8(BF16);
            moe_experts_packed_weights_f32: cases::experts::packed_weights(F32);
            moe_experts_packed_weights_bf16: cases::experts::packed_weights(BF16);
            moe_experts_zero_weight_slot_ignores_nonfinite_expert: cases::experts::zero_weight_slot_ignores_nonfinite_expert();

            mla_decode_small_f32: cases::mla::small(F32);
            mla_decode_small_f16: cases::mla::small(F16);
            mla_decode_small_bf16: cases::mla::small(BF16);
            mla_decode_small_causal_grouped_heads_f32: cases::mla::small_causal_grouped_heads(F32);
            mla_decode_small_causal_grouped_heads_f16: cases::mla::small_causal_grouped_heads(F16);
            mla_decode_small_causal_grouped_heads_bf16: cases::mla::small_causal_grouped_heads(BF16);
            mla_decode_small_non_causal_multi_query_f32: cases::mla::small_non_causal_multi_query(F32);
            mla_decode_small_non_causal_multi_query_bf16: cases::mla::small_non_causal_multi_query(BF16);
            mla_decode_empty_ranges_f32: cases::mla::empty_ranges(F32);
            mla_decode_empty_ranges_f16: cases::mla::empty_ranges(F16);
            mla_decode_empty_ranges_bf16: cases::mla::empty_ranges(BF16);
            mla_decode_deepseek_hq16_sq1_block64_f32: cases::mla::deepseek(F32, 16, 1, 64);
            mla_decode_deepseek_hq16_sq1_block64_f16: cases::mla::deepseek(F16, 16, 1, 64);
            mla_decode_deepseek_hq16_sq1_block64_bf16: cases::mla::deepseek(BF16, 16, 1, 64);
            mla_decode_deepseek_hq16_sq2_block16_f32: cases::mla::deepseek(F32, 16, 2, 16);
            mla_decode_deepseek_hq16_sq2_block16_f16: cases::mla::deepseek(F16, 16, 2, 16);
            mla_decode_deepseek_hq16_sq2_block16_bf16: cases::mla::deepseek(BF16, 16, 2, 16);
            mla_decode_deepseek_hq128_sq1_block16_f32: cases::mla::deepseek(F32, 128, 1, 16);
            mla_decode_deepseek_hq128_sq1_block16_bf16: cases::mla::deepseek(BF16, 128, 1, 16);
            mla_decode_deepseek_hq128_sq2_block64_f32: cases::mla::deepseek(F32, 128, 2, 64);
            mla_decode_deepseek_hq128_sq2_block64_f16: cases::mla::deepseek(F16, 128, 2, 64);
            mla_decode_deepseek_hq128_sq2_block64_bf16: cases::mla::deepseek(BF16, 128, 2, 64);
            mla_decode_long_sequences_f32: cases::mla::long_sequences(F32);
            mla_decode_long_sequences_bf16: cases::mla::long_sequences(BF16);
            mla_decode_batch_with_block_boundaries_f32: cases::mla::batch_with_block_boundaries(F32);
            mla_decode_batch_with_block_boundaries_f16: cases::mla::batch_with_block_boundaries(F16);
            mla_decode_batch_with_block_boundaries_bf16: cases::mla::batch_with_block_boundaries(BF16);

            upload_download_round_trip_is_bit_exact: cases::tensors::upload_download_round_trip();
            alloc_zeroed_is_zero: cases::tensors::alloc_zeroed_is_zero();
            ops_leave_inputs_unchanged: cases::tensors::ops_leave_inputs_unchanged();
            info_is_consistent: cases::tensors::info_is_consistent();

            prop_moe_route_properties: props::route::properties();
            prop_moe_experts_linear_in_weights: props::experts::linear_in_weights();
            prop_moe_experts_masked_slots_contribute_nothing: props::experts::masked_slots_contribute_nothing();
            prop_mla_decode_block_permutation_invariant: props::mla::block_permutation_invariant();
            prop_mla_decode_nan_never_reaches_output: props::mla::nan_never_reaches_output();
            prop_mla_decode_output_in_convex_hull_of_values: props::mla::output_in_convex_hull_of_values();

            moe_route_rejects_bad_rank: errors::route::rank();
            moe_route_rejects_bad_dims: errors::route::dims();
            moe_route_rejects_bad_dtype: errors::route::dtype();
            moe_route_rejects_bad_top_k: errors::route::top_k();
            moe_route_rejects_bad_n_group: errors::route::n_group();
            moe_route_rejects_bad_topk_group: errors::route::topk_group();
            moe_route_rejects_non_finite_scaling_factor: errors::route::scaling_factor();
            moe_route_rejects_other_backends_tensors: errors::route::wrong_backend();
            moe_experts_rejects_bad_rank: errors::experts::rank();
            moe_experts_rejects_bad_dtype: errors::experts::dtype();
            moe_experts_rejects_bad_dims: errors::experts::dims();
            moe_experts_rejects_other_backends_tensors: errors::experts::wrong_backend();
            mla_decode_rejects_bad_rank: errors::mla::rank();
            mla_decode_rejects_bad_dtype: errors::mla::dtype();
            mla_decode_rejects_bad_dims: errors::mla::dims();
            mla_decode_rejects_hq_not_multiple_of_hkv: errors::mla::heads();
            mla_decode_rejects_bad_head_dim_v: errors::mla::head_dim_v();
            mla_decode_rejects_bad_softmax_scale: errors::mla::softmax_scale();
            mla_decode_rejects_other_backends_tensors: errors::mla::wrong_backend();
        );
        // Tests that leave an index error pending until their own synchronize run alone
        // (`Suite::run_alone`): where ops only enqueue, the error belongs to the backend, and
        // another test's download would take it.
        $crate::__suite_tests!(@emit $suite run_alone
            moe_experts_topk_id_above_range_is_index_error: errors::indices::topk_id_above_range();
            moe_experts_topk_id_below_minus_one_is_index_error: errors::indices::topk_id_below_minus_one();
            mla_decode_block_table_entry_out_of_range_is_index_error: errors::indices::block_table_entry_out_of_range();
            mla_decode_unused_block_table_entries_are_ignored: errors::indices::unused_block_table_entries_are_ignored();
            mla_decode_negative_seqlen_is_index_error: errors::indices::seqlen_negative();
            mla_decode_seqlen_above_capacity_is_index_error: errors::indices::seqlen_above_capacity();
            mla_decode_seqlens_checked_before_block_table: errors::indices::seqlens_checked_before_block_table();
            concurrent_calls_keep_index_errors_apart: errors::indices::concurrent_calls_keep_errors_apart();
        );
    };
    (@emit $suite:ident $run:ident $($test:ident: $($path:ident)::+ ($($arg:expr),*);)*) => {
        $(
            #[test]
            fn $test() {
                #[allow(unused_imports)]
                use $crate::__private::DType::*;
                $suite().$run(|ctx| $crate::$($path)::+(ctx $(, $arg)*));
            }
        )*
    };
}
