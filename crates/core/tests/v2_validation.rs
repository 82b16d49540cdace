//! Contract v2 bad input: one test per rule of "Bad input: what is an error and what is
//! data" for the v2 inputs, params and ops, each asserting the typed error (op, argument,
//! rule); the v2 capability gate (a backend that does not list a format never sees a call
//! using it, and bad input is reported before that check); and the shared host-side index
//! checks of `moemla_core::indices`, run from a stub backend's op methods.

mod common;

use common::{assert_reached, zeros};
use moemla_core::calls::{
    DsaIndexerTopkCall, DsaIndexerTopkOutput, MlaDecodeCall, MlaDecodeOutput, MlaKvQuantizeCall,
    MlaSparseDecodeCall, MoeExpertsCall, MoeRouteCall, MoeRouteOutput,
};
use moemla_core::ops::{self, ExpertsInputs, RouteInputs, SparseDecodeInputs};
use moemla_core::{
    indices, ActivationQuant, ActivationScale, Backend, BackendInfo, DType, DeviceTensor, Error,
    ExpertsParams, Format, GroupSelect, HostTensor, IndexerParams, KvFormat, KvQuantizeParams,
    MlaDecodeParams, Op, OpSupport, Result, RouteParams, ScoreFunc, SparseDecodeParams,
};

/// A backend that lists `supported`, runs the shared index checks on its inputs, and
/// otherwise answers every op with a `Device` error saying the call reached it.
struct Stub {
    supported: Vec<OpSupport>,
}

fn reached() -> Error {
    common::reached("stub")
}

fn host(t: &DeviceTensor) -> &HostTensor {
    common::host("stub", t)
}

fn i32s(t: &DeviceTensor) -> Vec<i32> {
    host(t).to_i32_vec().unwrap()
}

impl Backend for Stub {
    fn name(&self) -> &str {
        "stub"
    }
    fn info(&self) -> BackendInfo {
        common::info("stub", self.supported.clone())
    }
    common::host_memory!();
    fn moe_route(&self, call: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        if let Some(h) = call.hash {
            indices::check_hash_routing(call, &i32s(h.input_ids), &i32s(h.tid2eid))?;
        }
        Err(reached())
    }
    fn moe_experts(&self, _: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        Err(reached())
    }
    fn mla_decode(&self, _: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        Err(reached())
    }
    fn mla_kv_quantize(&self, call: &MlaKvQuantizeCall<'_>) -> Result<DeviceTensor> {
        indices::check_kv_finite(call, &host(call.kv).to_f32_vec()?)?;
        Err(reached())
    }
    fn mla_sparse_decode(&self, call: &MlaSparseDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        let lens = call.topk_length.map(i32s);
        indices::check_sparse_indices(call, &i32s(call.indices), lens.as_deref())?;
        Err(reached())
    }
    fn dsa_indexer_topk(&self, call: &DsaIndexerTopkCall<'_>) -> Result<DsaIndexerTopkOutput> {
        let (table, lens) = (i32s(call.block_table), i32s(call.cache_seqlens));
        indices::check_indexer_indices(call, &table, &lens)?;
        Err(reached())
    }
}

/// Everything v2 defines.
fn full() -> Stub {
    Stub {
        supported: OpSupport::all_v2(),
    }
}

/// A v1 backend: lists v1 only and keeps the default v2 op methods.
struct V1Only(Stub);

impl Backend for V1Only {
    fn name(&self) -> &str {
        "stub"
    }
    fn info(&self) -> BackendInfo {
        self.0.info()
    }
    common::host_memory!();
    fn moe_route(&self, c: &MoeRouteCall<'_>) -> Result<MoeRouteOutput> {
        self.0.moe_route(c)
    }
    fn moe_experts(&self, c: &MoeExpertsCall<'_>) -> Result<DeviceTensor> {
        self.0.moe_experts(c)
    }
    fn mla_decode(&self, c: &MlaDecodeCall<'_>) -> Result<MlaDecodeOutput> {
        self.0.mla_decode(c)
    }
}

fn v1() -> V1Only {
    V1Only(Stub {
        supported: OpSupport::all_v1(),
    })
}

fn ints(b: &dyn Backend, dims: &[usize], v: &[i32]) -> DeviceTensor {
    b.upload(&HostTensor::from_slice(dims, v).unwrap()).unwrap()
}

#[track_caller]
fn assert_dim<T: std::fmt::Debug>(r: Result<T>, want_arg: &str, want_dim: usize) {
    match r {
        Err(Error::Dim { arg, dim, .. }) if arg == want_arg && dim == want_dim => {}
        other => panic!("expected a Dim error on `{want_arg}` dim {want_dim}, got {other:?}"),
    }
}

