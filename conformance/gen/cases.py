"""The case lists. Each entry is (op, dtype, name) and a zero-argument builder.

Set "v1" is the committed conformance/golden set (contract v1); set "v2" holds the cases of
the "Contract v2 additions" (not committed until the Rust runner reads them); "all" is both.
"""

import math

import cachewrite
import experts
import indexer
import kvquant
import mla
import route
import sparse

DTYPES = ("f32", "f16", "bf16")

# DeepSeek routing configurations (config.json of each model).
V3 = {"score_func": "sigmoid", "top_k": 8, "n_group": 8, "topk_group": 4, "group_select": "top2_sum", "renormalize": True, "routed_scaling_factor": 2.5}
V2 = {"score_func": "softmax", "top_k": 6, "n_group": 8, "topk_group": 3, "group_select": "max", "renormalize": False, "routed_scaling_factor": 16.0}
V2_LITE = {"score_func": "softmax", "top_k": 6, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": False, "routed_scaling_factor": 1.0}
SIGMOID_MAX = {"score_func": "sigmoid", "top_k": 3, "n_group": 4, "topk_group": 2, "group_select": "max", "renormalize": True, "routed_scaling_factor": 1.5}
SOFTMAX_TOP2 = {"score_func": "softmax", "top_k": 4, "n_group": 6, "topk_group": 2, "group_select": "top2_sum", "renormalize": True, "routed_scaling_factor": 1.0}
SIGMOID_TOP1 = {"score_func": "sigmoid", "top_k": 1, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": False, "routed_scaling_factor": 1.0}


def _route_cases(dtype):
    def c(name, desc, tokens, n_experts, params, logit_std, bias_std=None):
        return (name, lambda: route.build(dtype, name, desc, tokens, n_experts, params, logit_std, bias_std))

    return [
        c("v3_t33", "DeepSeek-V3 gate, 33 tokens: sigmoid + bias, 8 groups keep 4 by top-2 sum, top-8, renormalised, x2.5", 33, 256, V3, 1.5, 0.1),
        c("v3_t1", "DeepSeek-V3 gate, one token", 1, 256, V3, 1.5, 0.1),
        c("v2_t33", "DeepSeek-V2 gate, 33 tokens: softmax, 8 groups keep 3 by max, top-6, no renorm, x16", 33, 160, V2, 1.5),
        c("v2_t1", "DeepSeek-V2 gate, one token", 1, 160, V2, 1.5),
        c("v2lite_t33", "DeepSeek-V2-Lite gate, 33 tokens: softmax over 64, no groups, top-6, no renorm", 33, 64, V2_LITE, 2.0),
        c("v2lite_t1", "DeepSeek-V2-Lite gate, one token", 1, 64, V2_LITE, 2.0),
        c("e20_sigmoid_max_t7", "20 experts, sigmoid + bias, 4 groups keep 2 by max, top-3, renormalised, x1.5", 7, 20, SIGMOID_MAX, 1.5, 0.2),
        c("e48_softmax_bias_top2sum_t5", "48 experts, softmax + bias, 6 groups keep 2 by top-2 sum, top-4, renormalised", 5, 48, SOFTMAX_TOP2, 1.5, 0.02),
        c("e32_sigmoid_top1_t9", "32 experts, sigmoid, no groups, top-1, no renorm", 9, 32, SIGMOID_TOP1, 1.5),
    ]


def _experts_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: experts.build(dtype, name, desc, *args, **kw))

    cases = [
        c("t5_h64_i32_e4_k2", "small: 5 tokens, H 64, I 32, 4 experts, top-2", 5, 64, 32, 4, 2),
        c(
            "t33_h96_i48_e8_k3_edges",
            "33 tokens, 8 experts, top-3: expert 2 picked by every token, expert 7 by none, -1 ids (token 4 has none at all)",
            33, 96, 48, 8, 3, unused=7, hot=2, empty_slots=((0, 2), (4, 0), (4, 1), (4, 2), (10, 1), (32, 0)),
        ),
        c("t1_h128_i48_e6_k6", "one token, 6 experts all picked but one slot -1 (top-6 like V2-Lite)", 1, 128, 48, 6, 6, empty_slots=((0, 3),)),
        c("t9_h32_i16_e64_k6", "V2-Lite's 64 experts, top-6, 9 tokens: most experts see one token or none", 9, 32, 16, 64, 6),
        c("t6_h2048_i32_e2_k2", "V2-Lite hidden size 2048 (inter reduced to 32), 6 tokens, 2 experts", 6, 2048, 32, 2, 2, empty_slots=((5, 1),)),
        c("t3_h32_i1408_e2_k2", "V2-Lite moe_intermediate_size 1408 (hidden reduced to 32), 3 tokens", 3, 32, 1408, 2, 2),
    ]
    return cases


def _mla_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: mla.build(dtype, name, desc, *args, **kw))

    s64, s40 = 1 / math.sqrt(64), 1 / math.sqrt(40)
    v3 = mla.DEEPSEEK_V3_SOFTMAX_SCALE
    cases = [
        c("d64_v48_b3_sq1_h1_blk16", "Hq 1, seqlens 0/17/40 (an empty sequence), block 16", [0, 17, 40], 1, 1, 64, 48, 16, True, s64),
        c("d64_v48_b4_sq2_h16_causal_blk16", "Sq 2 causal, seqlens 1/33/0/16 (seqlen < Sq: empty first query)", [1, 33, 0, 16], 2, 16, 64, 48, 16, True, s64),
        c("d40_v32_b3_sq4_h8_causal_blk64", "Sq 4 causal, seqlens 2/70/4, block 64", [2, 70, 4], 4, 8, 40, 32, 64, True, s40),
        c("d40_v32_b2_sq4_h4_noncausal_blk128", "Sq 4 non-causal, seqlens 130/3, block 128", [130, 3], 4, 4, 40, 32, 128, False, s40),
        c("d64_v48_b2_sq2_h4_hkv2_causal_blk16", "Hkv 2 (head h uses kv head h / 2), Sq 2 causal", [20, 9], 2, 4, 64, 48, 16, True, s64, h_kv=2),
        c("d40_v32_b2_sq1_h128_blk16", "Hq 128 with small head dims, seqlens 25/7", [25, 7], 1, 128, 40, 32, 16, True, s40, extra_blocks=2),
        c("v3_b4_sq2_h16_causal_blk64", "DeepSeek-V3 dims 576/512, Sq 2 causal, seqlens 1/100/0/40, block 64", [1, 100, 0, 40], 2, 16, 576, 512, 64, True, v3, kv_std=0.5),
    ]
    if dtype != "f32":
        cases += [
            c("v3_b2_sq1_h128_blk64", "DeepSeek-V3 dims, Hq 128, seqlens 150/64, block 64", [150, 64], 1, 128, 576, 512, 64, True, v3, kv_std=0.5),
            c("v3_b2_sq4_h8_causal_blk128", "DeepSeek-V3 dims, Sq 4 causal, seqlens 3/200, block 128", [3, 200], 4, 8, 576, 512, 128, True, v3, kv_std=0.5),
            c("v3_b2_sq2_h4_noncausal_blk16", "DeepSeek-V3 dims, Sq 2 non-causal, seqlens 40/5, block 16", [40, 5], 2, 4, 576, 512, 16, False, v3, kv_std=0.5),
        ]
    return cases


