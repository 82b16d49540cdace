// kernels_test.cpp — runs every moemla kernel on the host emulator (cuda_on_host.h) and
// compares with plain double-precision references written here from the contract
// (docs: /work/shared/CONTRACT.md; kernels/README.md for the launch contract).
//
// Build and run: kernels/common/host_emulation/run.sh (clang++ -std=c++20). Variants:
// 32- and 64-lane warps on the portable paths, 32 lanes with emulated mma.sync (sm_80:
// w8a8 dequantizes), and 32 lanes with the sm_89+ FP8 mma.sync too (w8a8 on e4m3 codes).
#include "cuda_on_host.h"
#include "../moemla_device.h"
#ifdef MOEMLA_EMULATE_MMA
#include "mma_emulation.h"
#endif
#include "../../cuda/moe_route.cu"
#include "../../cuda/moe_experts.cu"
#include "../../cuda/mla_decode.cu"
#include "../../cuda/mla_kv_quantize.cu"
#include "../../cuda/dsa_indexer_topk.cu"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>

static int g_failures = 0;
static int g_checks = 0;

static void expect(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

static bool close(double got, double want, double atol, double rtol) {
    if (std::isinf(want) && got == want) return true;
    return std::fabs(got - want) <= atol + rtol * std::fabs(want);  // NaN fails
}

// Storage of a run dtype: 0 f32, 1 f16, 2 bf16.
struct Store {
    int dtype;
    std::vector<uint32_t> words;  // f32 bits or 16-bit patterns
    float get(size_t i) const {
        if (dtype == 0) return moemla_bits_float(words[i]);
        if (dtype == 1) return moemla_f16_to_f32((moemla_u16)words[i]);
        return moemla_bf16_to_f32((moemla_u16)words[i]);
    }
};

// Device-layout bytes plus the values they hold exactly.
struct Tensor {
    std::vector<unsigned char> bytes;
    std::vector<float> vals;
    void* ptr() { return bytes.data(); }
};

static Tensor make(const std::vector<float>& v, int dtype) {
    Tensor t;
    const size_t es = dtype == 0 ? 4 : 2;
    t.bytes.assign(v.size() * es, 0);
    t.vals.resize(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        if (dtype == 0) {
            std::memcpy(&t.bytes[i * 4], &v[i], 4);
            t.vals[i] = v[i];
        } else {
            moemla_u16 h = dtype == 1 ? moemla_f32_to_f16(v[i]) : moemla_f32_to_bf16(v[i]);
            std::memcpy(&t.bytes[i * 2], &h, 2);
            t.vals[i] = dtype == 1 ? moemla_f16_to_f32(h) : moemla_bf16_to_f32(h);
        }
    }
    return t;
}

static float read_out(const Tensor& t, size_t i, int dtype) {
    if (dtype == 0) {
        float f;
        std::memcpy(&f, &t.bytes[i * 4], 4);
        return f;
    }
    moemla_u16 h;
    std::memcpy(&h, &t.bytes[i * 2], 2);
    return dtype == 1 ? moemla_f16_to_f32(h) : moemla_bf16_to_f32(h);
}

static const char* dname(int d) { return d == 0 ? "f32" : d == 1 ? "f16" : "bf16"; }
static double atol_of(int d) { return d == 0 ? 1e-4 : d == 1 ? 2e-3 : 2e-2; }

static std::mt19937 rng(1234);
static std::vector<float> randn(size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& x : v) x = dist(rng);
    return v;
}

// ---------------------------------------------------------------------------------------
// moe_route
// ---------------------------------------------------------------------------------------
struct RouteCase {
    int T, E, top_k, n_group, topk_group, score_func, group_select, renorm;
    float scale;
    bool with_bias;
};

// One moemla_moe_route_* launch (vocab > 0: hash routing with input_ids / tid2eid).
static void route_launch(int dtype, const RouteCase& c, Tensor& logits, const float* bias, const int* input_ids,
                         const int* tid2eid, int vocab, std::vector<int>& ids, std::vector<float>& w,
                         unsigned long long* err) {
    moemla_emu_launch({(unsigned)c.T, 1, 1}, 256, [&] {
        auto* lg = (const void*)logits.ptr();
        if (dtype == 0)
            moemla_moe_route_f32((const float*)lg, bias, c.with_bias, input_ids, tid2eid, vocab, ids.data(), w.data(),
                                 c.E, c.top_k, c.n_group, c.topk_group, c.score_func, c.group_select, c.renorm,
                                 c.scale, err);
        else if (dtype == 1)
            moemla_moe_route_f16((const moemla_f16*)lg, bias, c.with_bias, input_ids, tid2eid, vocab, ids.data(),
                                 w.data(), c.E, c.top_k, c.n_group, c.topk_group, c.score_func, c.group_select,
                                 c.renorm, c.scale, err);
        else
            moemla_moe_route_bf16((const moemla_bf16*)lg, bias, c.with_bias, input_ids, tid2eid, vocab, ids.data(),
                                  w.data(), c.E, c.top_k, c.n_group, c.topk_group, c.score_func, c.group_select,
                                  c.renorm, c.scale, err);
    });
}

// The contract's affinity score of one logit in double (sf 0 sigmoid, 2 sqrt-softplus;
// softmax is done over the row by the caller).
static double score_ref(int sf, double x) {
    if (sf == 2) return std::sqrt(x > 20.0 ? x : std::log1p(std::exp(x)));
    return 1.0 / (1.0 + std::exp(-x));
}

// The contract's ranking on doubles: larger first, NaN as -inf (-0 == +0 already).
static double rank_value(double v) { return std::isnan(v) ? -INFINITY : v; }

// Runs moemla_moe_route_* on `logit_vals` (stored in `dtype`) and `bias`, and checks it
// against a double-precision reference written from the contract. Ids must be the
// reference's top_k, best first; where two reference selection scores are within
// `near` (f32 rounding of nearly equal values) either order is accepted, an exact tie
// must go to the lower index.
static void route_run(int dtype, const RouteCase& c, const std::vector<float>& logit_vals,
                      const std::vector<float>& bias, const char* label) {
    const int T = c.T, E = c.E, top_k = c.top_k;
    Tensor logits = make(logit_vals, dtype);
    std::vector<int> ids((size_t)T * top_k, -7);
    std::vector<float> w((size_t)T * top_k, -7.0f);
    unsigned long long err = ~0ull;  // never touched without hash routing
    route_launch(dtype, c, logits, bias.data(), nullptr, nullptr, 0, ids, w, &err);
    expect(err == ~0ull, std::string("moe_route ") + label + ": flag touched");
    const double near = 1e-6;
    for (int t = 0; t < T; ++t) {
        std::vector<double> s(E), sel(E);
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; ++e)
            if (logits.vals[t * E + e] > mx) mx = logits.vals[t * E + e];
        for (int e = 0; e < E; ++e) {
            double x = logits.vals[t * E + e];
            s[e] = c.score_func == 1 ? std::exp(x - mx) : score_ref(c.score_func, x);
            sum += s[e];
        }
        for (int e = 0; e < E; ++e) {
            if (c.score_func == 1) s[e] /= sum;
            sel[e] = rank_value(s[e] + (c.with_bias ? bias[e] : 0.0));
        }
        auto by_rank = [](const std::vector<double>& v) {
            std::vector<int> order(v.size());
            for (size_t i = 0; i < v.size(); ++i) order[i] = (int)i;
            std::stable_sort(order.begin(), order.end(),
                             [&](int a, int b) { return rank_value(v[a]) > rank_value(v[b]); });
            return order;
        };
        if (c.n_group > 1) {
            int gs = E / c.n_group;
            std::vector<double> gscore(c.n_group);
            for (int g = 0; g < c.n_group; ++g) {
                double best = -INFINITY, second = -INFINITY;
                for (int e = g * gs; e < (g + 1) * gs; ++e) {
                    if (sel[e] > best) {
                        second = best;
                        best = sel[e];
                    } else if (sel[e] > second) {
                        second = sel[e];
                    }
                }
                gscore[g] = (c.group_select == 1 && gs > 1) ? best + second : best;
            }
            std::vector<int> gorder = by_rank(gscore);
            std::vector<bool> keep(c.n_group, false);
            for (int i = 0; i < c.topk_group; ++i) keep[gorder[i]] = true;
            for (int e = 0; e < E; ++e)
                if (!keep[e / gs]) sel[e] = -INFINITY;
        }
        std::vector<int> order = by_rank(sel);
        std::vector<bool> chosen(E, false);
        char buf[240];
        bool ids_ok = true;
        for (int j = 0; j < top_k; ++j) {
            const int got = ids[t * top_k + j];
            if (got < 0 || got >= E || chosen[got]) {
                ids_ok = false;
                break;
            }
            chosen[got] = true;
            if (j > 0) {
                const int prev = ids[t * top_k + j - 1];
                const double a = sel[prev], b = sel[got];
                // best first; an exact tie goes to the lower index
                if (a < b - near || (a == b && prev > got)) ids_ok = false;
            }
        }
        // The chosen set is the reference's, up to near-ties at the boundary.
        if (ids_ok) {
            for (int j = 0; j < top_k && ids_ok; ++j) {
                const int want = order[j];
                if (chosen[want]) continue;
                const int kth = order[top_k - 1];
                if (!(std::fabs(sel[want] - sel[kth]) <= near && sel[want] != sel[kth])) ids_ok = false;
            }
        }
        std::snprintf(buf, sizeof buf, "moe_route %s %s T%d E%d k%d g%d sf%d gs%d t%d: ids (first %d, want %d)",
                      label, dname(dtype), T, E, top_k, c.n_group, c.score_func, c.group_select, t, ids[t * top_k],
                      order[0]);
        expect(ids_ok, buf);
        if (!ids_ok) continue;
        double wsum = 0;
        for (int j = 0; j < top_k; ++j) wsum += s[ids[t * top_k + j]];
        const double denom = c.renorm ? std::max(wsum, 1e-20) : 1.0;
        int shown = 0;
        for (int j = 0; j < top_k; ++j) {
            const double want_w = s[ids[t * top_k + j]] / denom * c.scale;
            const double got_w = w[t * top_k + j];
            const bool ok = std::isnan(want_w) ? std::isnan(got_w) : close(got_w, want_w, 1e-5, 1e-5);
            if (!ok && shown++ < 3) {
                std::snprintf(buf, sizeof buf, "moe_route %s %s t%d j%d: w %g want %g", label, dname(dtype), t, j,
                              got_w, want_w);
                expect(false, buf);
            } else if (ok) {
                ++g_checks;
            }
        }
    }
}