#[track_caller]
fn assert_dtype<T: std::fmt::Debug>(r: Result<T>, want_arg: &str) {
    match r {
        Err(Error::DType { arg, .. }) if arg == want_arg => {}
        other => panic!("expected a DType error on `{want_arg}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_rank<T: std::fmt::Debug>(r: Result<T>, want_arg: &str) {
    match r {
        Err(Error::Rank { arg, .. }) if arg == want_arg => {}
        other => panic!("expected a Rank error on `{want_arg}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_param<T: std::fmt::Debug>(r: Result<T>, want: &str) {
    match r {
        Err(Error::Param { param, .. }) if param == want => {}
        other => panic!("expected a Param error on `{want}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_input<T: std::fmt::Debug>(r: Result<T>, want_arg: &str) {
    match r {
        Err(Error::Input { arg, .. }) if arg == want_arg => {}
        other => panic!("expected an Input error on `{want_arg}`, got {other:?}"),
    }
}

#[track_caller]
fn assert_index<T: std::fmt::Debug>(r: Result<T>, want_arg: &str, at: &[usize], value: i64) {
    match r {
        Err(Error::IndexOutOfRange {
            arg,
            index,
            value: v,
            ..
        }) if arg == want_arg && index == at && v == value => {}
        other => panic!("expected {want_arg}{at:?} = {value} out of range, got {other:?}"),
    }
}

#[track_caller]
fn assert_unsupported<T: std::fmt::Debug>(r: Result<T>, want_op: Op) {
    match r {
        Err(Error::Unsupported { op, .. }) if op == want_op => {}
        other => panic!("expected Unsupported {want_op}, got {other:?}"),
    }
}

// ---- moe_route -----------------------------------------------------------------------

fn hash_params() -> RouteParams {
    RouteParams {
        score_func: ScoreFunc::Sqrtsoftplus,
        top_k: 2,
        n_group: 1,
        topk_group: 1,
        group_select: GroupSelect::Max,
        renormalize: true,
        routed_scaling_factor: 1.5,
    }
}

/// T 3, E 8, vocab 4, top_k 2; `ids` and `table` as given.
fn route_hash(b: &dyn Backend, ids: &[i32], table: &[i32], p: &RouteParams) -> Result<()> {
    let logits = zeros(b, &[3, 8], DType::F32);
    let ids = ints(b, &[ids.len()], ids);
    let table = ints(b, &[table.len() / p.top_k, p.top_k], table);
    ops::moe_route_with(b, RouteInputs::new(&logits).with_hash(&ids, &table), p).map(drop)
}

const TABLE: [i32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];

#[test]
fn route_hash_tables_are_accepted_and_reach_the_backend() {
    assert_reached(route_hash(&full(), &[0, 3, 1], &TABLE, &hash_params()));
}

#[test]
fn route_input_ids_without_tid2eid_is_an_input_error() {
    let b = full();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let ids = ints(&b, &[3], &[0, 1, 2]);
    let mut inputs = RouteInputs::new(&logits);
    inputs.input_ids = Some(&ids);
    assert_input(ops::moe_route_with(&b, inputs, &hash_params()), "tid2eid");
}

#[test]
fn route_tid2eid_without_input_ids_is_an_input_error() {
    let b = full();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let table = ints(&b, &[4, 2], &TABLE);
    let mut inputs = RouteInputs::new(&logits);
    inputs.tid2eid = Some(&table);
    assert_input(ops::moe_route_with(&b, inputs, &hash_params()), "input_ids");
}

#[test]
fn route_bias_with_hash_routing_is_an_input_error() {
    let b = full();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let bias = zeros(&b, &[8], DType::F32);
    let (ids, table) = (ints(&b, &[3], &[0, 1, 2]), ints(&b, &[4, 2], &TABLE));
    let inputs = RouteInputs::new(&logits)
        .with_bias(&bias)
        .with_hash(&ids, &table);
    assert_input(ops::moe_route_with(&b, inputs, &hash_params()), "bias");
}

#[test]
fn route_hash_routing_needs_groups_1_1_max() {
    let b = full();
    let p = RouteParams {
        n_group: 2,
        topk_group: 1,
        ..hash_params()
    };
    assert_param(route_hash(&b, &[0, 1, 2], &TABLE, &p), "n_group");
    let p = RouteParams {
        n_group: 2,
        topk_group: 2,
        ..hash_params()
    };
    assert_param(route_hash(&b, &[0, 1, 2], &TABLE, &p), "n_group");
    let p = RouteParams {
        group_select: GroupSelect::Top2Sum,
        ..hash_params()
    };
    assert_param(route_hash(&b, &[0, 1, 2], &TABLE, &p), "group_select");
}

#[test]
fn route_hash_table_shapes_and_dtypes() {
    let b = full();
    let p = hash_params();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let table = ints(&b, &[4, 2], &TABLE);
    let ids = ints(&b, &[3], &[0, 1, 2]);
    let run = |ids: &DeviceTensor, table: &DeviceTensor| {
        ops::moe_route_with(&b, RouteInputs::new(&logits).with_hash(ids, table), &p).map(drop)
    };
    assert_dim(run(&ints(&b, &[2], &[0, 1]), &table), "input_ids", 0);
    assert_rank(run(&ints(&b, &[3, 1], &[0, 1, 2]), &table), "input_ids");
    assert_dtype(run(&zeros(&b, &[3], DType::F32), &table), "input_ids");
    assert_dim(run(&ids, &ints(&b, &[2, 4], &TABLE)), "tid2eid", 1);
    assert_dim(run(&ids, &zeros(&b, &[0, 2], DType::I32)), "tid2eid", 0);
    assert_rank(run(&ids, &ints(&b, &[8], &TABLE)), "tid2eid");
    assert_dtype(run(&ids, &zeros(&b, &[4, 2], DType::F32)), "tid2eid");
}

#[test]
fn route_top_k_below_1_is_a_param_error() {
    let b = full();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let p = RouteParams {
        top_k: 0,
        ..hash_params()
    };
    assert_param(ops::moe_route(&b, &logits, None, &p), "top_k");
}

#[test]
fn route_input_ids_outside_the_vocabulary_are_index_errors() {
    let b = full();
    let p = hash_params();
    assert_index(route_hash(&b, &[0, 4, 1], &TABLE, &p), "input_ids", &[1], 4);
    assert_index(
        route_hash(&b, &[-1, 0, 1], &TABLE, &p),
        "input_ids",
        &[0],
        -1,
    );
}

#[test]
fn route_read_table_rows_need_distinct_ids_in_range_unread_rows_are_not_checked() {
    let b = full();
    let p = hash_params();
    // Row 2 (read by token 1) holds expert 8 (E = 8).
    let table = [0, 1, 2, 3, 8, 5, 6, 7];
    assert_index(
        route_hash(&b, &[0, 2, 1], &table, &p),
        "tid2eid",
        &[2, 0],
        8,
    );
    // Row 3 repeats expert 6.
    let table = [0, 1, 2, 3, 4, 5, 6, 6];
    assert_index(
        route_hash(&b, &[3, 0, 0], &table, &p),
        "tid2eid",
        &[3, 1],
        6,
    );
    // Unread rows may hold anything (INT_MIN, duplicates, -1).
    let table = [0, 1, i32::MIN, -1, 5, 5, 6, 7];
    assert_reached(route_hash(&b, &[0, 3, 0], &table, &p));
}

#[test]
fn route_v2_variants_need_the_backend_to_list_them() {
    let b = v1();
    let logits = zeros(&b, &[3, 8], DType::F32);
    let plain = RouteParams {
        score_func: ScoreFunc::Sigmoid,
        ..hash_params()
    };
    assert_reached(ops::moe_route(&b, &logits, None, &plain));
    assert_unsupported(
        ops::moe_route(&b, &logits, None, &hash_params()),
        Op::MoeRoute,
    );
    assert_unsupported(route_hash(&b, &[0, 1, 2], &TABLE, &plain), Op::MoeRoute);
    // Bad input is reported before the capability check.
    let bad = RouteParams {
        n_group: 2,
        ..hash_params()
    };
    assert_param(route_hash(&b, &[0, 1, 2], &TABLE, &bad), "n_group");
    // A backend listing only sqrtsoftplus cannot be handed hash routing.
    let only = Stub {
        supported: vec![
            OpSupport::new(Op::MoeRoute, DType::F32),
            OpSupport::with_format(Op::MoeRoute, DType::F32, Format::Sqrtsoftplus),
        ],
    };
    assert_reached(ops::moe_route(&only, &logits, None, &hash_params()));
    assert_unsupported(
        route_hash(&only, &[0, 1, 2], &TABLE, &hash_params()),
        Op::MoeRoute,
    );
}

// ---- moe_experts ---------------------------------------------------------------------

/// T 2, H 200, I 96, E 3, k 2: w13 [3, 192, 200], w2 [3, 200, 96]; scales
/// [3, 2, 2] and [3, 2, 1].
struct Experts {
    x: DeviceTensor,
    w13: DeviceTensor,
    w2: DeviceTensor,
    ids: DeviceTensor,
    weights: DeviceTensor,
    w13_scale: DeviceTensor,
    w2_scale: DeviceTensor,
}

impl Experts {
    fn new(b: &dyn Backend, run: DType, weights: DType) -> Self {
        Experts {
            x: zeros(b, &[2, 200], run),
            w13: zeros(b, &[3, 192, 200], weights),
            w2: zeros(b, &[3, 200, 96], weights),
            ids: ints(b, &[2, 2], &[0, 1, 2, -1]),
            weights: zeros(b, &[2, 2], DType::F32),
            w13_scale: zeros(b, &[3, 2, 2], DType::F32),
            w2_scale: zeros(b, &[3, 2, 1], DType::F32),
        }
    }

    fn plain(&self) -> ExpertsInputs<'_> {
        ExpertsInputs::new(&self.x, &self.w13, &self.w2, &self.ids, &self.weights)
    }

    fn scaled(&self) -> ExpertsInputs<'_> {
        self.plain().with_scales(&self.w13_scale, &self.w2_scale)
    }
}

fn w8a8() -> ExpertsParams {
    ExpertsParams {
        activation_quant: ActivationQuant::Fp8Block128,
        activation_scale: ActivationScale::Ue8m0,
        swiglu_limit: Some(10.0),
    }
}

#[test]
fn experts_fp8_weights_with_scales_reach_the_backend() {
    let b = full();
    let e = Experts::new(&b, DType::BF16, DType::F8E4M3);
    assert_reached(ops::moe_experts_with(
        &b,
        e.scaled(),
        &ExpertsParams::default(),
    ));
    assert_reached(ops::moe_experts_with(&b, e.scaled(), &w8a8()));
    let dense = Experts::new(&b, DType::F16, DType::F16);
    let limit = ExpertsParams {
        swiglu_limit: Some(7.0),
        ..Default::default()
    };
    assert_reached(ops::moe_experts_with(&b, dense.plain(), &limit));
}

#[test]
fn experts_both_weights_fp8_or_neither() {
    let b = full();
    let e = Experts::new(&b, DType::BF16, DType::F8E4M3);
    let run_w2 = zeros(&b, &[3, 200, 96], DType::BF16);
    let mut a = e.scaled();
    a.w2 = &run_w2;
    assert_dtype(
        ops::moe_experts_with(&b, a, &ExpertsParams::default()),
        "w2",
    );
    let run_w13 = zeros(&b, &[3, 192, 200], DType::BF16);
    let mut a = e.scaled();
    a.w13 = &run_w13;
    assert_dtype(
        ops::moe_experts_with(&b, a, &ExpertsParams::default()),
        "w2",
    );
    let ints_w13 = zeros(&b, &[3, 192, 200], DType::I32);
    let mut a = e.scaled();
    a.w13 = &ints_w13;
    assert_dtype(
        ops::moe_experts_with(&b, a, &ExpertsParams::default()),
        "w13",
    );
}

#[test]
fn experts_fp8_weights_need_both_scales() {
    let b = full();
    let e = Experts::new(&b, DType::F32, DType::F8E4M3);
    let p = ExpertsParams::default();
    assert_input(ops::moe_experts_with(&b, e.plain(), &p), "w13_scale");
    let mut a = e.plain();
    a.w13_scale = Some(&e.w13_scale);
    assert_input(ops::moe_experts_with(&b, a, &p), "w2_scale");
    let mut a = e.plain();
    a.w2_scale = Some(&e.w2_scale);
    assert_input(ops::moe_experts_with(&b, a, &p), "w13_scale");
}

#[test]
fn experts_scales_with_run_dtype_weights_are_input_errors() {
    let b = full();
    let e = Experts::new(&b, DType::F32, DType::F32);
    let p = ExpertsParams::default();
    assert_input(ops::moe_experts_with(&b, e.scaled(), &p), "w13_scale");
    let mut a = e.plain();
    a.w2_scale = Some(&e.w2_scale);
    assert_input(ops::moe_experts_with(&b, a, &p), "w2_scale");
}

#[test]
fn experts_scale_shapes_count_partial_blocks() {
    let b = full();
    let e = Experts::new(&b, DType::BF16, DType::F8E4M3);
    let p = ExpertsParams::default();
    let run = |w13s: &DeviceTensor, w2s: &DeviceTensor| {
        ops::moe_experts_with(&b, e.plain().with_scales(w13s, w2s), &p).map(drop)
    };
    // 2I = 192 -> 2 row blocks; H = 200 -> 2 column blocks; I = 96 -> 1.
    assert_dim(
        run(&zeros(&b, &[3, 1, 2], DType::F32), &e.w2_scale),
        "w13_scale",
        1,
    );
    assert_dim(
        run(&zeros(&b, &[3, 2, 1], DType::F32), &e.w2_scale),
        "w13_scale",
        2,
    );
    assert_dim(
        run(&zeros(&b, &[2, 2, 2], DType::F32), &e.w2_scale),
        "w13_scale",
        0,
    );
    assert_dim(
        run(&e.w13_scale, &zeros(&b, &[3, 2, 2], DType::F32)),
        "w2_scale",
        2,
    );
    assert_dim(
        run(&e.w13_scale, &zeros(&b, &[3, 1, 1], DType::F32)),
        "w2_scale",
        1,
    );
    assert_rank(
        run(&zeros(&b, &[3, 4], DType::F32), &e.w2_scale),
        "w13_scale",
    );
    assert_dtype(
        run(&e.w13_scale, &zeros(&b, &[3, 2, 1], DType::BF16)),
        "w2_scale",
    );
}

#[test]
fn experts_fp8_block128_needs_fp8_weights() {
    let b = full();
    let e = Experts::new(&b, DType::BF16, DType::BF16);
    let p = ExpertsParams {
        activation_quant: ActivationQuant::Fp8Block128,
        ..Default::default()
    };
    assert_param(ops::moe_experts_with(&b, e.plain(), &p), "activation_quant");
    // activation_scale alone is ignored without fp8_block128.
    let p = ExpertsParams {
        activation_scale: ActivationScale::Ue8m0,
        ..Default::default()
    };
    assert_reached(ops::moe_experts_with(&b, e.plain(), &p));
}

#[test]
fn experts_swiglu_limit_must_be_finite_and_positive_in_f32() {
    let b = full();
    let e = Experts::new(&b, DType::F32, DType::F32);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 1e-50] {
        let p = ExpertsParams {
            swiglu_limit: Some(bad),
            ..Default::default()
        };
        assert_param(ops::moe_experts_with(&b, e.plain(), &p), "swiglu_limit");
    }
}

#[test]
fn experts_v2_variants_need_the_backend_to_list_them() {
    let b = v1();
    let fp8 = Experts::new(&b, DType::BF16, DType::F8E4M3);
    let dense = Experts::new(&b, DType::BF16, DType::BF16);
    let p = ExpertsParams::default();
    assert_reached(ops::moe_experts_with(&b, dense.plain(), &p));
    assert_unsupported(ops::moe_experts_with(&b, fp8.scaled(), &p), Op::MoeExperts);
    let limit = ExpertsParams {
        swiglu_limit: Some(10.0),
        ..Default::default()
    };
    assert_unsupported(
        ops::moe_experts_with(&b, dense.plain(), &limit),
        Op::MoeExperts,
    );
    // Bad input first: missing scales on a backend that supports no FP8 at all.
    assert_input(ops::moe_experts_with(&b, fp8.plain(), &p), "w13_scale");
    // w8a16 listed, w8a8 not.
    let w8a16 = Stub {
        supported: vec![
            OpSupport::new(Op::MoeExperts, DType::BF16),
            OpSupport::with_format(Op::MoeExperts, DType::BF16, Format::Fp8Weights),
        ],
    };
    assert_reached(ops::moe_experts_with(&w8a16, fp8.scaled(), &p));
    let a8 = ExpertsParams {
        activation_quant: ActivationQuant::Fp8Block128,
        ..Default::default()
    };
    assert_unsupported(
        ops::moe_experts_with(&w8a16, fp8.scaled(), &a8),
        Op::MoeExperts,
    );
}

// ---- mla_decode over the FP8 cache -----------------------------------------------------

fn fp8_mla() -> MlaDecodeParams {
    MlaDecodeParams {
        kv_format: KvFormat::Fp8DsV32,
        ..MlaDecodeParams::deepseek_v3()
    }
}

/// B 2, Sq 1, Hq 4; cache [3, 16, hkv, row] of `cache` dtype; q of `q` dtype, Dqk `dqk`.
fn mla(
    b: &dyn Backend,
    q: (DType, usize),
    cache: (DType, usize, usize),
    p: &MlaDecodeParams,
) -> Result<()> {
    let qt = zeros(b, &[2, 1, 4, q.1], q.0);
    let kv = zeros(b, &[3, 16, cache.1, cache.2], cache.0);
    let table = ints(b, &[2, 2], &[0, 1, 2, 0]);
    let lens = ints(b, &[2], &[20, 3]);
    ops::mla_decode(b, &qt, &kv, &table, &lens, p).map(drop)
}

#[test]
fn mla_fp8_cache_reaches_the_backend() {
    let b = full();
    for q in [DType::BF16, DType::F16] {
        assert_reached(mla(&b, (q, 576), (DType::U8, 1, 656), &fp8_mla()));
    }
}

#[test]
fn mla_fp8_cache_needs_16_bit_queries() {
    assert_dtype(
        mla(&full(), (DType::F32, 576), (DType::U8, 1, 656), &fp8_mla()),
        "q",
    );
}

#[test]
fn mla_fp8_cache_must_be_u8() {
    assert_dtype(
        mla(
            &full(),
            (DType::BF16, 576),
            (DType::BF16, 1, 656),
            &fp8_mla(),
        ),
        "kv_cache",
    );
}

#[test]
fn mla_fp8_cache_has_one_kv_head() {
    assert_dim(
        mla(&full(), (DType::BF16, 576), (DType::U8, 2, 656), &fp8_mla()),
        "kv_cache",
        2,
    );
}

#[test]
fn mla_fp8_cache_rows_are_656_bytes() {
    assert_dim(
        mla(&full(), (DType::BF16, 576), (DType::U8, 1, 576), &fp8_mla()),
        "kv_cache",
        3,
    );
}

#[test]
fn mla_fp8_cache_queries_are_576_wide() {
    assert_dim(
        mla(&full(), (DType::BF16, 512), (DType::U8, 1, 656), &fp8_mla()),
        "q",
        3,
    );
}

#[test]
fn mla_fp8_cache_has_dv_512() {
    let p = MlaDecodeParams {
        head_dim_v: 448,
        ..fp8_mla()
    };
    assert_param(
        mla(&full(), (DType::BF16, 576), (DType::U8, 1, 656), &p),
        "head_dim_v",
    );
}

#[test]
fn mla_dense_cache_of_bytes_is_a_dtype_error() {
    let p = MlaDecodeParams::deepseek_v3();
    assert_dtype(
        mla(&full(), (DType::BF16, 576), (DType::U8, 1, 576), &p),
        "kv_cache",
    );
}

#[test]
fn mla_fp8_cache_needs_the_backend_to_list_it() {
    let b = v1();
    assert_unsupported(
        mla(&b, (DType::BF16, 576), (DType::U8, 1, 656), &fp8_mla()),
        Op::MlaDecode,
    );
    assert_dtype(
        mla(&b, (DType::F32, 576), (DType::U8, 1, 656), &fp8_mla()),
        "q",
    );
}

// ---- mla_kv_quantize -------------------------------------------------------------------

fn quant() -> KvQuantizeParams {
    KvQuantizeParams {
        kv_format: KvFormat::Fp8DsV32,
    }
}

#[test]
fn kv_quantize_shapes_dtypes_and_format() {
    let b = full();
    assert_reached(ops::mla_kv_quantize(
        &b,
        &zeros(&b, &[3, 576], DType::BF16),
        &quant(),
    ));
    assert_dim(
        ops::mla_kv_quantize(&b, &zeros(&b, &[3, 575], DType::F32), &quant()),
        "kv",
        1,
    );
    assert_dim(
        ops::mla_kv_quantize(&b, &zeros(&b, &[0, 576], DType::F32), &quant()),
        "kv",
        0,
    );
    assert_rank(
        ops::mla_kv_quantize(&b, &zeros(&b, &[576], DType::F32), &quant()),
        "kv",
    );
    assert_dtype(
        ops::mla_kv_quantize(&b, &zeros(&b, &[3, 576], DType::I32), &quant()),
        "kv",
    );
    let dense = KvQuantizeParams {
        kv_format: KvFormat::Dense,
    };
    assert_param(
        ops::mla_kv_quantize(&b, &zeros(&b, &[3, 576], DType::F32), &dense),
        "kv_format",
    );
}

#[test]
fn kv_quantize_non_finite_values_name_the_first_bad_row() {
    let b = full();
    let mut v = vec![0.5f32; 3 * 576];
    v[576 + 100] = f32::INFINITY;
    v[2 * 576 + 3] = f32::NAN;
    let kv = b
        .upload(&HostTensor::from_slice([3, 576], &v).unwrap())
        .unwrap();
    match ops::mla_kv_quantize(&b, &kv, &quant()) {
        Err(Error::Input { op, arg, got, .. }) => {
            assert_eq!((op, arg), (Op::MlaKvQuantize, "kv"));
            assert!(got.contains("row 1") && got.contains("[1, 100]"), "{got}");
        }
        other => panic!("expected an Input error, got {other:?}"),
    }
}

#[test]
fn kv_quantize_is_unsupported_on_a_v1_backend() {
    let b = v1();
    let kv = zeros(&b, &[3, 576], DType::F32);
    assert_unsupported(ops::mla_kv_quantize(&b, &kv, &quant()), Op::MlaKvQuantize);
}

// ---- mla_sparse_decode -----------------------------------------------------------------

fn sparse_params() -> SparseDecodeParams {
    SparseDecodeParams {
        softmax_scale: 0.125,
        head_dim_v: 48,
        kv_format: KvFormat::Dense,
    }
}

/// B 2, Sq 3, Hq 4, Dqk 64, topk 5; cache [4, 16, 1, 64] F32 (64 slots).
struct Sparse {
    q: DeviceTensor,
    kv: DeviceTensor,
    indices: DeviceTensor,
    lens: DeviceTensor,
    sink: DeviceTensor,
}

impl Sparse {
    fn new(b: &dyn Backend, indices: &[i32], lens: &[i32]) -> Self {
        Sparse {
            q: zeros(b, &[2, 3, 4, 64], DType::F32),
            kv: zeros(b, &[4, 16, 1, 64], DType::F32),
            indices: ints(b, &[2, 3, 5], indices),
            lens: ints(b, &[2], lens),
            sink: zeros(b, &[4], DType::F32),
        }
    }

    fn inputs(&self) -> SparseDecodeInputs<'_> {
        SparseDecodeInputs::new(&self.q, &self.kv, &self.indices)
            .with_topk_length(&self.lens)
            .with_attn_sink(&self.sink)
    }
}

fn valid_indices() -> Vec<i32> {
    (0..30)
        .map(|i| if i % 7 == 3 { -1 } else { i * 2 })
        .collect()
}

#[test]
fn sparse_valid_call_reaches_the_backend() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    assert_reached(ops::mla_sparse_decode(&b, s.inputs(), &sparse_params()));
    let plain = SparseDecodeInputs::new(&s.q, &s.kv, &s.indices);
    assert_reached(ops::mla_sparse_decode(&b, plain, &sparse_params()));
}

#[test]
fn sparse_index_shapes_and_dtypes() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    let p = sparse_params();
    let with = |indices: &DeviceTensor| {
        let mut a = s.inputs();
        a.indices = indices;
        ops::mla_sparse_decode(&b, a, &p).map(drop)
    };
    assert_rank(with(&zeros(&b, &[2, 15], DType::I32)), "indices");
    assert_dtype(with(&zeros(&b, &[2, 3, 5], DType::F32)), "indices");
    assert_dim(with(&zeros(&b, &[1, 3, 5], DType::I32)), "indices", 0);
    assert_dim(with(&zeros(&b, &[2, 2, 5], DType::I32)), "indices", 1);
    assert_dim(with(&zeros(&b, &[2, 3, 0], DType::I32)), "indices", 2);
}

