// dsa_indexer_cases.h — dsa_indexer_topk on the host emulator against a double reference
// written from the contract. Included by kernels_test.cpp after its helpers (expect, close,
// make, randn, rng) and after the kernels (moemla_mla_check from mla_decode.cu, then
// dsa_indexer_topk.cu).
//
// Per query row the reference scores every position p < L (L = seqlen, or seqlen - Sq + i + 1
// when causal) in double from the stored inputs; the kernel's row must then hold
// min(top_k, L) distinct positions of the sequence (as flat slots), each with its reference
// score (1e-4 / 1e-4), in descending score with ties to the lower position (NaN as -inf), no
// unchosen position scoring above the chosen ones, and -1 / -inf after them. Slots no
// sequence uses hold NaN and unused block-table entries 2147480000: reading one would show.

struct IndexerCase {
    int B, s_q, h_i, d_i, block_size, num_blocks, max_blocks, top_k;
    bool causal;
    std::vector<int> seqlens;
    int corrupt = 0;     // 0 none, 1 cache_seqlens, 2 block_table (flagged; outputs not checked)
    int zero_row = -1;   // a query row whose weights are all 0: every score ties at 0
};

static void indexer_case(int dtype, const IndexerCase& c) {
    const int rows = c.B * c.s_q, cap = c.max_blocks * c.block_size, slots = c.num_blocks * c.block_size;
    Tensor q = make(randn((size_t)rows * c.h_i * c.d_i, 1.0f), dtype);
    std::vector<float> w = randn((size_t)rows * c.h_i, 1.0f / std::sqrt((float)c.h_i * c.d_i));
    if (c.zero_row >= 0)
        for (int h = 0; h < c.h_i; ++h) w[(size_t)c.zero_row * c.h_i + h] = 0.0f;
    // Block table: distinct random blocks for the used entries, 2147480000 elsewhere.
    std::vector<int> perm(c.num_blocks);
    for (int i = 0; i < c.num_blocks; ++i) perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<int> table((size_t)c.B * c.max_blocks, 2147480000);
    std::vector<int> seqlens = c.seqlens;
    std::vector<float> kv = randn((size_t)slots * c.d_i, 1.0f);
    std::vector<bool> used(slots, false);
    int next = 0;
    for (int b = 0; b < c.B; ++b)
        for (int j = 0; j < (seqlens[b] + c.block_size - 1) / c.block_size; ++j) {
            table[(size_t)b * c.max_blocks + j] = perm[next++];
            for (int o = 0; o < c.block_size; ++o) used[(size_t)table[(size_t)b * c.max_blocks + j] * c.block_size + o] = true;
        }
    for (int s = 0; s < slots; ++s)
        if (!used[s])
            for (int d = 0; d < c.d_i; ++d) kv[(size_t)s * c.d_i + d] = NAN;
    Tensor k = make(kv, dtype);
    auto flag = [](unsigned long long pos, int value) { return (pos << 32) | (unsigned)value; };
    unsigned long long want_err[2] = {~0ull, ~0ull};
    if (c.corrupt == 1) {  // two bad lengths: the first one is reported
        seqlens[c.B - 1] = cap + 1;
        seqlens[1] = -3;
        want_err[0] = flag(1, -3);
    } else if (c.corrupt == 2) {  // two bad used entries (the first in row-major order) and a bad unused one
        table[(size_t)1 * c.max_blocks + 1] = c.num_blocks;
        table[(size_t)(c.B - 1) * c.max_blocks] = -5;
        want_err[1] = flag((size_t)1 * c.max_blocks + 1, c.num_blocks);
    }

    int cand_stride = 1;
    while (cand_stride < std::min(c.top_k, cap)) cand_stride <<= 1;
    std::vector<float> scores((size_t)rows * cap, NAN);
    std::vector<int> cand((size_t)rows * cand_stride, 0x55555555);
    std::vector<int> got_idx((size_t)rows * c.top_k, 0x55555555);
    std::vector<float> got_sc((size_t)rows * c.top_k, 12345.0f);
    unsigned long long err[2] = {~0ull, ~0ull};
    moemla_emu_launch({(unsigned)((c.B * c.max_blocks + 255) / 256), 1, 1}, 256, [&] {
        moemla_mla_check(table.data(), seqlens.data(), c.B, c.max_blocks, c.block_size, c.num_blocks, err);
    });
    const moemla_dim3 grid{(unsigned)((cap + MOEMLA_IDX_BN - 1) / MOEMLA_IDX_BN), (unsigned)c.s_q, (unsigned)c.B};
#define MOEMLA_RUN_INDEXER(SFX, TT)                                                                               \
    moemla_emu_launch(grid, MOEMLA_IDX_THREADS, [&] {                                                            \
        moemla_dsa_indexer_scores_##SFX((const TT*)q.ptr(), w.data(), (const TT*)k.ptr(), table.data(),           \
                                        seqlens.data(), scores.data(), c.s_q, c.h_i, c.d_i, c.num_blocks,         \
                                        c.block_size, c.max_blocks, c.causal, cap);                               \
    });
    if (dtype == 0) {
        MOEMLA_RUN_INDEXER(f32, float)
    } else if (dtype == 1) {
        MOEMLA_RUN_INDEXER(f16, moemla_f16)
    } else {
        MOEMLA_RUN_INDEXER(bf16, moemla_bf16)
    }
