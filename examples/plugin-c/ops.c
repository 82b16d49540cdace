/*
 * The moemla example plugin, part 2 of 2: the three v1 ops as straightforward loops.
 *
 * Storage is F32, F16 or BF16; every value is widened to f32 (the conversions are written
 * out below), all arithmetic is f32, and results are rounded back to the storage dtype
 * (round to nearest, ties to even). moemla has validated every shape, dtype and parameter
 * before these functions run (include/moemla_plugin.h, "VALIDATION"); what is checked
 * here is the content of the index tensors, before anything is read through them.
 */
#include "example_plugin.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- f16 / bf16 <-> f32 --------------------------------------------------------------- */

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

/* IEEE binary16 -> binary32 (exact). */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0) {
        /* Zero or subnormal: mantissa * 2^-24, exact in f32. */
        float magnitude = (float)mantissa * 5.9604644775390625e-8f;
        return sign ? -magnitude : magnitude;
    }
    if (exponent == 31) {
        /* Infinity or NaN (payload kept). */
        return f32_from_bits(sign | 0x7f800000u | (mantissa << 13));
    }
    /* Normal: rebias the exponent from 15 to 127. */
    return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

/* binary32 -> binary16, round to nearest, ties to even; overflow gives infinity. */
static uint16_t f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exponent = (x >> 23) & 0xffu;
    uint32_t mantissa = x & 0x7fffffu;
    int e = (int)exponent - 127 + 15; /* the binary16 biased exponent */
    uint32_t result, rest, half;
    if (exponent == 0xff) {
        /* Infinity, or NaN kept quiet. */
        return (uint16_t)(sign | 0x7c00u | (mantissa ? 0x200u | (mantissa >> 13) : 0u));
    }
    if (e >= 31) {
        return (uint16_t)(sign | 0x7c00u);
    }
    if (e <= 0) {
        /* Subnormal (or zero): the value in units of 2^-24 is (1.mantissa) >> (14 - e). */
        int shift = 14 - e;
        uint32_t full = mantissa | 0x800000u;
        if (exponent == 0 || shift > 24) {
            return (uint16_t)sign; /* below half the smallest subnormal */
        }
        result = full >> shift;
        rest = full & ((1u << shift) - 1u);
        half = 1u << (shift - 1);
    } else {
        result = ((uint32_t)e << 10) | (mantissa >> 13);
        rest = mantissa & 0x1fffu;
        half = 0x1000u;
    }
    if (rest > half || (rest == half && (result & 1u))) {
        result += 1; /* a carry into the exponent is still the right encoding */
    }
    return (uint16_t)(sign | result);
}

/* bfloat16 -> binary32 (exact): bf16 is the upper half of an f32. */
static float bf16_to_f32(uint16_t b) {
    return f32_from_bits((uint32_t)b << 16);
}

/* binary32 -> bfloat16, round to nearest, ties to even. */
static uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) {
        return (uint16_t)((x >> 16) | 0x40u); /* NaN stays NaN (quiet) */
    }
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

/* Reads `count` elements starting at element `first` of `data` (of `dtype`) as f32. */
static void load_f32(float* out, const void* data, MoemlaDType dtype, size_t first,
                     size_t count) {
    size_t i;
    for (i = 0; i < count; i++) {
        if (dtype == MOEMLA_DTYPE_F32) {
            out[i] = ((const float*)data)[first + i];
        } else if (dtype == MOEMLA_DTYPE_F16) {
            out[i] = f16_to_f32(((const uint16_t*)data)[first + i]);
        } else {
            out[i] = bf16_to_f32(((const uint16_t*)data)[first + i]);
        }
    }
}

/* Writes `count` f32 values to elements `first..` of `data`, rounded to `dtype`. */
static void store_f32(void* data, MoemlaDType dtype, size_t first, const float* values,
                      size_t count) {
    size_t i;
    for (i = 0; i < count; i++) {
        if (dtype == MOEMLA_DTYPE_F32) {
            ((float*)data)[first + i] = values[i];
        } else if (dtype == MOEMLA_DTYPE_F16) {
            ((uint16_t*)data)[first + i] = f32_to_f16(values[i]);
        } else {
            ((uint16_t*)data)[first + i] = f32_to_bf16(values[i]);
        }
    }
}

static float dot(const float* a, const float* b, size_t n) {
    float sum = 0.0f;
    size_t i;
    for (i = 0; i < n; i++) {
        sum += a[i] * b[i];
    }
    return sum;
}