#[test]
fn sparse_topk_length_and_sink_shapes() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    let p = sparse_params();
    let lens = |t: &DeviceTensor| {
        let mut a = s.inputs();
        a.topk_length = Some(t);
        ops::mla_sparse_decode(&b, a, &p).map(drop)
    };
    assert_dim(lens(&ints(&b, &[3], &[1, 1, 1])), "topk_length", 0);
    assert_dtype(lens(&zeros(&b, &[2], DType::F32)), "topk_length");
    let sink = |t: &DeviceTensor| {
        let mut a = s.inputs();
        a.attn_sink = Some(t);
        ops::mla_sparse_decode(&b, a, &p).map(drop)
    };
    assert_dim(sink(&zeros(&b, &[3], DType::F32)), "attn_sink", 0);
    assert_dtype(sink(&zeros(&b, &[4], DType::BF16)), "attn_sink");
    assert_rank(sink(&zeros(&b, &[1, 4], DType::F32)), "attn_sink");
}

#[test]
fn sparse_dense_cache_has_one_head_and_dqk_of_q() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    let p = sparse_params();
    let with = |kv: &DeviceTensor| {
        let mut a = s.inputs();
        a.kv_cache = kv;
        ops::mla_sparse_decode(&b, a, &p).map(drop)
    };
    assert_dim(with(&zeros(&b, &[4, 16, 2, 64], DType::F32)), "kv_cache", 2);
    assert_dim(with(&zeros(&b, &[4, 16, 1, 32], DType::F32)), "kv_cache", 3);
    assert_dtype(with(&zeros(&b, &[4, 16, 1, 64], DType::BF16)), "kv_cache");
}

