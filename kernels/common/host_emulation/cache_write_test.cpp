// cache_write_test.cpp — mla_cache_write's kernels (kernels/cuda/mla_kv_quantize.cu) on the
// host emulator (cuda_on_host.h), under AddressSanitizer: the cache after the call compared
// byte for byte with the cache before it and a plain reference written here from the op's
// rules (docs/ops.md, "mla_cache_write"): row i goes to flat slot slot_mapping[i], -1 skips
// the row (it is never read), the later row wins a slot two rows name, a slot outside the
// cache is flagged (the first bad row and its value) and that row is not written, slots no
// row names keep their bytes. Dense rows are copied bit for bit; fp8_ds_v32 rows must be the
// bytes moemla_mla_kv_quantize writes for the same row (which kernels_test.cpp checks
// against its own independent reference), and a non-finite value in a row to write is
// flagged (first bad element, its f32 bits) and that row not written.
//
// Every case runs three ways: the writes scanning the later rows (no table, as the plan
// does for up to its cache_write::SCAN_ROWS rows), with the winner table at the plan's
// size (the power of two >= 2N) filled by moemla_cache_winner_clear and
// moemla_cache_winner_insert, and with the smallest table that holds every distinct slot
// (long probe chains). The table is filled with garbage first, as a reused workspace
// would be.
//
// Built and run by run.sh beside kernels_test.cpp (same variants).
#include "cuda_on_host.h"
#include "../moemla_device.h"
#include "../../cuda/mla_kv_quantize.cu"

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

static int g_failures = 0;
static int g_checks = 0;

static void expect(bool ok, const std::string& what) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s\n", what.c_str());
    }
}

static std::mt19937 rng(4321);
static const char* dname(int d) { return d == 0 ? "f32" : d == 1 ? "f16" : "bf16"; }

// How the writes find a slot's later rows: 0 scan, 1 the plan's table, 2 the smallest one.
static int g_table_mode = 0;
static const char* table_name() {
    return g_table_mode == 0 ? "scan" : g_table_mode == 1 ? "table" : "tight table";
}

// The winner table for `slots` (empty when scanning): garbage, then cleared and filled by
// the two kernels as the plan launches them. `mask` gets its size - 1 (0 when scanning).
static std::vector<int> winner_table(const std::vector<int>& slots, int nslots, int* mask) {
    *mask = 0;
    if (g_table_mode == 0) return {};
    const int n = (int)slots.size();
    int entries = 1;
    if (g_table_mode == 1) {
        while (entries < 2 * n) entries *= 2;
    } else {
        // One more than the distinct valid slots, rounded up to a power of two.
        std::vector<int> valid;
        for (int v : slots)
            if (v >= 0 && v < nslots) valid.push_back(v);
        std::sort(valid.begin(), valid.end());
        const int distinct = (int)(std::unique(valid.begin(), valid.end()) - valid.begin());
        while (entries < distinct + 1) entries *= 2;
    }
    *mask = entries - 1;
    std::vector<int> table(2 * (size_t)entries);
    std::uniform_int_distribution<int> junk(INT32_MIN, INT32_MAX);
    for (auto& v : table) v = junk(rng);
    int* t = table.data();
    const int m = *mask;
    moemla_emu_launch({(unsigned)((entries + 255) / 256), 1, 1}, 256, [&] { moemla_cache_winner_clear(t, m); });
    moemla_emu_launch({(unsigned)((n + 255) / 256), 1, 1}, 256,
                      [&] { moemla_cache_winner_insert(slots.data(), n, nslots, t, m); });
    return table;
}