static void route_case(int dtype, const RouteCase& c) {
    route_run(dtype, c, randn((size_t)c.T * c.E, 2.0f), randn(c.E, 0.5f), "random");
}

// Issue 11: NaN selection scores rank as -inf (expert and group scores), ties go to the
// lower index, an all-zero row renormalises to weights 0, and top_k up to E.
static void route_edge_cases(int dtype) {
    const float nan = NAN, inf = INFINITY;
    // NaN logits and a NaN bias are picked last; with top_k = E - 2 two of the four NaN
    // experts are picked, the lower indices, weights as the arithmetic gives (NaN).
    {
        RouteCase c{3, 64, 8, 1, 1, 0, 0, 0, 1.0f, true};
        std::vector<float> lg = randn((size_t)c.T * c.E, 2.0f), b = randn(c.E, 0.5f);
        for (int t = 0; t < c.T; ++t)
            for (int e : {0, 5, 9}) lg[t * c.E + e] = nan;
        b[3] = nan;
        route_run(dtype, c, lg, b, "nan-last");
        c.top_k = c.E - 2;
        route_run(dtype, c, lg, b, "nan-picked-last");
        c.renorm = 1;
        c.top_k = 8;
        route_run(dtype, c, lg, b, "nan-last-renorm");
    }
    // A group whose top-2 sum is inf + -inf = NaN ranks as -inf; a group of NaN only too.
    {
        RouteCase c{2, 16, 4, 8, 3, 0, 1, 1, 2.0f, true};
        std::vector<float> lg = randn((size_t)c.T * c.E, 1.0f), b = randn(c.E, 0.5f);
        b[0] = inf;
        b[1] = -inf;
        b[4] = nan;
        b[5] = nan;
        route_run(dtype, c, lg, b, "nan-group");
        c.group_select = 0;
        route_run(dtype, c, lg, b, "nan-group-max");
    }
    // Sigmoid of -1000 is 0 for every expert: renormalised weights are exactly 0 (the
    // denominator is max(sum, 1e-20)), ids the first top_k (all tie).
    {
        RouteCase c{2, 32, 6, 4, 2, 0, 1, 1, 2.5f, false};
        std::vector<float> lg((size_t)c.T * c.E, -1000.0f), b(c.E, 0.0f);
        route_run(dtype, c, lg, b, "all-zero-renorm");
        c.n_group = 1;
        c.topk_group = 1;
        route_run(dtype, c, lg, b, "all-zero-renorm-nogroup");
    }
    // Equal logits: groups and experts both tie; the lower indices win.
    {
        RouteCase c{1, 64, 5, 8, 3, 1, 0, 1, 1.0f, false};
        std::vector<float> lg((size_t)c.T * c.E, 0.25f), b(c.E, 0.0f);
        route_run(dtype, c, lg, b, "ties");
    }
    // top_k close to and equal to E (the selection is O(E + k log^2 k), not O(E * k)).
    {
        RouteCase c{2, 2048, 2048, 1, 1, 0, 0, 1, 1.0f, true};
        route_run(dtype, c, randn((size_t)c.T * c.E, 2.0f), randn(c.E, 0.5f), "k-equals-E");
        RouteCase g{1, 2000, 1999, 8, 8, 1, 1, 0, 1.0f, true};
        route_run(dtype, g, randn((size_t)g.T * g.E, 2.0f), randn(g.E, 0.5f), "k-near-E-groups");
        RouteCase many{1, 4096, 300, 1024, 700, 0, 1, 1, 1.0f, true};
        route_run(dtype, many, randn((size_t)many.T * many.E, 2.0f), randn(many.E, 0.5f), "many-groups");
    }
}

// Hash routing (contract v2): ids = tid2eid[input_ids[t]] exactly, weights the unbiased
// scores of those ids, renormalised by max(sum, 1e-20) and scaled. With `corrupt`, bad
// token ids and bad table entries are flagged: err[0] the first bad input_ids position,
// err[2] (after the resolve kernel) the first bad table entry in token order, at its
// position in tid2eid, err[3] the first column repeating it.
static void route_hash_case(int dtype, int sf, int corrupt) {
    RouteCase c{6, 48, 4, 1, 1, sf, 0, 1, 1.5f, false};
    const int vocab = 9, k = c.top_k;
    std::vector<float> lv = randn((size_t)c.T * c.E, 3.0f);
    for (int e = 0; e < c.E; ++e) lv[5 * c.E + e] = -1000.0f;  // token 5: every score 0
    Tensor logits = make(lv, dtype);
    std::vector<int> table((size_t)vocab * k);
    for (int v = 0; v < vocab; ++v) {
        std::vector<int> perm(c.E);
        for (int e = 0; e < c.E; ++e) perm[e] = e;
        std::shuffle(perm.begin(), perm.end(), rng);
        for (int j = 0; j < k; ++j) table[v * k + j] = perm[j];
    }
    std::vector<int> input_ids = {3, 5, 0, 8, 3, 7};
    unsigned long long want[4] = {~0ull, ~0ull, ~0ull, ~0ull};
    auto flag = [](unsigned long long pos, int value) { return (pos << 32) | (unsigned)value; };
    if (corrupt == 1) {  // bad token ids at t 2 and 4: the first is reported
        input_ids[2] = vocab;
        input_ids[4] = -1;
        want[0] = flag(2, vocab);
    } else if (corrupt == 2) {
        // Token 1 reads row 5: a repeat at column 2 (first at column 0). Token 3 reads
        // row 8: -2 at column 0 (a later token, an earlier table position: not reported).
        // Row 1 (read by no token) is bad too and never looked at.
        table[5 * k + 2] = table[5 * k + 0];
        table[8 * k + 0] = -2;
        table[1 * k + 1] = c.E;
        want[1] = flag(1 * k + 2, table[5 * k + 0]);
        want[2] = flag(5 * k + 2, table[5 * k + 0]);
        want[3] = 0;
    } else if (corrupt == 3) {  // out of range (E) in the first token's row, column 3
        table[3 * k + 3] = c.E;
        want[1] = flag(3, c.E);
        want[2] = flag(3 * k + 3, c.E);
    }
    std::vector<int> ids((size_t)c.T * k, -7);
    std::vector<float> w((size_t)c.T * k, -7.0f);
    unsigned long long err[4] = {~0ull, ~0ull, ~0ull, ~0ull};
    route_launch(dtype, c, logits, nullptr, input_ids.data(), table.data(), vocab, ids, w, err);
    moemla_emu_launch({1, 1, 1}, 1, [&] { moemla_moe_route_hash_resolve(input_ids.data(), table.data(), k, err); });
    char buf[240];
    std::snprintf(buf, sizeof buf, "moe_route hash %s sf%d corrupt%d: err {%#llx %#llx %#llx %#llx}", dname(dtype), sf,
                  corrupt, err[0], err[1], err[2], err[3]);
    expect(err[0] == want[0] && err[1] == want[1] && err[2] == want[2] && err[3] == want[3], buf);
    if (corrupt) return;
    for (int t = 0; t < c.T; ++t) {
        const int* row = &table[(size_t)input_ids[t] * k];
        double sum = 0;
        for (int j = 0; j < k; ++j) sum += score_ref(sf, logits.vals[(size_t)t * c.E + row[j]]);
        for (int j = 0; j < k; ++j) {
            const double want_w = score_ref(sf, logits.vals[(size_t)t * c.E + row[j]]) / std::max(sum, 1e-20) * c.scale;
            std::snprintf(buf, sizeof buf, "moe_route hash %s sf%d t%d j%d: id %d want %d, w %g want %g", dname(dtype),
                          sf, t, j, ids[t * k + j], row[j], w[t * k + j], want_w);
            expect(ids[t * k + j] == row[j] && close(w[t * k + j], want_w, 1e-5, 1e-5), buf);
        }
    }
}

// ---------------------------------------------------------------------------------------
// moe_experts
// ---------------------------------------------------------------------------------------
// What an experts case puts in its routing besides random ids and weights.
struct ExpertsOpts {
    int bad_slot = -1;     // ids[bad_slot] = E (first bad), ids[bad_slot + 2] = -5 (a later one)
    bool poison = false;   // expert E - 1 has NaN / inf weights and every slot routed to it
                           // weight +0 or -0; id -1 slots get NaN weights
    int nan_weight = -1;   // this slot (a valid expert) gets a NaN weight: its row is NaN
};