# ---- contract v2 --------------------------------------------------------------------------

# DeepSeek-V4-like gate: sqrt(softplus) scores, 256 experts, top-6, no groups, x1.5.
V4 = {"score_func": "sqrtsoftplus", "top_k": 6, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": True, "routed_scaling_factor": 1.5}
SQRTSOFTPLUS_GROUPS = {"score_func": "sqrtsoftplus", "top_k": 3, "n_group": 4, "topk_group": 2, "group_select": "top2_sum", "renormalize": True, "routed_scaling_factor": 2.0}
SIGMOID_RENORM = {"score_func": "sigmoid", "top_k": 4, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": True, "routed_scaling_factor": 1.0}
SQRTSOFTPLUS_PLAIN = {"score_func": "sqrtsoftplus", "top_k": 2, "n_group": 1, "topk_group": 1, "group_select": "max", "renormalize": False, "routed_scaling_factor": 2.0}

W8A16 = {"activation_quant": "none"}
W8A8_F32 = {"activation_quant": "fp8_block128", "activation_scale": "f32"}
W8A8_UE8M0 = {"activation_quant": "fp8_block128", "activation_scale": "ue8m0"}


def _route_v2_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: route.build_v2(dtype, name, desc, *args, **kw))

    return [
        c("v4_sqrtsoftplus_t33", "DeepSeek-V4-like gate, 33 tokens: sqrt(softplus) + bias, 256 experts, top-6, renormalised, x1.5", 33, 256, V4, 1.5, 0.05),
        c("v4_sqrtsoftplus_t1", "DeepSeek-V4-like gate, one token", 1, 256, V4, 1.5, 0.05),
        c(
            "v4_hash_t17_vocab40",
            "V4 hash routing: ids = tid2eid[input_ids] (tokens 0 and 16 read the same row; the 3 rows no token reads hold -1, 2147480000, INT_MIN and duplicates: not checked), sqrt(softplus) weights renormalised x1.5",
            17, 256, V4, 1.5, hash_vocab=40,
        ),
        c("hash_zero_rows_t5_vocab8", "hash routing with token 2's logits all -1000: renormalisation by max(sum, 1e-20) gives weights 0", 5, 32, dict(V4, top_k=3), 1.5, zero_rows=(2,), hash_vocab=8),
        c("sigmoid_renorm_zero_rows_t6", "sigmoid + bias, top-4, renormalised: tokens 1 and 4 have all logits -1000 (scores 0): weights exactly 0, ids from the bias", 6, 32, SIGMOID_RENORM, 1.5, 0.1, zero_rows=(1, 4)),
        c("e16_sqrtsoftplus_groups_zero_row_t5", "sqrt(softplus) + bias, 4 groups keep 2 by top-2 sum, top-3: token 2 all -1000 (weights 0, groups and ids from the bias)", 5, 16, SQRTSOFTPLUS_GROUPS, 1.5, 0.1, zero_rows=(2,)),
        c("e64_sqrtsoftplus_norenorm_t7", "sqrt(softplus), no bias, top-2 of 64, not renormalised, x2, wide logits (std 6)", 7, 64, SQRTSOFTPLUS_PLAIN, 6.0),
    ]


def _experts_v2_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: experts.build_v2(dtype, name, desc, *args, **kw))

    return [
        c("fp8_w8a16_t5_h256_i128_e2_k2", "FP8 weights, 128-aligned (2x2 w13 blocks), w8a16 (explicit activation_quant none, swiglu_limit null)", 5, 256, 128, 2, 2, dict(W8A16, swiglu_limit=None)),
        c(
            "fp8_w8a16_t7_h200_i96_e3_k2_partial",
            "FP8 w8a16 with params {}: H 200 and I 96 (partial blocks; w13's first block row straddles W1/W3), a -1 id and a -0.0 weight slot",
            7, 200, 96, 3, 2, {}, empty_slots=((1, 1),), zero_weight_slots=((2, 0),),
        ),
        c("fp8_w8a8_f32_t9_h200_i160_e4_k3", "FP8 w8a8, f32 activation scales: x and the activation quantized per 128 (partial last groups), w13 block row 1 straddles W1/W3", 9, 200, 160, 4, 3, W8A8_F32, w2_gain=0.5),
        c("fp8_w8a8_ue8m0_t9_h200_i160_e4_k3", "FP8 w8a8 with UE8M0 (power-of-two) activation scales", 9, 200, 160, 4, 3, W8A8_UE8M0, w2_gain=0.5),
        c("fp8_w8a16_swiglu10_t6_h256_i160_e3_k2", "FP8 w8a16 with swiglu_limit 10 (V4) that bites: large activations", 6, 256, 160, 3, 2, {"swiglu_limit": 10.0}, x_std=6.0, w2_gain=0.05),
        c("fp8_w8a8_ue8m0_swiglu10_t8_h256_i256_e3_k2", "FP8 w8a8 UE8M0 with swiglu_limit 10 (V4-like)", 8, 256, 256, 3, 2, dict(W8A8_UE8M0, swiglu_limit=10.0), x_std=10.0, w2_gain=0.012),
        c(
            "fp8_w8a16_wue8m0_t24_h256_i128_e2_k2",
            "FP8 w8a16 with UE8M0 (power-of-two) weight block scales, as DeepSeek-V3.1's checkpoints, differing from block to block: 24 tokens per expert",
            24, 256, 128, 2, 2, W8A16, weight_scales="ue8m0",
        ),
        c(
            "fp8_w8a8_ue8m0_wue8m0_t9_h256_i128_e2_k2",
            "FP8 w8a8, UE8M0 weight (differing from block to block) and activation scales (DeepSeek-V3.1), 9 tokens per expert",
            9, 256, 128, 2, 2, W8A8_UE8M0, weight_scales="ue8m0",
        ),
        c("dense_swiglu7_t5_h64_i32_e4_k2", "run-dtype weights with swiglu_limit 7 (clamp without FP8)", 5, 64, 32, 4, 2, {"swiglu_limit": 7.0}, fp8_weights=False, x_std=5.0, w2_gain=0.1),
    ] + _experts_shared_cases(dtype)