// Rows [n, d] of random values in the run dtype's storage (bytes); rows whose slot is -1
// hold NaN (never read, so never flagged).
static std::vector<unsigned char> rows_of(int dtype, int n, int d, const std::vector<int>& slots) {
    std::normal_distribution<float> dist(0.0f, 3.0f);
    const size_t es = dtype == 0 ? 4 : 2;
    std::vector<unsigned char> bytes((size_t)n * d * es);
    for (int i = 0; i < n; ++i)
        for (int c = 0; c < d; ++c) {
            const float v = slots[i] == -1 ? NAN : dist(rng);
            const size_t at = ((size_t)i * d + c) * es;
            if (dtype == 0) {
                std::memcpy(&bytes[at], &v, 4);
            } else {
                const moemla_u16 h = dtype == 1 ? moemla_f32_to_f16(v) : moemla_f32_to_bf16(v);
                std::memcpy(&bytes[at], &h, 2);
            }
        }
    return bytes;
}

// The first row (in row order) whose slot is outside [0, slots) and not -1, as the flag
// encodes it (row << 32 | (u32)slot); all ones when there is none.
static unsigned long long first_bad_slot(const std::vector<int>& slots, int nslots) {
    for (size_t i = 0; i < slots.size(); ++i)
        if (slots[i] != -1 && (slots[i] < 0 || slots[i] >= nslots))
            return ((unsigned long long)i << 32) | (moemla_u32)slots[i];
    return ~0ull;
}

// The reference cache: `before`, then each row's bytes (`row_bytes(i)`, or nothing when it
// returns nullptr) at its slot, in row order, so the later row wins.
template <typename RowBytes>
static std::vector<unsigned char> reference(std::vector<unsigned char> cache, const std::vector<int>& slots, int nslots,
                                            size_t width, RowBytes row_bytes) {
    for (size_t i = 0; i < slots.size(); ++i) {
        if (slots[i] < 0 || slots[i] >= nslots) continue;
        const unsigned char* src = row_bytes(i);
        if (src) std::memcpy(&cache[(size_t)slots[i] * width], src, width);
    }
    return cache;
}

static void compare(const std::vector<unsigned char>& got, const std::vector<unsigned char>& want, size_t width,
                    const std::string& what) {
    size_t first = got.size();
    for (size_t b = 0; b < got.size() && first == got.size(); ++b)
        if (got[b] != want[b]) first = b;
    char buf[240];
    std::snprintf(buf, sizeof buf, "%s: first differing byte %zu (slot %zu, byte %zu: %#04x want %#04x)", what.c_str(),
                  first, first / width, first % width, first < got.size() ? got[first] : 0,
                  first < got.size() ? want[first] : 0);
    expect(first == got.size(), buf);
}

// Dense: kv [n, d] copied into a cache of `nslots` slots (exactly sized: a write out of
// bounds fails under ASan). `misalign` shifts the cache base by 2 bytes (narrower accesses).
static void dense_case(int dtype, int d, const std::vector<int>& slots, int nslots, bool misalign) {
    const int n = (int)slots.size();
    const size_t width = (size_t)d * (dtype == 0 ? 4 : 2);
    std::vector<unsigned char> kv = rows_of(dtype, n, d, slots);
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<unsigned char> before(nslots * width);
    for (auto& b : before) b = (unsigned char)byte(rng);
    std::vector<unsigned char> storage(before.size() + 2);
    unsigned char* cache = storage.data() + (misalign ? 2 : 0);
    std::memcpy(cache, before.data(), before.size());
    unsigned long long err = ~0ull;
    int mask = 0;
    const std::vector<int> table = winner_table(slots, nslots, &mask);
    const int* t = table.empty() ? nullptr : table.data();
    moemla_emu_launch({(unsigned)n, 1, 1}, 128, [&] {
        moemla_mla_cache_write_dense(kv.data(), slots.data(), cache, n, (int)width, nslots, &err, t, mask);
    });
    char what[160];
    std::snprintf(what, sizeof what, "mla_cache_write dense %s d %d n %d%s, %s%s", dname(dtype), d, n,
                  misalign ? " misaligned" : "", table_name(), g_emu.reverse_blocks ? " (blocks reversed)" : "");
    const unsigned long long want_err = first_bad_slot(slots, nslots);
    char buf[240];
    std::snprintf(buf, sizeof buf, "%s: err %#llx want %#llx", what, err, want_err);
    expect(err == want_err, buf);
    std::vector<unsigned char> got(cache, cache + before.size());
    compare(got, reference(before, slots, nslots, width, [&](size_t i) { return &kv[i * width]; }), width, what);
}