#undef MOEMLA_RUN_INDEXER
    moemla_emu_launch({(unsigned)rows, 1, 1}, MOEMLA_IDX_TOPK_THREADS, [&] {
        moemla_dsa_indexer_topk(scores.data(), table.data(), seqlens.data(), cand.data(), cand_stride, got_idx.data(),
                                got_sc.data(), c.s_q, c.num_blocks, c.block_size, c.max_blocks, c.causal, cap,
                                c.top_k);
    });
    char buf[240];
    std::snprintf(buf, sizeof buf, "indexer_check %s corrupt%d: err {%#llx, %#llx} want {%#llx, %#llx}", dname(dtype),
                  c.corrupt, err[0], err[1], want_err[0], want_err[1]);
    expect(err[0] == want_err[0] && err[1] == want_err[1], buf);
    if (c.corrupt) return;

    auto key = [](double v) { return std::isnan(v) ? -INFINITY : v; };
    for (int r = 0; r < rows; ++r) {
        const int b = r / c.s_q, i = r % c.s_q;
        const int L = std::max(0, c.causal ? seqlens[b] - c.s_q + i + 1 : seqlens[b]);
        const int kk = std::min(c.top_k, L);
        // Reference scores and the slot -> position map of the sequence.
        std::vector<double> ref(L);
        std::vector<int> pos_of(slots, -1);
        for (int p = 0; p < L; ++p) {
            const int slot = table[(size_t)b * c.max_blocks + p / c.block_size] * c.block_size + p % c.block_size;
            pos_of[slot] = p;
            double s = 0;
            for (int h = 0; h < c.h_i; ++h) {
                double dot = 0;
                for (int d = 0; d < c.d_i; ++d)
                    dot += (double)q.vals[((size_t)r * c.h_i + h) * c.d_i + d] * k.vals[(size_t)slot * c.d_i + d];
                s += (double)w[(size_t)r * c.h_i + h] * std::max(dot, 0.0);
            }
            ref[p] = s;
        }
        std::vector<bool> chosen(L, false);
        bool ok = true;
        std::string why;
        int prev_p = -1;
        double prev_key = INFINITY, min_chosen = INFINITY;
        for (int j = 0; j < c.top_k && ok; ++j) {
            const int slot = got_idx[(size_t)r * c.top_k + j];
            const float sc = got_sc[(size_t)r * c.top_k + j];
            if (j >= kk) {
                ok = slot == -1 && sc == -INFINITY;
                if (!ok) why = "padding " + std::to_string(j) + ": " + std::to_string(slot) + " " + std::to_string(sc);
                continue;
            }
            const int p = slot >= 0 && slot < slots ? pos_of[slot] : -1;
            if (p < 0 || chosen[p]) {
                ok = false;
                why = "entry " + std::to_string(j) + ": slot " + std::to_string(slot) + " not a new position < L";
                break;
            }
            chosen[p] = true;
            if (!close(sc, ref[p], 1e-4, 1e-4)) {
                ok = false;
                why = "entry " + std::to_string(j) + " p " + std::to_string(p) + ": score " + std::to_string(sc) +
                      " want " + std::to_string(ref[p]);
            }
            const double kj = key(sc);
            if (kj > prev_key || (kj == prev_key && p < prev_p)) {
                ok = false;
                why = "entry " + std::to_string(j) + ": order";
            }
            if (c.zero_row == r && p != j) {  // all tie: the lowest positions, in order
                ok = false;
                why = "tie entry " + std::to_string(j) + " is position " + std::to_string(p);
            }
            prev_key = kj;
            prev_p = p;
            min_chosen = std::min(min_chosen, ref[p]);
        }
        for (int p = 0; p < L && ok; ++p)
            if (!chosen[p] && ref[p] > min_chosen + 2e-4 * (1 + std::fabs(min_chosen))) {
                ok = false;
                why = "position " + std::to_string(p) + " (" + std::to_string(ref[p]) + ") left out";
            }
        std::snprintf(buf, sizeof buf, "indexer %s b%d i%d (L %d, top_k %d): %s", dname(dtype), b, i, L, c.top_k,
                      why.c_str());
        expect(ok, buf);
    }
}

static void indexer_cases(int dtype) {
    // Small dims (Di not a multiple of 32, Hi of 8), causal Sq 2 with an empty first query
    // (seqlen 1), several position tiles; all scores of one row tied at 0.
    indexer_case(dtype, {3, 2, 5, 20, 8, 24, 9, 16, true, {70, 1, 20}, 0, 4});
    // DeepSeek's indexer heads: Hi 64, Di 128 (two head steps, four dim steps), three tiles.
    indexer_case(dtype, {2, 1, 64, 128, 16, 16, 10, 64, false, {150, 70}});
    // Causal Sq 3 with a sequence shorter than top_k (padding) beside a longer one.
    indexer_case(dtype, {2, 3, 4, 16, 4, 16, 10, 8, true, {5, 40}});
    // top_k beyond every candidate (and the cache capacity).
    indexer_case(dtype, {2, 1, 3, 8, 8, 8, 4, 100, false, {32, 9}});
    if (dtype == 0) {  // the checks do not depend on the dtype
        indexer_case(dtype, {3, 2, 4, 16, 8, 24, 6, 8, true, {40, 20, 33}, 1});
        indexer_case(dtype, {3, 2, 4, 16, 8, 24, 6, 8, true, {40, 20, 33}, 2});
    }
}