/* calloc of n elements of `size` bytes (at least one byte; NULL if it does not fit). */
static void* scratch(size_t n, size_t size) {
    return calloc(n > 0 ? n : 1, size);
}

/* ---- moe_route ----------------------------------------------------------------------- */

/* The index of the largest value among those not yet taken; ties keep the lower index;
 * NaN counts as -inf. Every index taken: returns n. */
static size_t best_untaken(const float* values, const unsigned char* taken, size_t n) {
    size_t best = n, i;
    float best_value = -INFINITY;
    for (i = 0; i < n; i++) {
        float v = isnan(values[i]) ? -INFINITY : values[i];
        if (taken[i]) {
            continue;
        }
        if (best == n || v > best_value) {
            best = i;
            best_value = v;
        }
    }
    return best;
}

/* A group's score: its best selection score (MAX), or the sum of its best two (TOP2_SUM;
 * a one-expert group: that one score). NaN counts as -inf. */
static float group_score(const float* sel, size_t size, int32_t group_select) {
    float first = -INFINITY, second = -INFINITY;
    size_t i;
    for (i = 0; i < size; i++) {
        float v = isnan(sel[i]) ? -INFINITY : sel[i];
        if (v > first) {
            second = first;
            first = v;
        } else if (v > second) {
            second = v;
        }
    }
    if (group_select == MOEMLA_GROUP_SELECT_MAX || size == 1) {
        return first;
    }
    return first + second;
}

MoemlaError* ex_moe_route(MoemlaMoeRouteArgs* a) {
    size_t E, k, t, e, g, j, group_size;
    float *scores, *sel, *group_scores;
    unsigned char *expert_taken, *group_kept;
    const float* bias;
    int32_t* ids;
    float* weights;

    EX_REQUIRE_SIZE(MoemlaMoeRouteArgs, a, topk_weights);
    E = a->experts;
    k = a->top_k;
    group_size = E / a->n_group;
    bias = a->bias ? (const float*)a->bias->data : NULL;
    ids = (int32_t*)a->topk_ids->data;
    weights = (float*)a->topk_weights->data;

    scores = (float*)scratch(E, sizeof(float));
    sel = (float*)scratch(E, sizeof(float));
    group_scores = (float*)scratch(a->n_group, sizeof(float));
    expert_taken = (unsigned char*)scratch(E, 1);
    group_kept = (unsigned char*)scratch(a->n_group, 1);
    if (!scores || !sel || !group_scores || !expert_taken || !group_kept) {
        free(scores), free(sel), free(group_scores), free(expert_taken), free(group_kept);
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: moe_route scratch");
    }

    for (t = 0; t < a->tokens; t++) {
        int32_t* row_ids = ids + t * k;
        float* row_weights = weights + t * k;

        /* Scores: sigmoid per expert, or softmax over the row (max subtracted). */
        load_f32(scores, a->logits->data, a->logits_dtype, t * E, E);
        if (a->score_func == MOEMLA_SCORE_FUNC_SIGMOID) {
            for (e = 0; e < E; e++) {
                scores[e] = 1.0f / (1.0f + expf(-scores[e]));
            }
        } else {
            float max = -INFINITY, sum = 0.0f;
            for (e = 0; e < E; e++) {
                max = fmaxf(max, scores[e]);
            }
            for (e = 0; e < E; e++) {
                scores[e] = expf(scores[e] - max);
                sum += scores[e];
            }
            for (e = 0; e < E; e++) {
                scores[e] /= sum;
            }
        }

        /* Selection scores: the bias steers selection only. */
        for (e = 0; e < E; e++) {
            sel[e] = bias ? scores[e] + bias[e] : scores[e];
        }

        /* Group limit: keep the topk_group best groups, mask the other experts to -inf. */
        if (a->n_group > 1) {
            memset(group_kept, 0, a->n_group);
            for (g = 0; g < a->n_group; g++) {
                group_scores[g] = group_score(sel + g * group_size, group_size, a->group_select);
            }
            for (j = 0; j < a->topk_group; j++) {
                group_kept[best_untaken(group_scores, group_kept, a->n_group)] = 1;
            }
            for (e = 0; e < E; e++) {
                if (!group_kept[e / group_size]) {
                    sel[e] = -INFINITY;
                }
            }
        }

        /* The top_k experts by selection score, best first; weights from unbiased scores. */
        memset(expert_taken, 0, E);
        for (j = 0; j < k; j++) {
            size_t best = best_untaken(sel, expert_taken, E);
            expert_taken[best] = 1;
            row_ids[j] = (int32_t)best;
            row_weights[j] = scores[best];
        }

        if (a->renormalize) {
            float sum = 0.0f;
            for (j = 0; j < k; j++) {
                sum += row_weights[j];
            }
            /* max(sum, 1e-20): a row whose selected scores are all 0 gets weights 0. */
            sum = fmaxf(sum, 1e-20f);
            for (j = 0; j < k; j++) {
                row_weights[j] /= sum;
            }
        }
        for (j = 0; j < k; j++) {
            row_weights[j] *= a->routed_scaling_factor;
        }
    }

    free(scores), free(sel), free(group_scores), free(expert_taken), free(group_kept);
    return NULL;
}