// fp8_ds_v32: kv [n, 576] into 656-byte rows; `nonfinite` puts an inf and a later NaN into
// rows that are written (their slots are valid), and a NaN into a row with slot -1.
static void fp8_case(int dtype, const std::vector<int>& slots, int nslots, bool nonfinite) {
    const int n = (int)slots.size();
    const size_t es = dtype == 0 ? 4 : 2;
    std::vector<unsigned char> kv = rows_of(dtype, n, 576, slots);
    // Values across 1e-3 .. 1e3 in row 0, an all-zero tile and -0.0 in row 1.
    auto put = [&](int r, int c, float v) {
        const size_t at = ((size_t)r * 576 + c) * es;
        if (dtype == 0) {
            std::memcpy(&kv[at], &v, 4);
        } else {
            const moemla_u16 h = dtype == 1 ? moemla_f32_to_f16(v) : moemla_f32_to_bf16(v);
            std::memcpy(&kv[at], &h, 2);
        }
    };
    std::uniform_real_distribution<float> ex(-10.0f, 10.0f);
    if (slots[0] != -1)
        for (int c = 0; c < 576; ++c) put(0, c, std::exp2(ex(rng)) * (c % 2 ? -1.0f : 1.0f));
    if (n > 1 && slots[1] != -1) {
        for (int c = 128; c < 256; ++c) put(1, c, 0.0f);
        for (int c = 0; c < 576; c += 7) put(1, c, -0.0f);
    }
    int bad_rows[2] = {-1, -1};
    unsigned long long want_nonfinite = ~0ull;
    if (nonfinite) {
        // The first two rows with valid slots get an inf (element 300) and a NaN (rope 530).
        int found = 0;
        for (int i = 0; i < n && found < 2; ++i)
            if (slots[i] >= 0 && slots[i] < nslots) bad_rows[found++] = i;
        put(bad_rows[0], 300, INFINITY);
        put(bad_rows[1], 530, NAN);
        // The f32 bits of +inf, whatever the storage type (f16 and bf16 inf widen to it).
        want_nonfinite = ((unsigned long long)bad_rows[0] * 576 + 300) << 32 | 0x7f800000u;
    }
    // The bytes mla_kv_quantize writes for each row.
    std::vector<unsigned char> quantized((size_t)n * 656, 0);
    unsigned long long kvq_err = ~0ull;
    moemla_emu_launch({(unsigned)n, 1, 1}, 128, [&] {
        if (dtype == 0) moemla_mla_kv_quantize_f32((const float*)kv.data(), quantized.data(), &kvq_err);
        else if (dtype == 1) moemla_mla_kv_quantize_f16((const moemla_f16*)kv.data(), quantized.data(), &kvq_err);
        else moemla_mla_kv_quantize_bf16((const moemla_bf16*)kv.data(), quantized.data(), &kvq_err);
    });
    std::vector<unsigned char> before((size_t)nslots * 656);
    std::uniform_int_distribution<int> byte(0, 255);
    for (auto& b : before) b = (unsigned char)byte(rng);
    std::vector<unsigned char> cache = before;
    unsigned long long err[2] = {~0ull, ~0ull};
    int mask = 0;
    const std::vector<int> table = winner_table(slots, nslots, &mask);
    const int* t = table.empty() ? nullptr : table.data();
    moemla_emu_launch({(unsigned)n, 1, 1}, 128, [&] {
        if (dtype == 0)
            moemla_mla_cache_write_fp8_f32((const float*)kv.data(), slots.data(), cache.data(), n, nslots, err, t,
                                           mask);
        else if (dtype == 1)
            moemla_mla_cache_write_fp8_f16((const moemla_f16*)kv.data(), slots.data(), cache.data(), n, nslots, err,
                                           t, mask);
        else
            moemla_mla_cache_write_fp8_bf16((const moemla_bf16*)kv.data(), slots.data(), cache.data(), n, nslots,
                                            err, t, mask);
    });
    char what[160];
    std::snprintf(what, sizeof what, "mla_cache_write fp8_ds_v32 %s n %d%s, %s%s", dname(dtype), n,
                  nonfinite ? " non-finite" : "", table_name(), g_emu.reverse_blocks ? " (blocks reversed)" : "");
    char buf[240];
    std::snprintf(buf, sizeof buf, "%s: err[0] %#llx want %#llx", what, err[0], want_nonfinite);
    expect(err[0] == want_nonfinite, buf);
    const unsigned long long want_slot = first_bad_slot(slots, nslots);
    std::snprintf(buf, sizeof buf, "%s: err[1] %#llx want %#llx", what, err[1], want_slot);
    expect(err[1] == want_slot, buf);
    // A row with a non-finite value is not written; a row it would have overwritten is not
    // written either (the later row names the slot).
    auto row = [&](size_t i) -> const unsigned char* {
        if ((int)i == bad_rows[0] || (int)i == bad_rows[1]) return nullptr;
        for (size_t j = i + 1; j < slots.size(); ++j)
            if (slots[j] == slots[i]) return nullptr;
        return &quantized[i * 656];
    };
    compare(cache, reference(before, slots, nslots, 656, row), 656, what);
}