def _experts_shared_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: experts.build_shared(dtype, name, desc, *args, **kw))

    # args: tokens, hidden, inter, experts, top_k, shared, shared_inter
    return [
        c("shared1_t6_h64_i32_e6_k2_is48", "one shared expert (Is 48 != I 32, as DeepSeek-V3's single shared MLP), every routed slot used", 6, 64, 32, 6, 2, 1, 48),
        c(
            "shared2_t7_h64_i24_e5_k3_is40_empty",
            "two shared experts (Is 40, I 24, as DeepSeek-V2's n_shared_experts 2), -1 slots, token 3 with every slot -1 (gets the shared output alone)",
            7, 64, 24, 5, 3, 2, 40, empty_slots=((0, 2), (5, 1)), no_expert_tokens=(3,),
        ),
        c(
            "shared1_swiglu7_t5_h64_i32_e4_k2_is16",
            "one shared expert (Is 16) with swiglu_limit 7: the clamp applies to routed and shared experts alike; token 4 has no routed expert",
            5, 64, 32, 4, 2, 1, 16, {"swiglu_limit": 7.0}, x_std=5.0, w2_gain=0.1, no_expert_tokens=(4,),
        ),
    ]


def _kvquant_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: kvquant.build(dtype, name, desc, *args, **kw))

    return [
        c(
            "n40_corners",
            "designed rows (all-zero and -0.0 tiles, 1e-3 and 1e3 tiles, the 1e-4 scale floor, exact e4m3 ties, exact power-of-two amax"
            + (", amax/448 = 2^k(1+2^-23)" if dtype == "f32" else "")
            + ") + 40 random rows with tile magnitudes 1e-3..1e3",
            40,
        ),
        c("n200_random", "the designed rows + 200 random rows (heavy-tailed values, tile magnitudes 1e-3..1e3)", 200),
    ]


