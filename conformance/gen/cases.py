"""The committed case list. Each entry is (op, dtype, name) and a zero-argument builder."""

import math

import experts
import mla
import route

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


def all_cases():
    """[(op, dtype, name, builder)] in a fixed order."""
    out = []
    for dtype in DTYPES:
        for op, family in (("moe_route", _route_cases), ("moe_experts", _experts_cases), ("mla_decode", _mla_cases)):
            out += [(op, dtype, name, builder) for name, builder in family(dtype)]
    return out