#[test]
fn sparse_softmax_scale_must_be_finite_and_positive_in_f32() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    for bad in [0.0, -0.5, f64::NAN, f64::INFINITY, 1e300, 1e-60] {
        let p = SparseDecodeParams {
            softmax_scale: bad,
            ..sparse_params()
        };
        assert_param(ops::mla_sparse_decode(&b, s.inputs(), &p), "softmax_scale");
    }
}

#[test]
fn sparse_head_dim_v_below_dqk() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 2]);
    for bad in [0, 64, 65] {
        let p = SparseDecodeParams {
            head_dim_v: bad,
            ..sparse_params()
        };
        assert_param(ops::mla_sparse_decode(&b, s.inputs(), &p), "head_dim_v");
    }
}

#[test]
fn sparse_fp8_cache_rules() {
    let b = full();
    let p = SparseDecodeParams::deepseek_v32();
    let idx = ints(&b, &[1, 1, 2], &[0, 5]);
    let q = zeros(&b, &[1, 1, 16, 576], DType::BF16);
    let kv = zeros(&b, &[2, 64, 1, 656], DType::U8);
    assert_reached(ops::mla_sparse_decode(
        &b,
        SparseDecodeInputs::new(&q, &kv, &idx),
        &p,
    ));
    let q32 = zeros(&b, &[1, 1, 16, 576], DType::F32);
    let r = ops::mla_sparse_decode(&b, SparseDecodeInputs::new(&q32, &kv, &idx), &p);
    assert_dtype(r, "q");
    let short = zeros(&b, &[2, 64, 1, 576], DType::U8);
    let r = ops::mla_sparse_decode(&b, SparseDecodeInputs::new(&q, &short, &idx), &p);
    assert_dim(r, "kv_cache", 3);
    let r = ops::mla_sparse_decode(&v1(), SparseDecodeInputs::new(&q, &kv, &idx), &p);
    assert_unsupported(r, Op::MlaSparseDecode);
}

