// A host-only stand-in for the HIP runtime, for testing the backend's plumbing without a
// GPU: $MOCK_HIP_DEVICES identical devices (default 1; "Mock MI250X",
// gfx90a:sramecc+:xnack-) sharing one stream and memory, host memory for device memory,
// code objects checked (ELF, EM_AMDGPU, kernel descriptor present), $MOCK_HIP_WARP
// overriding the wavefront size (64). It exports exactly the functions the backend's
// symbol table requires (no hipDeviceGet, hipMemcpy or hipEvent*).
//
// The stream is a queue: hipMemsetAsync, hipMemcpyAsync and launches only run when the
// stream is synchronized, so a result read before a synchronize is stale. A second stream
// handle, MOCK_CALLER_STREAM (0x5000), stands for a stream the caller created: work on it
// joins the same queue, and its launches are logged with " stream=caller". Kernels do not
// execute, except for their error flags: moemla_moe_align and moemla_mla_check apply the
// flag rule of kernels/README.md to the index tensors in (host) memory, and
// moemla_mla_cache_write_dense runs (rows copied in row order, bad slots flagged).
//
// Every call is logged to $MOCK_HIP_LOG, one line each: "setdevice", "malloc <bytes>",
// "free", "memset <bytes>", "h2d <bytes>", "d2h <bytes>", "sync", "load", "getfn <name>",
// "<kernel> grid=x,y,z block=x,y,z shared=n" (moemla_moe_route_* adds its scalars).
// Built by tests/mock_runtime.rs in two layouts: ROCm 6 (hipGetDevicePropertiesR0600,
// gcnArchName at byte 1160) and, with -DMOCK_R0000, ROCm 5 (hipGetDeviceProperties,
// gcnArchName at byte 396).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int hipError_t;
#define ARCH "gfx90a:sramecc+:xnack-"

static void log_line(const char* line) {
    const char* path = getenv("MOCK_HIP_LOG");
    if (!path) return;
    FILE* f = fopen(path, "a");
    if (!f) return;
    fputs(line, f);
    fputc('\n', f);
    fclose(f);
}

static void log_fmt(const char* what, size_t n) {
    char line[64];
    snprintf(line, sizeof line, "%s %zu", what, n);
    log_line(line);
}

hipError_t hipInit(unsigned flags) { return flags == 0 ? 0 : 1; }
// $MOCK_HIP_DEVICES, default 1.
static int mock_devices(void) {
    const char* n = getenv("MOCK_HIP_DEVICES");
    return n ? atoi(n) : 1;
}
// Whether `d` is a device ordinal here.
static int mock_device(int d) { return d >= 0 && d < mock_devices(); }

hipError_t hipGetDeviceCount(int* n) { *n = mock_devices(); return 0; }
hipError_t hipSetDevice(int d) {
    log_line("setdevice");
    return mock_device(d) ? 0 : 101;
}
hipError_t hipDeviceGetName(char* name, int len, int d) {
    snprintf(name, (size_t)len, "%s", "Mock MI250X");
    return mock_device(d) ? 0 : 101;
}
hipError_t hipDeviceGetAttribute(int* v, int attr, int d) {
    switch (attr) {
        case 56: *v = 1024; break;   // MaxThreadsPerBlock
        case 63: *v = 110; break;    // MultiprocessorCount
        case 74: *v = 65536; break;  // MaxSharedMemoryPerBlock
        case 87: *v = getenv("MOCK_HIP_WARP") ? atoi(getenv("MOCK_HIP_WARP")) : 64; break;
        default: return 1;
    }
    return mock_device(d) ? 0 : 101;
}
hipError_t hipDeviceTotalMem(size_t* bytes, int d) { *bytes = (size_t)64 << 30; return mock_device(d) ? 0 : 101; }

#ifdef MOCK_R0000
#define PROPS_SIZE 792
#define ARCH_OFFSET 396
hipError_t hipGetDeviceProperties(void* props, int d)
#else
#define PROPS_SIZE 1472
#define ARCH_OFFSET 1160
hipError_t hipGetDevicePropertiesR0600(void* props, int d)
#endif
{
    memset(props, 0x5a, PROPS_SIZE);  // garbage everywhere but the fields set below
    snprintf((char*)props, 256, "%s", "Mock MI250X");
    // Decoy: a reader that misses ARCH_OFFSET and searches would find this one first.
    memcpy((char*)props + 260, "gfx000", 7);
    memset((char*)props + ARCH_OFFSET, 0, 256);
    memcpy((char*)props + ARCH_OFFSET, ARCH, sizeof(ARCH));
    return mock_device(d) ? 0 : 101;
}

const char* hipGetErrorString(hipError_t e) { return e == 0 ? "no error" : "mock error"; }

hipError_t hipMalloc(void** p, size_t bytes) {
    log_fmt("malloc", bytes);
    *p = malloc(bytes);
    if (*p) memset(*p, 0xa5, bytes);  // fresh device memory holds garbage, never zeros
    return *p ? 0 : 2;
}
hipError_t hipFree(void* p) {
    log_line("free");
    free(p);
    return 0;
}