def _mla_v2_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: mla.build_fp8(dtype, name, desc, *args, **kw))

    v3 = mla.DEEPSEEK_V3_SOFTMAX_SCALE
    return [
        c("fp8_b3_sq1_h16_blk64", "FP8 cache (non-power-of-two scales, unused slots 0xFF), Hq 16, seqlens 0/100/37, block 64", [0, 100, 37], 1, 16, 64, True, v3),
        c("fp8_b2_sq2_h32_causal_blk64", "FP8 cache, Hq 32, Sq 2 causal, seqlens 1/130 (an empty first query)", [1, 130], 2, 32, 64, True, v3),
        c("fp8_b2_sq4_h4_noncausal_blk16", "FP8 cache, Sq 4 non-causal, seqlens 40/5, block 16", [40, 5], 4, 4, 16, False, v3),
    ]


def _sparse_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: sparse.build(dtype, name, desc, *args, **kw))

    v3 = mla.DEEPSEEK_V3_SOFTMAX_SCALE
    inf = math.inf
    cases = [
        c(
            "d64_v48_b3_sq2_h8_topk32_edges",
            "dense 64/48: -1 entries, duplicated indices, topk_length 32/20/0 (batch 2 empty; ignored entries hold out-of-range values and NaN slots), row (0,1) with no valid entry, sinks finite / -inf (head 1) / +inf (head 3)",
            [80, 50, 70], 2, 8, 32, 64, 48, 1 / 8,
            block_size=16, minus_one=0.15, duplicates=0.1, topk_length=[32, 20, 0], no_valid=((0, 1),),
            sink=["finite", -inf, "finite", inf, "finite", "finite", "finite", "finite"], explicit_format=False,
        ),
        c("d64_v48_b2_sq1_h4_topk8_plain", "dense 64/48, no optional inputs, kv_format omitted (default dense)", [40, 12], 1, 4, 8, 64, 48, 1 / 8, block_size=16, explicit_format=False),
        c(
            "d64_v48_prefill_b1_sq64_h16_topk64",
            "prefill-like: B 1, Sq 64, query i sees positions [0, 16 + i] (the first 47 queries have fewer than 64: -1 padding), finite sinks",
            [80], 64, 16, 64, 64, 48, 1 / 8, block_size=16, prefill_ctx=16, sink=["finite"] * 16, explicit_format=False,
        ),
        c("v32_dense_b2_sq1_h16_topk64", "DeepSeek dims 576/512 over a dense run-dtype cache, -1 entries, topk_length 64/50", [100, 70], 1, 16, 64, 576, 512, v3, minus_one=0.05, topk_length=[64, 50], kv_std=0.5),
    ]
    if dtype == "f32":
        return cases
    fp8 = dict(kv_format=mla.FP8_FORMAT, kv_std=0.5)
    cases += [
        c(
            "v32_fp8_b3_sq2_h16_topk64_edges",
            "FP8 cache, MTP Sq 2, Hq 16: -1 entries, duplicates, topk_length 64/40/64, row (2,1) with no valid entry, sinks finite / -inf",
            [150, 90, 64], 2, 16, 64, 576, 512, v3, minus_one=0.1, duplicates=0.05, topk_length=[64, 40, 64], no_valid=((2, 1),), sink=["finite", -inf] * 8, **fp8,
        ),
    ]
    if dtype == "bf16":
        cases += [
            c("v32_fp8_b2_sq1_h128_topk256", "FP8 cache, Hq 128, topk 256", [300, 280], 1, 128, 256, 576, 512, v3, **fp8),
            c("v32_fp8_b1_sq1_h64_topk2048", "FP8 cache, Hq 64, topk 2048 (DeepSeek-V3.2's), 2300 positions", [2300], 1, 64, 2048, 576, 512, v3, q_std=2.0, **fp8),
        ]
    else:
        cases += [
            c("v32_fp8_b2_sq1_h64_topk512", "FP8 cache, Hq 64, topk 512", [600, 520], 1, 64, 512, 576, 512, v3, q_std=2.0, **fp8),
        ]
    return cases