#[test]
fn sparse_topk_length_outside_0_topk_is_an_index_error() {
    let b = full();
    let s = Sparse::new(&b, &valid_indices(), &[5, 6]);
    let r = ops::mla_sparse_decode(&b, s.inputs(), &sparse_params());
    assert_index(r, "topk_length", &[1], 6);
    let s = Sparse::new(&b, &valid_indices(), &[-1, 0]);
    let r = ops::mla_sparse_decode(&b, s.inputs(), &sparse_params());
    assert_index(r, "topk_length", &[0], -1);
}

#[test]
fn sparse_counted_entries_must_be_minus_1_or_a_slot_uncounted_ones_are_free() {
    let b = full();
    let p = sparse_params();
    // Slot 64 (= num_blocks * block_size) in batch 1, query 2, entry 1.
    let mut idx = valid_indices();
    idx[5 * 5 + 1] = 64;
    let s = Sparse::new(&b, &idx, &[5, 5]);
    assert_index(
        ops::mla_sparse_decode(&b, s.inputs(), &p),
        "indices",
        &[1, 2, 1],
        64,
    );
    idx[5 * 5 + 1] = -2;
    let s = Sparse::new(&b, &idx, &[5, 5]);
    assert_index(
        ops::mla_sparse_decode(&b, s.inputs(), &p),
        "indices",
        &[1, 2, 1],
        -2,
    );
    // Beyond topk_length (2 in batch 1): never looked at.
    idx[5 * 5 + 1] = 2_147_480_000;
    idx[5 * 5 + 4] = i32::MIN;
    let s = Sparse::new(&b, &idx, &[5, 1]);
    assert_reached(ops::mla_sparse_decode(&b, s.inputs(), &p));
}