// ---------------------------------------------------------------------------------------
// The stream: a queue of work run at hipStreamSynchronize.
// ---------------------------------------------------------------------------------------
enum { WORK_MEMSET, WORK_COPY, WORK_ALIGN, WORK_MLA_CHECK, WORK_CACHE_WRITE };
typedef struct {
    int kind;
    void* dst;
    const void* src;
    void* staging;  // a host-to-device copy's source, taken when enqueued
    size_t bytes;
    int value;
    void* p[4];  // kernel pointer parameters
    int n[4];    // kernel int parameters
} work_t;
static work_t queue[4096];
static int queued;
static int the_stream;
#define MOCK_CALLER_STREAM ((void*)0x5000)

// Whether `stream` is a stream handle here.
static int mock_stream(void* stream) { return stream == &the_stream || stream == MOCK_CALLER_STREAM; }

static hipError_t enqueue(work_t w, void* stream) {
    if (!mock_stream(stream)) return 400;
    if (queued == (int)(sizeof queue / sizeof queue[0])) return 2;
    queue[queued++] = w;
    return 0;
}

// moemla_flag_index: the flag keeps the smallest (position << 32) | (u32)value.
static void flag_index(void* flag, long long position, int value) {
    uint64_t word = ((uint64_t)position << 32) | (uint32_t)value;
    uint64_t old;
    memcpy(&old, flag, 8);
    if (word < old) memcpy(flag, &word, 8);
}

static void run(const work_t* w) {
    switch (w->kind) {
        case WORK_MEMSET:
            memset(w->dst, w->value, w->bytes);
            break;
        case WORK_COPY:
            memcpy(w->dst, w->staging ? w->staging : w->src, w->bytes);
            free(w->staging);
            break;
        case WORK_ALIGN: {  // ids p[0], err p[1]; slots n[0], experts n[1]
            const int* ids = (const int*)w->p[0];
            for (int s = 0; s < w->n[0]; ++s)
                if (ids[s] < -1 || ids[s] >= w->n[1]) flag_index(w->p[1], s, ids[s]);
            break;
        }
        case WORK_MLA_CHECK: {  // table p[0], seqlens p[1], err p[2]; batch, max_blocks,
                                // block_size, num_blocks n[0..3]
            const int* table = (const int*)w->p[0];
            const int* lens = (const int*)w->p[1];
            char* err = (char*)w->p[2];
            const long long cap = (long long)w->n[1] * w->n[2];
            for (int b = 0; b < w->n[0]; ++b) {
                if (lens[b] < 0 || lens[b] > cap) {
                    flag_index(err, b, lens[b]);
                    continue;
                }
                const int used = (lens[b] + w->n[2] - 1) / w->n[2];
                for (int j = 0; j < used; ++j) {
                    const long long idx = (long long)b * w->n[1] + j;
                    if (table[idx] < 0 || table[idx] >= w->n[3]) flag_index(err + 8, idx, table[idx]);
                }
            }
            break;
        }
        case WORK_CACHE_WRITE: {  // kv p[0], slot_mapping p[1], cache p[2], err p[3]; n,
                                  // row_bytes, slots n[0..2]: rows in order (the later wins)
            const int* slots = (const int*)w->p[1];
            for (int r = 0; r < w->n[0]; ++r) {
                if (slots[r] == -1) continue;
                if (slots[r] < 0 || slots[r] >= w->n[2]) {
                    flag_index(w->p[3], r, slots[r]);
                    continue;
                }
                memcpy((char*)w->p[2] + (size_t)slots[r] * w->n[1],
                       (const char*)w->p[0] + (size_t)r * w->n[1], (size_t)w->n[1]);
            }
            break;
        }
    }
}

hipError_t hipMemcpyAsync(void* dst, const void* src, size_t bytes, int kind, void* stream) {
    if (kind < 1 || kind > 3) return 1;
    log_fmt(kind == 1 ? "h2d" : kind == 2 ? "d2h" : "d2d", bytes);
    work_t w = {WORK_COPY, dst, src, NULL, bytes, 0, {0}, {0}};
    if (kind == 1) {  // pageable host memory: staged now, copied in stream order
        w.staging = malloc(bytes);
        memcpy(w.staging, src, bytes);
    }
    return enqueue(w, stream);
}
hipError_t hipMemsetAsync(void* dst, int value, size_t bytes, void* stream) {
    log_fmt("memset", bytes);
    work_t w = {WORK_MEMSET, dst, NULL, NULL, bytes, value, {0}, {0}};
    return enqueue(w, stream);
}
hipError_t hipStreamCreate(void** s) { *s = &the_stream; return 0; }
hipError_t hipStreamDestroy(void* s) { return s == &the_stream ? 0 : 400; }
hipError_t hipStreamSynchronize(void* s) {
    if (!mock_stream(s)) return 400;
    log_line("sync");
    for (int i = 0; i < queued; ++i) run(&queue[i]);
    queued = 0;
    return 0;
}