def _indexer_cases(dtype):
    def c(name, desc, *args, **kw):
        return (name, lambda: indexer.build(dtype, name, desc, *args, **kw))

    cases = [
        c("hi4_di32_b3_sq3_causal_k16", "small dims, Sq 3 causal, seqlens 2/40/13: batch 0 and 2 have fewer positions than top_k (-1 padding; query 0 of batch 0 sees none)", [2, 40, 13], 3, 4, 32, 16, 16, True),
        c("hi8_di16_b2_sq1_k32_blk64", "small dims, non-causal, seqlens 100/7, block 64", [100, 7], 1, 8, 16, 32, 64, False),
        c("hi64_di128_b2_sq2_causal_k256", "DeepSeek-V3.2 indexer dims (Hi 64, Di 128), Sq 2 causal, seqlens 700/200 (batch 1 pads)", [700, 200], 2, 64, 128, 256, 64, True),
    ]
    if dtype == "bf16":
        cases.append(c("hi64_di128_b2_sq1_k2048", "DeepSeek-V3.2 dims and top_k 2048, seqlens 2600/1500", [2600, 1500], 1, 64, 128, 2048, 64, False))
    return cases


# A decode step for 6 sequences (one row each, one skipped), a prefill chunk into block 2,
# a slot named twice (rows 8 and 14: the later row wins), more skipped rows, slot 3 again
# (rows 0 and 21), the first and last slots; blocks left partly written.
CACHE_SLOTS = [3, 31, -1, 48, 79, 0, 32, 33, 34, 35, 36, 37, 38, 39, 34, -1, -1, 69, 20, 21, 22, 3, -1, 40]
# 2 blocks of 16: two slots named twice (5: rows 0 and 6; 17: rows 3 and 11), skipped rows.
FP8_CACHE_SLOTS = [5, -1, 16, 17, 18, 31, 5, -1, 0, 9, 10, 17]