// ---- dsa_indexer_topk ------------------------------------------------------------------

/// B 2, Sq 2, Hi 4, Di 32; k_cache [3, 16, 32]; tables and lengths as given.
struct Indexer {
    q: DeviceTensor,
    weights: DeviceTensor,
    k: DeviceTensor,
    table: DeviceTensor,
    lens: DeviceTensor,
}

impl Indexer {
    fn new(b: &dyn Backend, table: &[i32], lens: &[i32]) -> Self {
        Indexer {
            q: zeros(b, &[2, 2, 4, 32], DType::BF16),
            weights: zeros(b, &[2, 2, 4], DType::F32),
            k: zeros(b, &[3, 16, 32], DType::BF16),
            table: ints(b, &[2, 2], table),
            lens: ints(b, &[2], lens),
        }
    }

    fn run(&self, b: &dyn Backend, p: &IndexerParams) -> Result<()> {
        let (q, w, k, t, l) = (&self.q, &self.weights, &self.k, &self.table, &self.lens);
        ops::dsa_indexer_topk(b, q, w, k, t, l, p).map(drop)
    }
}

fn indexer_params() -> IndexerParams {
    IndexerParams {
        top_k: 8,
        causal: true,
    }
}

#[test]
fn indexer_valid_call_reaches_the_backend() {
    let b = full();
    let i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    assert_reached(i.run(&b, &indexer_params()));
    assert_unsupported(i.run(&v1(), &indexer_params()), Op::DsaIndexerTopk);
}