typedef struct {
    unsigned char* image;
    size_t size;
} module_t;

// The code object's size from its ELF64 header: section headers end the file.
hipError_t hipModuleLoadData(void** module, const void* image) {
    const unsigned char* h = (const unsigned char*)image;
    if (memcmp(h, "\x7f" "ELF", 4) != 0 || h[4] != 2) return 200;
    uint16_t machine;
    memcpy(&machine, h + 18, 2);
    if (machine != 224) return 200;
    uint64_t shoff;
    uint16_t shentsize, shnum;
    memcpy(&shoff, h + 40, 8);
    memcpy(&shentsize, h + 58, 2);
    memcpy(&shnum, h + 60, 2);
    module_t* m = malloc(sizeof(module_t));
    m->size = shoff + (size_t)shentsize * shnum;
    m->image = malloc(m->size);
    memcpy(m->image, image, m->size);
    *module = m;
    log_line("load");
    return 0;
}
hipError_t hipModuleUnload(void* module) {
    module_t* m = (module_t*)module;
    free(m->image);
    free(m);
    return 0;
}
hipError_t hipModuleGetFunction(void** function, void* module, const char* name) {
    module_t* m = (module_t*)module;
    char symbol[256];
    snprintf(symbol, sizeof symbol, "%s.kd", name);
    size_t n = strlen(symbol) + 1;
    char line[300];
    snprintf(line, sizeof line, "getfn %s", name);
    log_line(line);
    for (size_t i = 0; i + n <= m->size; ++i) {
        if (memcmp(m->image + i, symbol, n) == 0) {
            *function = strdup(name);  // leaked: the mock lives for one test process
            return 0;
        }
    }
    return 500;
}
// Logs "<kernel> grid=x,y,z block=x,y,z shared=n"; for moemla_moe_route_<DT> also its scalar
// parameters (experts, top_k, n_group, topk_group, score_func, group_select, renormalize,
// routed_scaling_factor; vocab), read through kernelParams as the kernel would. The two
// index-checking kernels enqueue their flag updates.
hipError_t hipModuleLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                 unsigned by, unsigned bz, unsigned shared, void* stream,
                                 void** params, void** extra) {
    const char* name = (const char*)f;
    char line[512];
    int n = snprintf(line, sizeof line, "%s grid=%u,%u,%u block=%u,%u,%u shared=%u", name, gx, gy,
                     gz, bx, by, bz, shared);
    if (strncmp(name, "moemla_moe_route_", 17) == 0 &&
        strcmp(name, "moemla_moe_route_hash_resolve") != 0) {
        // (logits, bias, has_bias, input_ids, tid2eid, vocab, topk_ids, topk_weights,
        //  experts, top_k, n_group, topk_group, score_func, group_select, renormalize,
        //  routed_scaling_factor, err)
        snprintf(line + n, sizeof line - (size_t)n, " scalars=%d,%d,%d,%d,%d,%d,%d,%g vocab=%d",
                 *(int*)params[8], *(int*)params[9], *(int*)params[10], *(int*)params[11],
                 *(int*)params[12], *(int*)params[13], *(int*)params[14], *(float*)params[15],
                 *(int*)params[5]);
    }
    if (stream == MOCK_CALLER_STREAM) {
        size_t len = strlen(line);
        snprintf(line + len, sizeof line - len, " stream=caller");
    }
    log_line(line);
    if (extra != NULL) return 1;
    work_t w = {-1, NULL, NULL, NULL, 0, 0, {0}, {0}};
    if (strcmp(name, "moemla_moe_align") == 0) {
        // (topk_ids, topk_weights, slots, experts, max_tiles, sorted_rows, slot_pos,
        //  tile_expert, meta, err)
        w.kind = WORK_ALIGN;
        w.p[0] = *(void**)params[0];
        w.p[1] = *(void**)params[9];
        w.n[0] = *(int*)params[2];
        w.n[1] = *(int*)params[3];
    } else if (strcmp(name, "moemla_mla_check") == 0) {
        // (block_table, cache_seqlens, batch, max_blocks, block_size, num_blocks, err)
        w.kind = WORK_MLA_CHECK;
        w.p[0] = *(void**)params[0];
        w.p[1] = *(void**)params[1];
        w.p[2] = *(void**)params[6];
        for (int i = 0; i < 4; ++i) w.n[i] = *(int*)params[2 + i];
    } else if (strcmp(name, "moemla_mla_cache_write_dense") == 0) {
        // (kv, slot_mapping, cache, n, row_bytes, slots, err)
        w.kind = WORK_CACHE_WRITE;
        for (int i = 0; i < 3; ++i) w.p[i] = *(void**)params[i];
        w.p[3] = *(void**)params[6];
        for (int i = 0; i < 3; ++i) w.n[i] = *(int*)params[3 + i];
    } else {
        return mock_stream(stream) ? 0 : 400;
    }
    return enqueue(w, stream);
}