def _cachewrite_cases(dtype):
    def c(name, desc, *args):
        return (name, lambda: cachewrite.build(dtype, name, desc, *args))

    cases = [
        c("dense_d72_nb5_bs16_n24", "dense cache, Dqk 72, 5 blocks of 16: decode-step and prefill-chunk rows, -1 rows (holding NaN/inf), slots named twice (the later row wins), partly written blocks, untouched slots keep their values", "dense", 5, 16, 72, CACHE_SLOTS),
    ]
    if dtype != "f32":
        cases.append(
            c("fp8_nb2_bs16_n12", "fp8_ds_v32 cache (random bytes before), 2 blocks of 16: rows quantized as mla_kv_quantize, -1 rows (holding NaN/inf, never read), slots named twice (the later row wins)", "fp8_ds_v32", 2, 16, 576, FP8_CACHE_SLOTS),
        )
    return cases


V1_FAMILIES = (("moe_route", _route_cases), ("moe_experts", _experts_cases), ("mla_decode", _mla_cases))
V2_FAMILIES = (
    ("moe_route", _route_v2_cases),
    ("moe_experts", _experts_v2_cases),
    ("mla_kv_quantize", _kvquant_cases),
    ("mla_decode", _mla_v2_cases),
    ("mla_sparse_decode", _sparse_cases),
    ("dsa_indexer_topk", _indexer_cases),
    ("mla_cache_write", _cachewrite_cases),
)
# Run dtypes each v2 op allows (contract v2: an FP8 cache takes f16/bf16 queries).
V2_DTYPES = {"mla_decode": ("f16", "bf16")}
SETS = ("v1", "v2", "all")


def all_cases(case_set="v1"):
    """[(op, dtype, name, builder)] of a set ("v1", "v2" or "all") in a fixed order."""
    if case_set not in SETS:
        raise ValueError(f"unknown case set {case_set!r}")
    out = []
    if case_set in ("v1", "all"):
        for dtype in DTYPES:
            for op, family in V1_FAMILIES:
                out += [(op, dtype, name, builder) for name, builder in family(dtype)]
    if case_set in ("v2", "all"):
        for dtype in DTYPES:
            for op, family in V2_FAMILIES:
                if dtype in V2_DTYPES.get(op, DTYPES):
                    out += [(op, dtype, name, builder) for name, builder in family(dtype)]
    return out