#[test]
fn indexer_top_k_below_1_is_a_param_error() {
    let b = full();
    let i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    let p = IndexerParams {
        top_k: 0,
        causal: false,
    };
    assert_param(i.run(&b, &p), "top_k");
}

#[test]
fn indexer_hi_and_di_must_agree() {
    let b = full();
    let p = indexer_params();
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.weights = zeros(&b, &[2, 2, 3], DType::F32);
    assert_dim(i.run(&b, &p), "weights", 2);
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.k = zeros(&b, &[3, 16, 16], DType::BF16);
    assert_dim(i.run(&b, &p), "k_cache", 2);
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.q = zeros(&b, &[2, 2, 0, 32], DType::BF16);
    assert_dim(i.run(&b, &p), "q", 2);
}

#[test]
fn indexer_shapes_and_dtypes() {
    let b = full();
    let p = indexer_params();
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.weights = zeros(&b, &[2, 2, 4], DType::BF16);
    assert_dtype(i.run(&b, &p), "weights");
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.k = zeros(&b, &[3, 16, 32], DType::F32);
    assert_dtype(i.run(&b, &p), "k_cache");
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.k = zeros(&b, &[3, 16, 1, 32], DType::BF16);
    assert_rank(i.run(&b, &p), "k_cache");
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.table = ints(&b, &[1, 2], &[0, 1]);
    assert_dim(i.run(&b, &p), "block_table", 0);
    let mut i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 5]);
    i.weights = zeros(&b, &[2, 1, 4], DType::F32);
    assert_dim(i.run(&b, &p), "weights", 1);
}