static void experts_case(int dtype, int T, int H, int I, int E, int k, ExpertsOpts opt = {}) {
    Tensor x = make(randn((size_t)T * H, 1.0f), dtype);
    std::vector<float> w13v = randn((size_t)E * 2 * I * H, 0.2f), w2v = randn((size_t)E * H * I, 0.2f);
    std::vector<int> ids((size_t)T * k);
    std::uniform_int_distribution<int> pick(-1, E - 1);
    for (auto& id : ids) id = pick(rng);
    if (opt.bad_slot >= 0) {
        ids[opt.bad_slot] = E;                                        // first bad
        if (opt.bad_slot + 2 < (int)ids.size()) ids[opt.bad_slot + 2] = -5;  // a later bad one
    }
    std::vector<float> tw = randn((size_t)T * k, 0.5f);
    if (opt.poison) {
        const size_t per13 = (size_t)2 * I * H, per2 = (size_t)H * I;
        for (size_t i = 0; i < per13; ++i) w13v[(E - 1) * per13 + i] = i % 3 == 0 ? NAN : INFINITY;
        for (size_t i = 0; i < per2; ++i) w2v[(E - 1) * per2 + i] = i % 2 ? NAN : -INFINITY;
        for (size_t s = 0; s < ids.size(); ++s) {
            if (s % 4 == 0) ids[s] = E - 1;  // make sure the poisoned expert is routed to
            if (ids[s] == E - 1) tw[s] = s % 2 ? -0.0f : 0.0f;
            if (ids[s] == -1) tw[s] = NAN;
        }
    }
    if (opt.nan_weight >= 0) {
        if (ids[opt.nan_weight] < 0) ids[opt.nan_weight] = 0;
        tw[opt.nan_weight] = NAN;
    }
    Tensor w13 = make(w13v, dtype), w2 = make(w2v, dtype);

    const int slots = T * k;
    const int TMt = 64;
    const int max_tiles = (slots + std::min(E, slots) * (TMt - 1)) / TMt;
    const int rows = max_tiles * TMt;
    std::vector<int> sorted_rows(rows, -9), slot_pos(slots, -9), tile_expert(std::max(max_tiles, 1), -9), meta(1, -9);
    unsigned long long err = ~0ull;
    const size_t es = dtype == 0 ? 4 : 2;
    // Workspaces and output start as NaN bytes: the kernels must write what they read.
    std::vector<unsigned char> act((size_t)rows * I * es, 0xff);
    std::vector<float> yslot((size_t)rows * H, NAN);
    std::vector<unsigned char> y((size_t)T * H * es, 0xff);

    moemla_emu_launch({1, 1, 1}, 1024, [&] {
        moemla_moe_align(ids.data(), tw.data(), slots, E, max_tiles, sorted_rows.data(), slot_pos.data(),
                         tile_expert.data(), meta.data(), &err);
    });
    moemla_dim3 g1{(unsigned)max_tiles, (unsigned)((I + 63) / 64), 1}, g2{(unsigned)max_tiles, (unsigned)((H + 63) / 64), 1};
#define MOEMLA_RUN_EXPERTS(SFX, TT)                                                                               \
    moemla_emu_launch(g1, 128, [&] {                                                                              \
        moemla_moe_gate_up_##SFX((const TT*)x.ptr(), (const TT*)w13.ptr(), sorted_rows.data(), tile_expert.data(), \
                                 meta.data(), (TT*)act.data(), H, I, k, INFINITY);                                \
    });                                                                                                           \
    moemla_emu_launch(g2, 128, [&] {                                                                              \
        moemla_moe_down_##SFX((const TT*)act.data(), (const TT*)w2.ptr(), sorted_rows.data(), tile_expert.data(),  \
                              meta.data(), yslot.data(), H, I);                                                   \
    });                                                                                                           \
    moemla_emu_launch({(unsigned)T, 1, 1}, 256, [&] {                                                             \
        moemla_moe_combine_##SFX(yslot.data(), slot_pos.data(), tw.data(), (TT*)y.data(), H, k);                  \
    });
    if (dtype == 0) {
        MOEMLA_RUN_EXPERTS(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_EXPERTS(f16, moemla_f16)
    } else {
        MOEMLA_RUN_EXPERTS(bf16, moemla_bf16)
    }

    char buf[200];
    // The flag names the first bad slot and the id found there.
    const unsigned long long want_err =
        opt.bad_slot >= 0 ? ((unsigned long long)opt.bad_slot << 32) | (unsigned)E : ~0ull;
    std::snprintf(buf, sizeof buf, "moe_experts %s T%d H%d I%d E%d k%d: err flag %#llx want %#llx", dname(dtype), T, H,
                  I, E, k, err, want_err);
    expect(err == want_err, buf);
    int worst = 0;
    double worst_err = 0;
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < H; ++n) {
            double acc = 0;
            for (int j = 0; j < k; ++j) {
                int e = ids[t * k + j];
                // id -1 (or bad) and weight 0 (either sign) contribute nothing
                if (e < 0 || e >= E || tw[t * k + j] == 0.0f) continue;
                double out = 0;
                for (int i = 0; i < I; ++i) {
                    double g = 0, u = 0;
                    for (int h = 0; h < H; ++h) {
                        g += (double)x.vals[t * H + h] * w13.vals[((size_t)e * 2 * I + i) * H + h];
                        u += (double)x.vals[t * H + h] * w13.vals[((size_t)e * 2 * I + I + i) * H + h];
                    }
                    out += g / (1.0 + std::exp(-g)) * u * w2.vals[((size_t)e * H + n) * I + i];
                }
                acc += tw[t * k + j] * out;
            }
            double got = read_out(Tensor{y, {}}, (size_t)t * H + n, dtype);
            double errv = std::fabs(got - acc) - (atol_of(dtype) + atol_of(dtype) * std::fabs(acc));
            if (std::isnan(acc) && std::isnan(got)) errv = 0;  // a NaN weight's row
            if (!(errv <= 0)) {
                ++worst;
                if (!(errv <= worst_err)) worst_err = errv;
                if (worst <= 3) {
                    std::snprintf(buf, sizeof buf, "moe_experts %s T%d H%d I%d: y[%d,%d] = %g want %g", dname(dtype), T, H,
                                  I, t, n, got, acc);
                    expect(false, buf);
                }
            } else {
                ++g_checks;
            }
        }
}

// ---------------------------------------------------------------------------------------
// FP8 e4m3fn (contract v2), written here from the format's definition
// ---------------------------------------------------------------------------------------
// The value of an e4m3fn code in double (NaN for 0x7F / 0xFF).
static double e4m3_ref(int code) {
    const double sign = (code & 0x80) ? -1.0 : 1.0;
    const int e = (code >> 3) & 15, m = code & 7;
    if (e == 15 && m == 7) return NAN;
    if (e == 0) return sign * m / 8.0 * std::ldexp(1.0, -6);
    return sign * (1.0 + m / 8.0) * std::ldexp(1.0, e - 7);
}

// The value of an e4m3fnuz code (bias 8, 0x80 NaN, no -0, no inf).
static double e4m3fnuz_ref(int code) {
    if (code == 0x80) return NAN;
    const double sign = (code & 0x80) ? -1.0 : 1.0;
    const int e = (code >> 3) & 15, m = code & 7;
    if (e == 0) return sign * m / 8.0 * std::ldexp(1.0, -7);
    return sign * (1.0 + m / 8.0) * std::ldexp(1.0, e - 8);
}

// e4m3(v) by search: the nearest of the 127 non-negative finite values, ties to the even
// code, |v| >= 448 saturating, NaN 0x7F with v's sign.
static int e4m3_encode_ref(float v) {
    const int sign = std::signbit(v) ? 0x80 : 0;
    if (std::isnan(v)) return sign | 0x7f;
    const double a = std::fabs((double)v);
    if (a >= 448.0) return sign | 0x7e;
    int lo = 0;  // the largest code whose value is <= a
    while (lo < 0x7e && e4m3_ref(lo + 1) <= a) ++lo;
    if (e4m3_ref(lo) == a) return sign | lo;
    const double dl = a - e4m3_ref(lo), dh = e4m3_ref(lo + 1) - a;
    const int pick = dl < dh ? lo : dh < dl ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
    return sign | pick;
}

