// shared_experts_cases.h — moe_experts with fused shared experts (contract v2), included by
// kernels_test.cpp (section "experts_shared"): the routed launches, then
// moemla_moe_shared_rows and the run-dtype gate/up and down over every token (top_k 1, Is),
// then moemla_moe_combine_shared_*; against a double reference written from the contract:
// y[t] = sum_j w[t,j] E_ids[t,j](x[t]) + sum_s S_s(x[t]), clamp on both, one rounding.

struct SharedCase {
    int T, H, I, E, k, S, Is;
    float limit = INFINITY;
};

static void experts_shared_case(int dtype, const SharedCase& c) {
    const int T = c.T, H = c.H, I = c.I, E = c.E, k = c.k, S = c.S, Is = c.Is;
    Tensor x = make(randn((size_t)T * H, 1.0f), dtype);
    Tensor w13 = make(randn((size_t)E * 2 * I * H, 0.2f), dtype), w2 = make(randn((size_t)E * H * I, 0.2f), dtype);
    Tensor s13 = make(randn((size_t)S * 2 * Is * H, 0.2f), dtype), s2 = make(randn((size_t)S * H * Is, 0.2f), dtype);
    std::vector<int> ids((size_t)T * k);
    std::uniform_int_distribution<int> pick(-1, E - 1);
    for (auto& id : ids) id = pick(rng);
    for (int j = 0; j < k; ++j) ids[1 * k + j] = -1;  // token 1: shared experts only
    std::vector<float> tw = randn((size_t)T * k, 0.5f);

    const int slots = T * k;
    const int max_tiles = (slots + std::min(E, slots) * 63) / 64;
    const int rows = max_tiles * 64;
    const int seg_tiles = (T + 63) / 64, s_tiles = S * seg_tiles, s_rows = s_tiles * 64;
    std::vector<int> sorted_rows(rows, -9), slot_pos(slots, -9), tile_expert(std::max(max_tiles, 1), -9), meta(1, -9);
    std::vector<int> sh_rows(s_rows, -9), sh_tile_expert(s_tiles, -9), sh_meta(1, -9);
    unsigned long long err = ~0ull;
    const size_t es = dtype == 0 ? 4 : 2;
    // Workspaces and output start as NaN bytes: the kernels must write what they read.
    std::vector<unsigned char> act((size_t)rows * I * es, 0xff), sh_act((size_t)s_rows * Is * es, 0xff);
    std::vector<unsigned char> y((size_t)T * H * es, 0xff);
    std::vector<float> yslot((size_t)rows * H, NAN), yshared((size_t)s_rows * H, NAN);

    moemla_emu_launch({1, 1, 1}, 1024, [&] {
        moemla_moe_align(ids.data(), tw.data(), slots, E, max_tiles, sorted_rows.data(), slot_pos.data(),
                         tile_expert.data(), meta.data(), &err);
    });
    moemla_emu_launch({(unsigned)s_tiles, 1, 1}, 64, [&] {
        moemla_moe_shared_rows(T, seg_tiles, sh_rows.data(), sh_tile_expert.data(), sh_meta.data());
    });
    moemla_dim3 g1{(unsigned)max_tiles, (unsigned)((I + 63) / 64), 1}, g2{(unsigned)max_tiles, (unsigned)((H + 63) / 64), 1};
    moemla_dim3 s1{(unsigned)s_tiles, (unsigned)((Is + 63) / 64), 1}, s2g{(unsigned)s_tiles, (unsigned)((H + 63) / 64), 1};
#define MOEMLA_RUN_SHARED(SFX, TT)                                                                                  \
    moemla_emu_launch(g1, 128, [&] {                                                                                \
        moemla_moe_gate_up_##SFX((const TT*)x.ptr(), (const TT*)w13.ptr(), sorted_rows.data(), tile_expert.data(),   \
                                 meta.data(), (TT*)act.data(), H, I, k, c.limit);                                   \
    });                                                                                                             \
    moemla_emu_launch(g2, 128, [&] {                                                                                \
        moemla_moe_down_##SFX((const TT*)act.data(), (const TT*)w2.ptr(), sorted_rows.data(), tile_expert.data(),    \
                              meta.data(), yslot.data(), H, I);                                                     \
    });                                                                                                             \
    moemla_emu_launch(s1, 128, [&] {                                                                                \
        moemla_moe_gate_up_##SFX((const TT*)x.ptr(), (const TT*)s13.ptr(), sh_rows.data(), sh_tile_expert.data(),    \
                                 sh_meta.data(), (TT*)sh_act.data(), H, Is, 1, c.limit);                            \
    });                                                                                                             \
    moemla_emu_launch(s2g, 128, [&] {                                                                               \
        moemla_moe_down_##SFX((const TT*)sh_act.data(), (const TT*)s2.ptr(), sh_rows.data(), sh_tile_expert.data(), \
                              sh_meta.data(), yshared.data(), H, Is);                                               \
    });                                                                                                             \
    moemla_emu_launch({(unsigned)T, 1, 1}, 256, [&] {                                                               \
        moemla_moe_combine_shared_##SFX(yslot.data(), slot_pos.data(), tw.data(), yshared.data(), S,              \
                                        seg_tiles * 64, (TT*)y.data(), H, k);                                       \
    });
    if (dtype == 0) {
        MOEMLA_RUN_SHARED(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_SHARED(f16, moemla_f16)
    } else {
        MOEMLA_RUN_SHARED(bf16, moemla_bf16)
    }
#undef MOEMLA_RUN_SHARED

    char buf[240];
    std::snprintf(buf, sizeof buf, "moe_experts shared %s T%d H%d I%d E%d k%d S%d Is%d limit %g", dname(dtype), T, H,
                  I, E, k, S, Is, c.limit);
    const std::string label = buf;
    expect(err == ~0ull, label + ": flag");
    expect(sh_meta[0] == s_tiles, label + ": shared meta");
    const double lim = c.limit;
    // One expert's output for token t: W2 swiglu_c(W1 x, W3 x), in double.
    auto mlp = [&](const Tensor& a13, const Tensor& a2, int e, int inter, int t, int n) {
        double out = 0;
        for (int i = 0; i < inter; ++i) {
            double g = 0, u = 0;
            for (int h = 0; h < H; ++h) {
                g += (double)x.vals[(size_t)t * H + h] * a13.vals[((size_t)e * 2 * inter + i) * H + h];
                u += (double)x.vals[(size_t)t * H + h] * a13.vals[((size_t)e * 2 * inter + inter + i) * H + h];
            }
            g = std::min(g, lim);
            u = std::max(std::min(u, lim), -lim);
            out += g / (1.0 + std::exp(-g)) * u * a2.vals[((size_t)e * H + n) * inter + i];
        }
        return out;
    };
    int shown = 0;
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < H; ++n) {
            double want = 0;
            for (int j = 0; j < k; ++j) {
                const int e = ids[t * k + j];
                if (e < 0 || tw[t * k + j] == 0.0f) continue;
                want += tw[t * k + j] * mlp(w13, w2, e, I, t, n);
            }
            for (int s = 0; s < S; ++s) want += mlp(s13, s2, s, Is, t, n);
            const double got = read_out(Tensor{y, {}}, (size_t)t * H + n, dtype);
            const bool ok = close(got, want, atol_of(dtype), atol_of(dtype));
            if (ok) {
                ++g_checks;
            } else if (shown++ < 3) {
                std::snprintf(buf, sizeof buf, ": y[%d,%d] = %g want %g", t, n, got, want);
                expect(false, label + buf);
            }
        }
    if (shown > 3) expect(false, label + ": " + std::to_string(shown) + " elements off");
}

static void experts_shared_cases(int dtype) {
    experts_shared_case(dtype, {7, 40, 24, 5, 3, 1, 24});            // S 1, Is = I, vector loads
    experts_shared_case(dtype, {70, 36, 16, 3, 2, 2, 70});           // S 2, Is 70 (> 64, not a tile multiple), T across a tile
    experts_shared_case(dtype, {5, 40, 24, 4, 2, 2, 40, 0.75f});     // clamp bites on routed and shared
}