int main() {
    g_emu.warp_size = MOEMLA_WARP_SIZE;
    // Blocks first to last, then last to first: "the later row wins" must not depend on
    // the order blocks run in.
    for (int mode = 0; mode < 3; ++mode)
    for (bool reverse : {false, true}) {
        g_table_mode = mode;
        g_emu.reverse_blocks = reverse;
        // 600 rows into 300 slots: every slot named twice on average, runs of consecutive
        // slots, -1 and bad slots among them (the table is used the same way at any N).
        {
            std::vector<int> big(600);
            std::uniform_int_distribution<int> s(0, 299), pick(0, 9);
            for (size_t i = 0; i < big.size(); ++i) {
                const int k = pick(rng);
                big[i] = k == 0 ? -1 : k == 1 && i % 37 == 0 ? 300 + (int)i : k < 5 ? (int)(i / 2) : s(rng);
            }
            dense_case(0, 4, big, 300, false);
        }
        for (int dtype = 0; dtype < 3; ++dtype) {
            // Duplicates (slot 4 three times, the last wins; slot 0 twice), -1 rows, slots
            // no row names.
            const std::vector<int> dup{4, -1, 0, 4, 7, 0, -1, 4};
            dense_case(dtype, 40, dup, 12, false);  // 16-byte accesses (f32: 160 bytes; 16-bit: 80)
            dense_case(dtype, 21, dup, 12, false);  // 4-byte (f32) / 2-byte (f16, bf16) accesses
            dense_case(dtype, 40, dup, 12, true);   // a 2-byte-aligned cache base
            // Bad slots (past the end, -2, INT_MIN): flagged at the first, never written;
            // the other rows still are.
            dense_case(dtype, 24, {3, 12, 1, -2, 3, INT32_MIN, -1}, 12, false);
            // More rows than threads: the later-row search strides over the block.
            std::vector<int> many(300);
            std::uniform_int_distribution<int> s(-1, 199);
            for (auto& v : many) v = s(rng);
            many[299] = many[3];
            dense_case(dtype, 8, many, 200, false);

            fp8_case(dtype, {2, -1, 5, 2, 0, -1, 5}, 6, false);
            fp8_case(dtype, {1, 3, -1, 6, 1, -7, 0}, 6, false);  // bad slots 6 and -7
            fp8_case(dtype, {1, 3, -1, 0, 1, 2}, 4, true);       // inf, NaN: flagged, rows kept out
        }
    }
    std::printf("%s: %d checks, %d failures (mla_cache_write, warp %d)\n", g_failures ? "FAILED" : "ok", g_checks,
                g_failures, MOEMLA_WARP_SIZE);
    return g_failures ? 1 : 0;
}