#[test]
fn indexer_block_table_and_lengths_follow_mla_index_rules() {
    let b = full();
    let p = indexer_params();
    // Batch 1 uses one block (length 5): entry 7 beyond it is never looked at (above);
    // with length 17 it is read and out of range.
    let i = Indexer::new(&b, &[2, 0, 1, 7], &[20, 17]);
    assert_index(i.run(&b, &p), "block_table", &[1, 1], 7);
    let i = Indexer::new(&b, &[2, 0, 1, 7], &[33, 5]);
    assert_index(i.run(&b, &p), "cache_seqlens", &[0], 33);
    let i = Indexer::new(&b, &[2, -1, 1, 7], &[20, 5]);
    assert_index(i.run(&b, &p), "block_table", &[0, 1], -1);
}

#[test]
fn all_v2_lists_every_format_where_the_contract_allows_it() {
    let all = OpSupport::all_v2();
    let info = BackendInfo {
        supported: all,
        ..full().info()
    };
    for op in Op::ALL {
        for dtype in DType::FLOATS {
            assert!(info.supports(op, dtype), "{op} {dtype}");
        }
    }
    assert!(info.supports_format(Op::MlaDecode, DType::BF16, Format::Fp8DsV32));
    assert!(!info.supports_format(Op::MlaDecode, DType::F32, Format::Fp8DsV32));
    assert!(info.supports_format(Op::MlaKvQuantize, DType::F32, Format::Fp8DsV32));
    assert!(info.supports_format(Op::MoeExperts, DType::F16, Format::Fp8Activations));
    assert!(!info.supports_format(Op::MoeRoute, DType::F16, Format::Fp8Weights));
    // The serde form of a plain entry is v1's (no `format` key).
    let json = serde_json::to_string(&OpSupport::new(Op::MoeRoute, DType::F32)).unwrap();
    assert_eq!(json, r#"{"op":"moe_route","dtype":"F32"}"#);
    let back: OpSupport = serde_json::from_str(&json).unwrap();
    assert_eq!(back.format, None);
}