/* ---- moe_experts --------------------------------------------------------------------- */

static float silu(float g) {
    return g / (1.0f + expf(-g));
}

MoemlaError* ex_moe_experts(MoemlaMoeExpertsArgs* a) {
    size_t T, H, I, k, t, j, i, h, n;
    const int32_t* ids;
    const float* slot_weights;
    float *x_row, *w_row, *act, *y_row;

    EX_REQUIRE_SIZE(MoemlaMoeExpertsArgs, a, y);
    T = a->tokens;
    H = a->hidden;
    I = a->inter;
    k = a->top_k;
    ids = (const int32_t*)a->topk_ids->data;
    slot_weights = (const float*)a->topk_weights->data;

    /* Every id must lie in [-1, E): report the first bad one, before any is used. */
    for (n = 0; n < T * k; n++) {
        if (ids[n] < -1 || (int64_t)ids[n] >= (int64_t)a->experts) {
            return ex_index_error("topk_ids", n, ids[n]);
        }
    }

    x_row = (float*)scratch(H, sizeof(float));
    w_row = (float*)scratch(H > I ? H : I, sizeof(float));
    act = (float*)scratch(I, sizeof(float));
    y_row = (float*)scratch(H, sizeof(float));
    if (!x_row || !w_row || !act || !y_row) {
        free(x_row), free(w_row), free(act), free(y_row);
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: moe_experts scratch");
    }

    for (t = 0; t < T; t++) {
        load_f32(x_row, a->x->data, a->dtype, t * H, H);
        for (h = 0; h < H; h++) {
            y_row[h] = 0.0f;
        }
        for (j = 0; j < k; j++) {
            int32_t id = ids[t * k + j];
            float weight = slot_weights[t * k + j];
            size_t e;
            /* An empty slot contributes nothing, even if the expert's output is NaN. */
            if (id == -1 || weight == 0.0f) {
                continue;
            }
            e = (size_t)id;
            /* act = silu(W1 x) * (W3 x); W1 = rows 0..I of w13[e], W3 = rows I..2I. */
            for (i = 0; i < I; i++) {
                float gate, up;
                load_f32(w_row, a->w13->data, a->dtype, (e * 2 * I + i) * H, H);
                gate = dot(w_row, x_row, H);
                load_f32(w_row, a->w13->data, a->dtype, (e * 2 * I + I + i) * H, H);
                up = dot(w_row, x_row, H);
                act[i] = silu(gate) * up;
            }
            /* y += weight * W2[e] act */
            for (h = 0; h < H; h++) {
                load_f32(w_row, a->w2->data, a->dtype, (e * H + h) * I, I);
                y_row[h] += weight * dot(w_row, act, I);
            }
        }
        store_f32(a->y->data, a->dtype, t * H, y_row, H);
    }

    free(x_row), free(w_row), free(act), free(y_row);
    return NULL;
}

/* ---- mla_decode ---------------------------------------------------------------------- */