static void fp8_conversion_checks() {
    char buf[200];
    // Every code decodes exactly, sign of zero included; every finite code round-trips.
    for (int c = 0; c < 256; ++c) {
        const double want = e4m3_ref(c);
        const float got = moemla_e4m3_to_f32((moemla_u32)c);
        const bool ok = std::isnan(want) ? std::isnan(got)
                                         : (double)got == want && std::signbit(got) == ((c & 0x80) != 0);
        std::snprintf(buf, sizeof buf, "e4m3 decode %#04x: %g want %g", c, got, want);
        expect(ok, buf);
        if (!std::isnan(want)) {
            std::snprintf(buf, sizeof buf, "e4m3 round trip %#04x", c);
            expect(moemla_f32_to_e4m3(got) == (moemla_u32)c, buf);
        }
    }
    // Ties between neighbours go to the even code; one ulp either side to the nearer one.
    for (int c = 0; c < 0x7e; ++c) {
        const float mid = (float)((e4m3_ref(c) + e4m3_ref(c + 1)) / 2);  // 5 significant bits: exact
        const int even = c % 2 == 0 ? c : c + 1;
        for (float sgn : {1.0f, -1.0f}) {
            const int sb = sgn < 0 ? 0x80 : 0;
            std::snprintf(buf, sizeof buf, "e4m3 tie %#04x/%#04x sign %d", c, c + 1, sb);
            expect(moemla_f32_to_e4m3(sgn * mid) == (moemla_u32)(sb | even), buf);
            expect(moemla_f32_to_e4m3(sgn * std::nextafter(mid, 0.0f)) == (moemla_u32)(sb | c), buf);
            expect(moemla_f32_to_e4m3(sgn * std::nextafter(mid, 1e9f)) == (moemla_u32)(sb | (c + 1)), buf);
        }
    }
    // Saturation, infinities, NaN, signed zero, f32 subnormals.
    const struct {
        float v;
        int code;
    } fixed[] = {{448.0f, 0x7e},   {449.0f, 0x7e},    {464.0f, 0x7e},     {480.0f, 0x7e},  {1e30f, 0x7e},
                 {INFINITY, 0x7e}, {-INFINITY, 0xfe}, {-500.0f, 0xfe},    {NAN, 0x7f},     {-NAN, 0xff},
                 {-0.0f, 0x80},    {0.0f, 0x00},      {1e-40f, 0x00},     {-1e-40f, 0x80}, {0.0009765625f, 0x00},
                 {0.00146484375f, 0x01}, {-0.001953125f, 0x81}};
    for (const auto& f : fixed) {
        std::snprintf(buf, sizeof buf, "e4m3 encode %g: %#04x want %#04x", f.v, moemla_f32_to_e4m3(f.v), f.code);
        expect(moemla_f32_to_e4m3(f.v) == (moemla_u32)f.code, buf);
    }
    // Random f32 across the whole range against the search encoder.
    std::uniform_real_distribution<float> ex(-14.0f, 10.0f), mant(1.0f, 2.0f);
    int bad = 0;
    for (int i = 0; i < 100000; ++i) {
        float v = std::ldexp(mant(rng), (int)ex(rng)) * (i % 2 ? -1.0f : 1.0f);
        if (moemla_f32_to_e4m3(v) != (moemla_u32)e4m3_encode_ref(v) && bad++ < 3) {
            std::snprintf(buf, sizeof buf, "e4m3 encode %a: %#04x want %#04x", v, moemla_f32_to_e4m3(v),
                          e4m3_encode_ref(v));
            expect(false, buf);
        }
    }
    expect(bad == 0, "e4m3 encode: random values");
    // UE8M0 rounding: powers of two stay, anything else goes up.
    expect(moemla_pow2_ceil_f32(0.25f) == 0.25f && moemla_pow2_ceil_f32(0.2500001f) == 0.5f &&
               moemla_pow2_ceil_f32(std::nextafter(0.25f, 0.0f)) == 0.25f && moemla_pow2_ceil_f32(3.0f) == 4.0f &&
               moemla_pow2_ceil_f32(1e-4f / 448.0f) == std::ldexp(1.0f, -22) && moemla_pow2_ceil_f32(0.0f) == 0.0f &&
               moemla_pow2_ceil_f32(1e-40f) == std::ldexp(1.0f, -132),
           "pow2_ceil");
    // e4m3fn -> e4m3fnuz: the same value halved (scales doubled), -0 -> +0 (fnuz's 0x80 is
    // NaN, so -0 must not keep its bits), NaN -> NaN.
    for (int c = 0; c < 256; ++c) {
        const double fn = e4m3_ref(c), fnuz = e4m3fnuz_ref((int)moemla_e4m3fn_to_fnuz((moemla_u32)c));
        const bool ok = std::isnan(fn) ? std::isnan(fnuz) : fnuz == fn / 2;
        std::snprintf(buf, sizeof buf, "fnuz of %#04x: %g want %g", c, fnuz, fn / 2);
        expect(ok, buf);
    }
}

// ---------------------------------------------------------------------------------------
// moe_experts v2: FP8 block-scaled weights (w8a16, w8a8), SwiGLU clamp
// ---------------------------------------------------------------------------------------
struct Fp8ExpertsCase {
    int T, H, I, E, k;
    bool fp8 = true;      // FP8 weights (else run-dtype weights, clamp only)
    bool a8 = false;      // fp8_block128 activations
    bool ue8m0 = false;   // power-of-two activation scales
    float limit = INFINITY;
    bool x_edges = false;  // x holds -0.0 and tiny negatives (w8a8: activation codes 0x80)
};

// The contract's fp8_block128 quantization of one row (f32 arithmetic, reference encoder).
static std::vector<double> quant_row_ref(const std::vector<float>& row, bool ue8m0) {
    std::vector<double> out(row.size());
    for (size_t g0 = 0; g0 < row.size(); g0 += 128) {
        const size_t g1 = std::min(row.size(), g0 + 128);
        float amax = 0.0f;
        for (size_t i = g0; i < g1; ++i)
            if (std::fabs(row[i]) > amax) amax = std::fabs(row[i]);
        float sc = std::max(amax, 1e-4f) / 448.0f;
        if (ue8m0) sc = (float)std::exp2(std::ceil(std::log2((double)sc)));  // sc is normal: exact here
        for (size_t i = g0; i < g1; ++i) out[i] = e4m3_ref(e4m3_encode_ref(row[i] / sc)) * (double)sc;
    }
    return out;
}