MoemlaError* ex_mla_decode(MoemlaMlaDecodeArgs* a) {
    size_t B, Sq, Hq, Dqk, Dv, bs, max_blocks, b, i, h, j, d, p;
    size_t heads_per_kv, longest = 0;
    int64_t capacity;
    const int32_t *table, *seqlens;
    float *q_row, *k_row, *o_row, *logits, *lse;

    EX_REQUIRE_SIZE(MoemlaMlaDecodeArgs, a, lse);
    B = a->batch;
    Sq = a->s_q;
    Hq = a->h_q;
    Dqk = a->d_qk;
    Dv = a->d_v;
    bs = a->block_size;
    max_blocks = a->max_blocks;
    heads_per_kv = Hq / a->h_kv;
    /* max_blocks * block_size, saturated: past INT32_MAX it admits every I32 length. */
    capacity = bs > (size_t)INT32_MAX / max_blocks ? (int64_t)INT32_MAX + 1
                                                   : (int64_t)(max_blocks * bs);
    table = (const int32_t*)a->block_table->data;
    seqlens = (const int32_t*)a->cache_seqlens->data;
    lse = (float*)a->lse->data;

    /* Index checks, in the header's order: every length first, then each row's used
     * block-table entries. Entries past a row's length are never read. */
    for (b = 0; b < B; b++) {
        if (seqlens[b] < 0 || (int64_t)seqlens[b] > capacity) {
            return ex_index_error("cache_seqlens", b, seqlens[b]);
        }
        if ((size_t)seqlens[b] > longest) {
            longest = (size_t)seqlens[b];
        }
    }
    for (b = 0; b < B; b++) {
        size_t used = ((size_t)seqlens[b] + bs - 1) / bs;
        for (j = 0; j < used; j++) {
            int32_t block = table[b * max_blocks + j];
            if (block < 0 || (int64_t)block >= (int64_t)a->num_blocks) {
                return ex_index_error("block_table", b * max_blocks + j, block);
            }
        }
    }

    q_row = (float*)scratch(Dqk, sizeof(float));
    k_row = (float*)scratch(Dqk, sizeof(float));
    o_row = (float*)scratch(Dv, sizeof(float));
    logits = (float*)scratch(longest, sizeof(float));
    if (!q_row || !k_row || !o_row || !logits) {
        free(q_row), free(k_row), free(o_row), free(logits);
        return ex_error(MOEMLA_ERROR_OUT_OF_MEMORY, "example: mla_decode scratch");
    }

    for (b = 0; b < B; b++) {
        for (i = 0; i < Sq; i++) {
            /* Positions [0, L) are attended; causal masks bottom-right aligned. */
            int64_t L = a->causal ? (int64_t)seqlens[b] - (int64_t)Sq + (int64_t)i + 1
                                  : (int64_t)seqlens[b];
            for (h = 0; h < Hq; h++) {
                size_t kv_head = h / heads_per_kv;
                size_t o_at = ((b * Sq + i) * Hq + h) * Dv;
                size_t lse_at = (b * Hq + h) * Sq + i;
                float max = -INFINITY, sum = 0.0f;

                for (d = 0; d < Dv; d++) {
                    o_row[d] = 0.0f;
                }
                if (L <= 0) {
                    /* Empty range: o = 0, lse = -inf. */
                    store_f32(a->o->data, a->dtype, o_at, o_row, Dv);
                    lse[lse_at] = -INFINITY;
                    continue;
                }
                load_f32(q_row, a->q->data, a->dtype, ((b * Sq + i) * Hq + h) * Dqk, Dqk);

                /* Pass 1: the scaled logits of every attended position, and their max. */
                for (p = 0; p < (size_t)L; p++) {
                    size_t block = (size_t)table[b * max_blocks + p / bs];
                    size_t row = ((block * bs + p % bs) * a->h_kv + kv_head) * Dqk;
                    load_f32(k_row, a->kv_cache->data, a->dtype, row, Dqk);
                    logits[p] = a->softmax_scale * dot(q_row, k_row, Dqk);
                    max = fmaxf(max, logits[p]);
                }
                /* Pass 2: softmax weights times V (the first Dv columns of each row). */
                for (p = 0; p < (size_t)L; p++) {
                    size_t block = (size_t)table[b * max_blocks + p / bs];
                    size_t row = ((block * bs + p % bs) * a->h_kv + kv_head) * Dqk;
                    float weight = expf(logits[p] - max);
                    load_f32(k_row, a->kv_cache->data, a->dtype, row, Dv);
                    sum += weight;
                    for (d = 0; d < Dv; d++) {
                        o_row[d] += weight * k_row[d];
                    }
                }
                for (d = 0; d < Dv; d++) {
                    o_row[d] /= sum;
                }
                store_f32(a->o->data, a->dtype, o_at, o_row, Dv);
                lse[lse_at] = max + logf(sum); /* natural log */
            }
        }
    }

    free(q_row), free(k_row), free(o_row), free(logits);
    return NULL;
}