static void experts_fp8_case(int dtype, const Fp8ExpertsCase& c) {
    const int T = c.T, H = c.H, I = c.I, E = c.E, k = c.k;
    std::vector<float> xv = randn((size_t)T * H, 1.0f);
    if (c.x_edges)
        for (size_t i = 0; i < xv.size(); ++i) {
            if (i % 37 == 5) xv[i] = -0.0f;
            if (i % 37 == 11) xv[i] = -1e-6f;  // |x / sc| < 2^-10: rounds to -0
        }
    Tensor x = make(xv, dtype);
    // Weights: FP8 codes (random finite ones up to 15, -0 (0x80) sprinkled, and +-448
    // (0x7E / 0xFE) in row 0 of the last expert, whose first block scale is ~1/900) and
    // non-power-of-two block scales; or run-dtype values.
    const size_t n13 = (size_t)E * 2 * I * H, n2 = (size_t)E * H * I;
    const int b13r = (2 * I + 127) / 128, bH = (H + 127) / 128, bHr = (H + 127) / 128, bI = (I + 127) / 128;
    std::vector<unsigned char> c13(n13), c2(n2);
    std::uniform_int_distribution<int> code(0, 255);
    auto pick = [&](size_t i, size_t row0_begin, size_t row0_end) {
        if (i % 97 == 3) return 0x80;
        if (i >= row0_begin && i < row0_end && i % 5 == 1) return i % 2 ? 0x7e : 0xfe;
        int v;
        do v = code(rng);
        while ((v & 0x7f) > 0x57);  // |v| <= 15 (no NaN)
        return v;
    };
    const size_t last13 = (size_t)(E - 1) * 2 * I * H, last2 = (size_t)(E - 1) * H * I;
    for (size_t i = 0; i < n13; ++i) c13[i] = (unsigned char)pick(i, last13, last13 + std::min(H, 128));
    for (size_t i = 0; i < n2; ++i) c2[i] = (unsigned char)pick(i, last2, last2 + std::min(I, 128));
    std::uniform_real_distribution<float> sd(1.0f, 1.9f);
    std::vector<float> s13((size_t)E * b13r * bH), s2((size_t)E * bHr * bI);
    for (auto& v : s13) v = sd(rng) * 0.02f;
    for (auto& v : s2) v = sd(rng) * 0.02f;
    s13[(size_t)(E - 1) * b13r * bH] = sd(rng) / 900.0f;
    s2[(size_t)(E - 1) * bHr * bI] = sd(rng) / 900.0f;
    Tensor w13t = make(randn(n13, 0.2f), dtype), w2t = make(randn(n2, 0.2f), dtype);
    auto W13 = [&](int e, int r, int h) -> double {
        const size_t i = ((size_t)e * 2 * I + r) * H + h;
        if (!c.fp8) return w13t.vals[i];
        return e4m3_ref(c13[i]) * (double)s13[((size_t)e * b13r + r / 128) * bH + h / 128];
    };
    auto W2 = [&](int e, int n, int i) -> double {
        const size_t j = ((size_t)e * H + n) * I + i;
        if (!c.fp8) return w2t.vals[j];
        return e4m3_ref(c2[j]) * (double)s2[((size_t)e * bHr + n / 128) * bI + i / 128];
    };
    std::vector<int> ids((size_t)T * k);
    std::uniform_int_distribution<int> pid(-1, E - 1);
    for (auto& id : ids) id = pid(rng);
    std::vector<float> tw = randn((size_t)T * k, 0.5f);

    const int slots = T * k;
    const int max_tiles = (slots + std::min(E, slots) * 63) / 64;
    const int rows = max_tiles * 64;
    std::vector<int> sorted_rows(rows, -9), slot_pos(slots, -9), tile_expert(std::max(max_tiles, 1), -9), meta(1, -9);
    unsigned long long err = ~0ull;
    const size_t es = dtype == 0 ? 4 : 2;
    // Workspaces and output start as NaN bytes: the kernels must write what they read.
    std::vector<unsigned char> act((size_t)rows * I * es, 0xff), y((size_t)T * H * es, 0xff);
    std::vector<float> yslot((size_t)rows * H, NAN), act32((size_t)rows * I, NAN);  // w8a8: act in f32
    std::vector<unsigned char> xq((size_t)T * H, 0xff), aq((size_t)rows * I, 0xff);
    std::vector<float> xs((size_t)T * bH, NAN), as((size_t)rows * bI, NAN);
    moemla_emu_launch({1, 1, 1}, 1024, [&] {
        moemla_moe_align(ids.data(), tw.data(), slots, E, max_tiles, sorted_rows.data(), slot_pos.data(),
                         tile_expert.data(), meta.data(), &err);
    });
    moemla_dim3 g1{(unsigned)max_tiles, (unsigned)((I + 63) / 64), 1}, g2{(unsigned)max_tiles, (unsigned)((H + 63) / 64), 1};
    auto* q13 = (const moemla_fp8*)c13.data();
    auto* q2 = (const moemla_fp8*)c2.data();
    auto* xqp = (moemla_fp8*)xq.data();
    auto* aqp = (moemla_fp8*)aq.data();
#define MOEMLA_RUN_FP8(SFX, TT)                                                                                   \
    if (c.a8)                                                                                                     \
        moemla_emu_launch({(unsigned)T, (unsigned)bH, 1}, 128, [&] {                                              \
            moemla_moe_quant_##SFX((const TT*)x.ptr(), H, meta.data(), 0, xqp, xs.data(), c.ue8m0);               \
        });                                                                                                       \
    moemla_emu_launch(g1, 128, [&] {                                                                              \
        if (!c.fp8)                                                                                               \
            moemla_moe_gate_up_##SFX((const TT*)x.ptr(), (const TT*)w13t.ptr(), sorted_rows.data(),               \
                                     tile_expert.data(), meta.data(), (TT*)act.data(), H, I, k, c.limit);         \
        else if (c.a8)                                                                                            \
            moemla_moe_gate_up_w8a8_##SFX(xqp, xs.data(), q13, s13.data(), sorted_rows.data(), tile_expert.data(), \
                                          meta.data(), act32.data(), H, I, k, c.limit);                           \
        else                                                                                                      \
            moemla_moe_gate_up_w8a16_##SFX((const TT*)x.ptr(), q13, s13.data(), sorted_rows.data(),               \
                                           tile_expert.data(), meta.data(), (TT*)act.data(), H, I, k, c.limit);   \
    });                                                                                                           \
    if (c.a8)                                                                                                     \
        moemla_emu_launch({(unsigned)rows, (unsigned)bI, 1}, 128, [&] {                                           \
            moemla_moe_quant_f32(act32.data(), I, meta.data(), 1, aqp, as.data(), c.ue8m0);                       \
        });                                                                                                       \
    moemla_emu_launch(g2, 128, [&] {                                                                              \
        if (!c.fp8)                                                                                               \
            moemla_moe_down_##SFX((const TT*)act.data(), (const TT*)w2t.ptr(), sorted_rows.data(),                \
                                  tile_expert.data(), meta.data(), yslot.data(), H, I);                           \
        else if (c.a8)                                                                                            \
            moemla_moe_down_w8a8_##SFX(aqp, as.data(), q2, s2.data(), sorted_rows.data(), tile_expert.data(),     \
                                       meta.data(), yslot.data(), H, I);                                          \
        else                                                                                                      \
            moemla_moe_down_w8a16_##SFX((const TT*)act.data(), q2, s2.data(), sorted_rows.data(),                 \
                                        tile_expert.data(), meta.data(), yslot.data(), H, I);                     \
    });                                                                                                           \
    moemla_emu_launch({(unsigned)T, 1, 1}, 256, [&] {                                                             \
        moemla_moe_combine_##SFX(yslot.data(), slot_pos.data(), tw.data(), (TT*)y.data(), H, k);                  \
    });
    if (dtype == 0) {
        MOEMLA_RUN_FP8(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_FP8(f16, moemla_f16)
    } else {
        MOEMLA_RUN_FP8(bf16, moemla_bf16)
    }
    char buf[240];
    std::snprintf(buf, sizeof buf, "moe_experts v2 %s T%d H%d I%d fp8 %d a8 %d ue8m0 %d limit %g", dname(dtype), T, H, I,
                  c.fp8, c.a8, c.ue8m0, c.limit);
    const std::string label = buf;
    expect(err == ~0ull, label + ": flag");
    if (c.a8 && c.x_edges) {  // the activation codes the case is about do occur
        const auto has = [&](unsigned char code) { return std::count(xq.begin(), xq.end(), code) > 0; };
        expect(has(0x80) && has(0x7e) && has(0xfe), label + ": x codes include 0x80, 0x7E and 0xFE");
    }
    // Reference: double GEMMs over the dequantized weights; w8a8 quantizes x (its stored
    // values) and a (from its f32 value) as the contract says.
    const double lim = c.limit;
    // w8a8 holds `a` in f32, so the activation codes are the contract's (no flip budget).
    const double tol = atol_of(dtype);
    int shown = 0;
    for (int t = 0; t < T; ++t) {
        std::vector<float> xr(x.vals.begin() + (size_t)t * H, x.vals.begin() + (size_t)(t + 1) * H);
        std::vector<double> xin(xr.begin(), xr.end());
        if (c.a8) xin = quant_row_ref(xr, c.ue8m0);
        std::vector<double> yt(H, 0.0);
        for (int j = 0; j < k; ++j) {
            const int e = ids[t * k + j];
            if (e < 0 || tw[t * k + j] == 0.0f) continue;
            std::vector<float> a(I);
            for (int i = 0; i < I; ++i) {
                double g = 0, u = 0;
                for (int h = 0; h < H; ++h) {
                    g += xin[h] * W13(e, i, h);
                    u += xin[h] * W13(e, I + i, h);
                }
                g = std::min(g, lim);
                u = std::max(std::min(u, lim), -lim);
                a[i] = (float)(g / (1.0 + std::exp(-g)) * u);
            }
            std::vector<double> ain(a.begin(), a.end());
            if (c.a8) ain = quant_row_ref(a, c.ue8m0);
            for (int n = 0; n < H; ++n) {
                double o = 0;
                for (int i = 0; i < I; ++i) o += ain[i] * W2(e, n, i);
                yt[n] += tw[t * k + j] * o;
            }
        }
        for (int n = 0; n < H; ++n) {
            const double got = read_out(Tensor{y, {}}, (size_t)t * H + n, dtype);
            const bool ok = close(got, yt[n], tol, tol);
            if (!ok && shown++ < 3) {
                std::snprintf(buf, sizeof buf, "%s: y[%d,%d] = %g want %g", label.c_str(), t, n, got, yt[n]);
                expect(false, buf);
            } else if (ok) {
                ++g_checks;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// mla_kv_quantize (contract v2 fp8_ds_v32), byte for byte
// ---------------------------------------------------------------------------------------
// bf16 of v by comparing its two neighbours (ties to the even pattern).
static uint16_t bf16_ref(float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    const uint32_t lo = b & 0xffff0000u, hi = lo + 0x10000u;
    float flo, fhi;
    std::memcpy(&flo, &lo, 4);
    std::memcpy(&fhi, &hi, 4);
    const double dl = std::fabs((double)v - flo), dh = std::fabs((double)fhi - v);
    const uint32_t pick = dl < dh ? lo : dh < dl ? hi : ((lo >> 16) % 2 == 0 ? lo : hi);
    return (uint16_t)(pick >> 16);
}

// corrupt: 0 none; 1 a NaN at row 2 element 300 and an inf later (row 3).
static void kv_quantize_case(int dtype, int corrupt) {
    const int N = 5;
    std::vector<float> v = randn((size_t)N * 576, 1.0f);
    std::uniform_real_distribution<float> ex(-10.0f, 10.0f);
    for (int d = 0; d < 576; ++d) v[576 + d] = std::exp2(ex(rng)) * (d % 2 ? -1.0f : 1.0f);  // 1e-3 .. 1e3
    for (int d = 128; d < 256; ++d) v[2 * 576 + d] = 0.0f;                                      // an all-zero tile
    for (int d = 0; d < 576; d += 7) v[3 * 576 + d] = -0.0f;                                      // -0.0 -> 0x80
    for (int d = 0; d < 128; ++d) v[4 * 576 + d] = 1e-6f * (d - 64);                               // sc = 1e-4 floor
    unsigned long long want_err = ~0ull;
    if (corrupt) {
        v[2 * 576 + 300] = NAN;
        v[3 * 576 + 10] = INFINITY;
    }
    Tensor kv = make(v, dtype);
    if (corrupt) {
        float nanv = kv.vals[2 * 576 + 300];
        uint32_t bits;
        std::memcpy(&bits, &nanv, 4);
        want_err = ((unsigned long long)(2 * 576 + 300) << 32) | bits;
    }
    std::vector<unsigned char> out((size_t)N * 656, 0xa5);
    unsigned long long err = ~0ull;
    moemla_emu_launch({(unsigned)N, 1, 1}, 128, [&] {
        if (dtype == 0) moemla_mla_kv_quantize_f32((const float*)kv.ptr(), out.data(), &err);
        else if (dtype == 1) moemla_mla_kv_quantize_f16((const moemla_f16*)kv.ptr(), out.data(), &err);
        else moemla_mla_kv_quantize_bf16((const moemla_bf16*)kv.ptr(), out.data(), &err);
    });
    char buf[200];
    std::snprintf(buf, sizeof buf, "mla_kv_quantize %s corrupt%d: err %#llx want %#llx", dname(dtype), corrupt, err,
                  want_err);
    expect(err == want_err, buf);
    if (corrupt) return;
    for (int r = 0; r < N; ++r) {
        std::vector<unsigned char> want(656);
        for (int t = 0; t < 4; ++t) {
            float amax = 0.0f;
            for (int d = 0; d < 128; ++d) amax = std::max(amax, std::fabs(kv.vals[(size_t)r * 576 + t * 128 + d]));
            float sc = std::max(amax / 448.0f, 1e-4f);
            int e2;
            const double m = std::frexp((double)sc, &e2);  // sc = m * 2^e2, m in [0.5, 1)
            sc = m == 0.5 ? sc : (float)std::ldexp(1.0, e2);
            for (int d = 0; d < 128; ++d)
                want[t * 128 + d] = (unsigned char)e4m3_encode_ref(kv.vals[(size_t)r * 576 + t * 128 + d] / sc);
            std::memcpy(&want[512 + 4 * t], &sc, 4);
        }
        for (int d = 0; d < 64; ++d) {
            const uint16_t h = bf16_ref(kv.vals[(size_t)r * 576 + 512 + d]);
            want[528 + 2 * d] = (unsigned char)(h & 0xff);
            want[529 + 2 * d] = (unsigned char)(h >> 8);
        }
        int first = -1;
        for (int b = 0; b < 656 && first < 0; ++b)
            if (out[(size_t)r * 656 + b] != want[b]) first = b;
        std::snprintf(buf, sizeof buf, "mla_kv_quantize %s row %d: first differing byte %d (%#04x want %#04x)", dname(dtype),
                      r, first, first < 0 ? 0 : out[(size_t)r * 656 + first], first < 0 ? 0 : want[first]);
        expect(first < 0, buf);
    }
}

// ---------------------------------------------------------------------------------------
// mla_decode
// ---------------------------------------------------------------------------------------
struct MlaCase {
    int B, s_q, h_q, h_kv, d_qk, d_v, block_size, max_blocks, num_blocks;
    bool causal;
    std::vector<int> seqlens;
    int num_splits, block_q, block_n;
    bool fp8 = false;  // kv_format fp8_ds_v32 (d_qk 576, d_v 512, h_kv 1)
};

// A 656-byte fp8_ds_v32 cache from random codes (NaN codes excluded), non-power-of-two
// tile scales and bf16 rope values; slots whose kvv value is NaN (unused, tails) hold 0xFF
// bytes (NaN codes and NaN scales). t.vals: the dequantized rows (576 per slot), exact.
static Tensor make_ds_v32(const std::vector<float>& kvv, size_t slots) {
    Tensor t;
    t.bytes.assign(slots * 656, 0xff);
    t.vals.assign(slots * 576, NAN);
    std::uniform_int_distribution<int> code(0, 255);
    std::uniform_real_distribution<float> sd(1.0f, 1.9f);
    for (size_t s = 0; s < slots; ++s) {
        if (std::isnan(kvv[s * 576])) continue;
        unsigned char* row = &t.bytes[s * 656];
        float sc[4];
        for (int i = 0; i < 4; ++i) {
            sc[i] = sd(rng) * 0.01f;
            std::memcpy(row + 512 + 4 * i, &sc[i], 4);
        }
        for (int d = 0; d < 512; ++d) {
            int c;
            do c = code(rng);
            while ((c & 0x7f) == 0x7f || (c & 0x7f) > 0x6e);  // |v| <= 240
            row[d] = (unsigned char)c;
            t.vals[s * 576 + d] = (float)(e4m3_ref(c) * sc[d / 128]);
        }
        for (int r = 0; r < 64; ++r) {
            const uint16_t h = bf16_ref(kvv[s * 576 + 512 + r]);
            row[528 + 2 * r] = (unsigned char)(h & 0xff);
            row[529 + 2 * r] = (unsigned char)(h >> 8);
            uint32_t bits = (uint32_t)h << 16;
            std::memcpy(&t.vals[s * 576 + 512 + r], &bits, 4);
        }
    }
    return t;
}

static void mla_case(int dtype, const MlaCase& c, int corrupt /*0 none, 1 seqlen, 2 table*/) {
    Tensor q = make(randn((size_t)c.B * c.s_q * c.h_q * c.d_qk, 1.0f), dtype);
    std::vector<float> kvv = randn((size_t)c.num_blocks * c.block_size * c.h_kv * c.d_qk, 1.0f);
    // Block table: a random permutation; unused entries hold 2147480000 (FlashMLA's tests).
    std::vector<int> perm(c.num_blocks);
    for (int i = 0; i < c.num_blocks; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> table((size_t)c.B * c.max_blocks, 2147480000);
    std::vector<bool> used_block(c.num_blocks, false);
    int next = 0;
    std::vector<int> lens = c.seqlens;
    for (int b = 0; b < c.B; ++b) {
        int used = (lens[b] + c.block_size - 1) / c.block_size;
        for (int j = 0; j < used; ++j) {
            table[b * c.max_blocks + j] = perm[next];
            used_block[perm[next]] = true;
            ++next;
        }
    }
    // NaN in every slot no sequence may read: unused blocks and tails past seqlen.
    for (int b = 0; b < c.B; ++b) {
        int used = (lens[b] + c.block_size - 1) / c.block_size;
        for (int p = lens[b]; p < used * c.block_size; ++p) {
            int blk = table[b * c.max_blocks + p / c.block_size];
            for (int h = 0; h < c.h_kv; ++h)
                for (int d = 0; d < c.d_qk; ++d)
                    kvv[(((size_t)blk * c.block_size + p % c.block_size) * c.h_kv + h) * c.d_qk + d] = NAN;
        }
    }
    for (int blk = 0; blk < c.num_blocks; ++blk)
        if (!used_block[blk])
            for (size_t i = 0; i < (size_t)c.block_size * c.h_kv * c.d_qk; ++i)
                kvv[(size_t)blk * c.block_size * c.h_kv * c.d_qk + i] = NAN;
    Tensor kv = c.fp8 ? make_ds_v32(kvv, (size_t)c.num_blocks * c.block_size) : make(kvv, dtype);
    // Flags: all ones when clean, else (first bad position << 32) | the value there.
    auto flag = [](unsigned long long pos, int value) { return (pos << 32) | (unsigned)value; };
    unsigned long long want_err0 = ~0ull, want_err1 = ~0ull;
    if (corrupt == 1) {
        lens[1] = c.max_blocks * c.block_size + 1;
        lens[2] = -3;
        want_err0 = flag(1, lens[1]);
    } else if (corrupt == 2) {
        table[2 * c.max_blocks + 0] = c.num_blocks;  // used (seqlen of row 2 > 0)
        table[1 * c.max_blocks + 1] = -1;            // used if seqlen of row 1 > block_size
        want_err1 = lens[1] > c.block_size ? flag(1 * c.max_blocks + 1, -1) : flag(2 * c.max_blocks, c.num_blocks);
    }

    const int out_rows = c.B * c.s_q * c.h_q;
    std::vector<float> o_part((size_t)c.num_splits * out_rows * c.d_v, NAN), lse_part((size_t)c.num_splits * out_rows, NAN);
    const size_t es = dtype == 0 ? 4 : 2;
    Tensor o;
    o.bytes.assign((size_t)out_rows * c.d_v * es, 0xff);  // NaN bytes: every element must be written
    std::vector<float> lse(out_rows, NAN);
    unsigned long long err[2] = {~0ull, ~0ull};
    const float scale = 0.1352337788608801f;
    moemla_emu_launch({(unsigned)((c.B * c.max_blocks + 255) / 256), 1, 1}, 256, [&] {
        moemla_mla_check(table.data(), lens.data(), c.B, c.max_blocks, c.block_size, c.num_blocks, err);
    });
    const int group = c.h_q / c.h_kv;
    moemla_dim3 grid{(unsigned)c.num_splits, (unsigned)((c.s_q * group + c.block_q - 1) / c.block_q), (unsigned)(c.B * c.h_kv)};
#define MOEMLA_RUN_MLA(SFX, TT)                                                                                   \
    moemla_emu_launch(grid, MOEMLA_MLA_THREADS, [&] {                                                             \
        if (c.fp8)                                                                                                \
            moemla_mla_decode_fp8_##SFX((const TT*)q.ptr(), (const unsigned char*)kv.ptr(), table.data(),         \
                                        lens.data(), o_part.data(), lse_part.data(), c.B, c.s_q, c.h_q, c.h_kv,   \
                                        c.d_qk, c.d_v, c.num_blocks, c.block_size, c.max_blocks, c.causal, scale, \
                                        c.num_splits, c.block_q, c.block_n);                                      \
        else                                                                                                      \
            moemla_mla_decode_##SFX((const TT*)q.ptr(), (const TT*)kv.ptr(), table.data(), lens.data(),           \
                                    o_part.data(), lse_part.data(), c.B, c.s_q, c.h_q, c.h_kv, c.d_qk, c.d_v,     \
                                    c.num_blocks, c.block_size, c.max_blocks, c.causal, scale, c.num_splits,      \
                                    c.block_q, c.block_n);                                                        \
    });                                                                                                           \
    moemla_emu_launch({(unsigned)out_rows, 1, 1}, 128, [&] {                                                      \
        moemla_mla_combine_##SFX(o_part.data(), lse_part.data(), (TT*)o.ptr(), lse.data(), c.B, c.s_q, c.h_q,     \
                                 c.d_v, c.num_splits);                                                           \
    });
    if (dtype == 0) {
        MOEMLA_RUN_MLA(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_MLA(f16, moemla_f16)
    } else {
        MOEMLA_RUN_MLA(bf16, moemla_bf16)
    }
    char buf[240];
    std::snprintf(buf, sizeof buf, "mla_check %s corrupt%d: err {%#llx, %#llx} want {%#llx, %#llx}", dname(dtype),
                  corrupt, err[0], err[1], want_err0, want_err1);
    expect(err[0] == want_err0 && err[1] == want_err1, buf);
    if (corrupt) return;

    int shown = 0;
    for (int b = 0; b < c.B; ++b)
        for (int i = 0; i < c.s_q; ++i)
            for (int h = 0; h < c.h_q; ++h) {
                const int kvh = h / group;
                long L = c.causal ? (long)lens[b] - c.s_q + i + 1 : lens[b];
                std::vector<double> sc;
                double m = -INFINITY;
                for (long p = 0; p < L; ++p) {
                    int blk = table[b * c.max_blocks + p / c.block_size];
                    double dot = 0;
                    for (int d = 0; d < c.d_qk; ++d)
                        dot += (double)q.vals[(((size_t)b * c.s_q + i) * c.h_q + h) * c.d_qk + d] *
                               kv.vals[(((size_t)blk * c.block_size + p % c.block_size) * c.h_kv + kvh) * c.d_qk + d];
                    sc.push_back(dot * scale);
                    m = std::max(m, dot * scale);
                }
                double denom = 0;
                for (double s : sc) denom += std::exp(s - m);
                const size_t orow = ((size_t)b * c.s_q + i) * c.h_q + h;
                double want_lse = L > 0 ? m + std::log(denom) : -INFINITY;
                double got_lse = lse[((size_t)b * c.h_q + h) * c.s_q + i];
                std::snprintf(buf, sizeof buf, "mla %s b%d i%d h%d: lse %g want %g", dname(dtype), b, i, h, got_lse, want_lse);
                expect(close(got_lse, want_lse, atol_of(dtype), atol_of(dtype)), buf);
                for (int dv = 0; dv < c.d_v; ++dv) {
                    double want = 0;
                    for (long p = 0; p < L; ++p) {
                        int blk = table[b * c.max_blocks + p / c.block_size];
                        want += std::exp(sc[p] - m) / denom *
                                kv.vals[(((size_t)blk * c.block_size + p % c.block_size) * c.h_kv + kvh) * c.d_qk + dv];
                    }
                    double got = read_out(o, orow * c.d_v + dv, dtype);
                    bool ok = close(got, want, atol_of(dtype), atol_of(dtype));
                    if (!ok && shown++ < 4) {
                        std::snprintf(buf, sizeof buf, "mla %s b%d i%d h%d dv%d: o %g want %g (L %ld)", dname(dtype), b, i,
                                      h, dv, got, want, L);
                        expect(false, buf);
                    } else if (ok) {
                        ++g_checks;
                    }
                }
            }
}

// ---------------------------------------------------------------------------------------
// mla_sparse_decode
// ---------------------------------------------------------------------------------------
struct SparseCase {
    int B, s_q, h_q, d_qk, d_v, block_size, num_blocks, topk;
    std::vector<int> lens;     // topk_length, empty: none (every entry counts)
    std::vector<float> sink;   // attn_sink [Hq], empty: none
    int num_splits, block_q, block_n;
    bool fp8 = false;          // kv_format fp8_ds_v32 (d_qk 576, d_v 512)
};

// Indices per (b, i): valid slots, -1 and repeats of earlier entries below the length;
// past it, values no slot has (never read). Query row (b 0, i 1) holds only -1. Slots no
// counted entry names hold NaN (dense) or 0xFF bytes (FP8): reading one would show.
static void sparse_case(int dtype, const SparseCase& c, int corrupt /*0 none, 1 topk_length, 2 indices*/) {
    const int slots = c.num_blocks * c.block_size;
    const int rows = c.B * c.s_q;
    Tensor q = make(randn((size_t)rows * c.h_q * c.d_qk, 1.0f), dtype);
    std::vector<int> lens = c.lens;
    std::vector<int> idx((size_t)rows * c.topk);
    std::uniform_int_distribution<int> slot_d(0, slots - 1), kind(0, 5);
    std::vector<bool> used(slots, false);
    for (int r = 0; r < rows; ++r) {
        const int b = r / c.s_q;
        const int len = lens.empty() ? c.topk : lens[b];
        for (int j = 0; j < c.topk; ++j) {
            int& e = idx[(size_t)r * c.topk + j];
            if (j >= len) {
                e = (j % 2) ? 2147480000 : -7;
            } else if (r == 1) {
                e = -1;
            } else {
                const int k = kind(rng);
                e = k == 0 ? -1 : (k == 1 && j > 0) ? idx[(size_t)r * c.topk + j - 1] : slot_d(rng);
                if (e >= 0) used[e] = true;
            }
        }
    }
    std::vector<float> kvv = randn((size_t)slots * c.d_qk, 1.0f);
    for (int s = 0; s < slots; ++s)
        if (!used[s])
            for (int d = 0; d < c.d_qk; ++d) kvv[(size_t)s * c.d_qk + d] = NAN;
    Tensor kv = c.fp8 ? make_ds_v32(kvv, slots) : make(kvv, dtype);
    auto flag = [](unsigned long long pos, int value) { return (pos << 32) | (unsigned)value; };
    unsigned long long want_err0 = ~0ull, want_err1 = ~0ull;
    if (corrupt == 1) {
        lens[2] = c.topk + 1;
        lens[1] = -1;
        want_err0 = flag(1, -1);
    } else if (corrupt == 2) {
        // Two bad counted entries (the later one in a later row) and one past a length.
        const int r2 = c.s_q * 2 + 1;  // b 2
        idx[(size_t)r2 * c.topk + 1] = -2;
        idx[(size_t)c.topk * 2 + 3] = slots;  // b 1 (or 2), i 0 or 2
        want_err1 = flag((unsigned long long)c.topk * 2 + 3, slots);
    }
    const int out_rows = rows * c.h_q;
    std::vector<float> o_part((size_t)c.num_splits * out_rows * c.d_v, NAN), lse_part((size_t)c.num_splits * out_rows, NAN);
    const size_t es = dtype == 0 ? 4 : 2;
    Tensor o;
    o.bytes.assign((size_t)out_rows * c.d_v * es, 0xff);
    std::vector<float> lse(out_rows, NAN);
    unsigned long long err[2] = {~0ull, ~0ull};
    const float scale = 0.1352337788608801f;
    const int* len_ptr = lens.empty() ? nullptr : lens.data();
    const float* sink_ptr = c.sink.empty() ? nullptr : c.sink.data();
    moemla_emu_launch({(unsigned)((rows * c.topk + 255) / 256), 1, 1}, 256, [&] {
        moemla_mla_sparse_check(idx.data(), len_ptr, c.B, c.s_q, c.topk, slots, err);
    });
    moemla_dim3 grid{(unsigned)c.num_splits, (unsigned)((c.h_q + c.block_q - 1) / c.block_q), (unsigned)rows};
#define MOEMLA_RUN_SPARSE(SFX, TT)                                                                                \
    moemla_emu_launch(grid, MOEMLA_MLA_THREADS, [&] {                                                             \
        if (c.fp8)                                                                                                \
            moemla_mla_sparse_decode_fp8_##SFX((const TT*)q.ptr(), (const unsigned char*)kv.ptr(), idx.data(),    \
                                               len_ptr, o_part.data(), lse_part.data(), c.B, c.s_q, c.h_q,        \
                                               c.d_qk, c.d_v, c.num_blocks, c.block_size, c.topk, scale,          \
                                               c.num_splits, c.block_q, c.block_n);                               \
        else                                                                                                      \
            moemla_mla_sparse_decode_##SFX((const TT*)q.ptr(), (const TT*)kv.ptr(), idx.data(), len_ptr,          \
                                           o_part.data(), lse_part.data(), c.B, c.s_q, c.h_q, c.d_qk, c.d_v,      \
                                           c.num_blocks, c.block_size, c.topk, scale, c.num_splits, c.block_q,    \
                                           c.block_n);                                                            \
    });                                                                                                           \
    moemla_emu_launch({(unsigned)out_rows, 1, 1}, 128, [&] {                                                      \
        moemla_mla_sparse_combine_##SFX(o_part.data(), lse_part.data(), sink_ptr, (TT*)o.ptr(), lse.data(), c.B,  \
                                        c.s_q, c.h_q, c.d_v, c.num_splits);                                       \
    });
    if (dtype == 0) {
        MOEMLA_RUN_SPARSE(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_SPARSE(f16, moemla_f16)
    } else {
        MOEMLA_RUN_SPARSE(bf16, moemla_bf16)
    }
    char buf[240];
    std::snprintf(buf, sizeof buf, "sparse_check %s corrupt%d: err {%#llx, %#llx} want {%#llx, %#llx}", dname(dtype),
                  corrupt, err[0], err[1], want_err0, want_err1);
    expect(err[0] == want_err0 && err[1] == want_err1, buf);
    if (corrupt) return;

    int shown = 0;
    for (int r = 0; r < rows; ++r) {
        const int b = r / c.s_q, i = r % c.s_q;
        const int len = lens.empty() ? c.topk : lens[b];
        std::vector<int> att;
        for (int j = 0; j < len; ++j)
            if (idx[(size_t)r * c.topk + j] != -1) att.push_back(idx[(size_t)r * c.topk + j]);
        for (int h = 0; h < c.h_q; ++h) {
            std::vector<double> sc;
            double m = -INFINITY;
            for (int s : att) {
                double dot = 0;
                for (int d = 0; d < c.d_qk; ++d)
                    dot += (double)q.vals[((size_t)r * c.h_q + h) * c.d_qk + d] * kv.vals[(size_t)s * c.d_qk + d];
                sc.push_back(dot * scale);
                m = std::max(m, dot * scale);
            }
            double denom = 0;
            for (double s : sc) denom += std::exp(s - m);
            const double want_lse = att.empty() ? -INFINITY : m + std::log(denom);
            double factor = 1.0;
            if (!c.sink.empty() && !att.empty()) factor = 1.0 / (1.0 + std::exp((double)c.sink[h] - want_lse));
            const double got_lse = lse[((size_t)b * c.h_q + h) * c.s_q + i];
            std::snprintf(buf, sizeof buf, "sparse %s b%d i%d h%d: lse %g want %g", dname(dtype), b, i, h, got_lse,
                          want_lse);
            expect(att.empty() ? got_lse == -INFINITY : close(got_lse, want_lse, atol_of(dtype), atol_of(dtype)), buf);
            for (int dv = 0; dv < c.d_v; ++dv) {
                double want = 0;
                for (size_t j = 0; j < att.size(); ++j)
                    want += std::exp(sc[j] - m) / denom * kv.vals[(size_t)att[j] * c.d_qk + dv];
                want *= factor;
                const double got = read_out(o, ((size_t)r * c.h_q + h) * c.d_v + dv, dtype);
                const bool ok = close(got, want, atol_of(dtype), atol_of(dtype));
                if (!ok && shown++ < 4) {
                    std::snprintf(buf, sizeof buf, "sparse %s b%d i%d h%d dv%d: o %g want %g (%zu entries)",
                                  dname(dtype), b, i, h, dv, got, want, att.size());
                    expect(false, buf);
                } else if (ok) {
                    ++g_checks;
                }
            }
        }
    }
}

#include "dsa_indexer_cases.h"
#include "shared_experts_cases.h"

// Sections run: all, or those named on the command line (route, experts, mla, ...).
static std::vector<std::string> g_only;
static bool want(const char* section) {
    return g_only.empty() || std::find(g_only.begin(), g_only.end(), section) != g_only.end();
}

int main(int argc, char** argv) {
    g_emu.warp_size = MOEMLA_WARP_SIZE;
    for (int i = 1; i < argc; ++i) g_only.push_back(argv[i]);
    for (int dtype = 0; dtype < 3; ++dtype) {
        if (dtype == 0 && want("fp8")) fp8_conversion_checks();
        if (want("route")) {
        // DeepSeek-V3 routing; V2 (softmax, max); V2-Lite (no groups); a one-expert-group edge.
        route_case(dtype, {5, 256, 8, 8, 4, 0, 1, 1, 2.5f, true});
        route_case(dtype, {3, 160, 6, 8, 3, 1, 0, 0, 16.0f, false});
        route_case(dtype, {4, 64, 6, 1, 1, 1, 0, 0, 1.0f, false});
        route_case(dtype, {2, 300, 7, 300, 20, 0, 1, 1, 1.5f, true});
        route_edge_cases(dtype);
        // DeepSeek-V4 routing: sqrt-softplus with bias, no groups; logits past 20 and far
        // below 0 (ln(1 + e^x) for tiny e^x); with groups too.
        route_case(dtype, {4, 256, 6, 1, 1, 2, 0, 1, 1.5f, true});
        route_run(dtype, {3, 64, 6, 4, 2, 2, 1, 1, 2.5f, true}, randn(3 * 64, 30.0f), randn(64, 0.5f), "sqrtsp-wide");
        route_run(dtype, {2, 32, 4, 1, 1, 2, 0, 1, 1.5f, false}, std::vector<float>(64, -1000.0f),
                  std::vector<float>(32, 0.0f), "sqrtsp-all-zero-renorm");
        for (int sf : {0, 2}) route_hash_case(dtype, sf, 0);
        for (int corrupt = 1; corrupt <= 3; ++corrupt) route_hash_case(dtype, 1, corrupt);
        }
        if (want("experts")) {

        experts_case(dtype, 7, 40, 24, 5, 3);    // vector loads, ragged tiles
        experts_case(dtype, 9, 36, 70, 3, 2);    // scalar loads (H % 8 != 0), I > 64
        experts_case(dtype, 150, 72, 16, 2, 2);  // segments longer than one tile
        experts_case(dtype, 4, 16, 8, 4, 3, {.bad_slot = 5});  // bad ids: flag = first bad slot
        experts_case(dtype, 11, 40, 24, 4, 3, {.poison = true});  // weight 0 / id -1 skip a NaN expert
        experts_case(dtype, 5, 24, 16, 3, 2, {.nan_weight = 3});  // a NaN weight is data
        }
        if (want("experts_v2")) {
        // H, I not multiples of 128 (partial blocks; a w13 block row straddling W1/W3).
        experts_fp8_case(dtype, {5, 160, 72, 3, 2});                                  // w8a16, vector loads
        experts_fp8_case(dtype, {4, 140, 40, 2, 2, true, false, false, 0.75f});       // scalar loads, clamp bites
        experts_fp8_case(dtype, {5, 160, 136, 3, 2, true, true, false});              // w8a8, f32 scales
        experts_fp8_case(dtype, {3, 140, 40, 2, 2, true, true, true, 0.75f});         // w8a8 ue8m0, clamp
        // w8a8 over several 128-blocks plus partial ones in both GEMMs (H 300 = 2 x 128 + 44,
        // I 200 = 128 + 72; scalar loads), x codes 0x80 / +-448.
        experts_fp8_case(dtype, {24, 300, 200, 2, 2, true, true, false, INFINITY, true});
        experts_fp8_case(dtype, {4, 40, 24, 3, 2, false, false, false, 0.5f});        // clamp, run-dtype weights
        }
        if (want("experts_shared")) experts_shared_cases(dtype);
        if (want("kv_quantize")) {
            kv_quantize_case(dtype, 0);
            kv_quantize_case(dtype, 1);
        }
        if (want("mla")) {

        MlaCase base{3, 2, 4, 2, 40, 32, 5, 7, 24, true, {0, 13, 30}, 3, 16, 16};
        mla_case(dtype, base, 0);
        MlaCase nc = base;
        nc.causal = false;
        nc.block_q = 4;
        nc.block_n = 32;
        nc.num_splits = 2;
        mla_case(dtype, nc, 0);
        MlaCase wide{2, 1, 16, 1, 72, 64, 16, 4, 10, true, {64, 37}, 1, 16, 32};  // d_qk % 16 != 0
        mla_case(dtype, wide, 0);
        MlaCase odd{2, 3, 6, 3, 21, 13, 3, 9, 20, true, {2, 27}, 4, 16, 16};  // scalar loads, Sq 3
        mla_case(dtype, odd, 0);
        mla_case(dtype, base, 1);
        mla_case(dtype, base, 2);
        }
        if (want("mla_fp8") && dtype != 0) {
            // The 656-byte FP8 cache: DeepSeek dims, 0xFF bytes in unused slots and tails,
            // non-power-of-two scales; causal Sq 2 over 2 splits, and a 16-head group.
            MlaCase f{2, 2, 2, 1, 576, 512, 16, 3, 8, true, {37, 0}, 2, 16, 16, true};
            mla_case(dtype, f, 0);
            MlaCase g{1, 1, 16, 1, 576, 512, 64, 1, 2, false, {50}, 1, 16, 16, true};
            mla_case(dtype, g, 0);
        }
        if (want("sparse")) {
            // Decode Sq 2 with topk_length (0 for one batch), sinks (finite, -inf, +inf),
            // two splits; MTP Sq 4 without lengths or sinks, a partial head tile, scalar
            // loads; prefill-like B 1 Sq 20; bad lengths and bad indices flagged, never read.
            const float inf = INFINITY;
            SparseCase d{3, 2, 4, 40, 32, 5, 8, 24, {24, 10, 0}, {0.3f, -inf, inf, 1.7f}, 2, 16, 16};
            sparse_case(dtype, d, 0);
            SparseCase mtp{1, 4, 6, 21, 13, 3, 9, 20, {}, {}, 2, 4, 16};
            sparse_case(dtype, mtp, 0);
            SparseCase pre{1, 20, 1, 16, 8, 4, 8, 6, {5}, {-0.5f}, 1, 16, 16};
            sparse_case(dtype, pre, 0);
            if (dtype == 0) {  // the checks and the decode's skipping do not depend on the dtype
                SparseCase bad{3, 2, 2, 40, 32, 5, 8, 24, {24, 10, 20}, {}, 2, 16, 16};
                sparse_case(dtype, bad, 1);
                sparse_case(dtype, bad, 2);
            }
        }
        if (want("indexer")) indexer_cases(dtype);
        if (want("sparse_fp8") && dtype != 0) {
            // The 656-byte FP8 cache at DeepSeek dims: one 16-head tile, topk_length < topk.
            SparseCase f{1, 2, 16, 576, 512, 16, 3, 40, {33}, {0.5f, -1.0f, 0.0f, 2.0f, 0.5f, -1.0f, 0.0f, 2.0f,
                                                              0.5f, -1.0f, 0.0f, 2.0f, 0.5f, -1.0f, 0.0f, 2.0f},
                         2, 16, 16, true};
            sparse_case(dtype, f, 0);
        }
    }
    std::printf("%s: %d checks, %d failures (warp %d%s)\n", g_failures ? "FAILED" : "ok", g_checks, g_failures,
                MOEMLA_WARP_SIZE,
#if defined(MOEMLA_EMULATE_MMA_FP8)
                ", emulated mma.sync incl. m16n8k32 e4m3"
#elif defined(MOEMLA_EMULATE_MMA)
                ", emulated mma.sync"
#else
                ""
#endif
    );
    return g_failures ? 1 : 0;
}
