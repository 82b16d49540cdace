// A host-only stand-in for the HIP runtime, for testing the backend's plumbing without a
// GPU: one device ("Mock MI250X", gfx90a:sramecc+:xnack-), host memory for device memory,
// code objects checked (ELF, EM_AMDGPU, kernel descriptor present), launches logged to
// $MOCK_HIP_LOG instead of run; $MOCK_HIP_WARP overrides the wavefront size (64). Built by tests/mock_runtime.rs in two layouts: ROCm 6
// (hipGetDevicePropertiesR0600, gcnArchName at byte 1160) and, with -DMOCK_R0000, ROCm 5
// (hipGetDeviceProperties, gcnArchName at byte 396). Kernels never execute.
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

hipError_t hipInit(unsigned flags) { return flags == 0 ? 0 : 1; }
hipError_t hipGetDeviceCount(int* n) { *n = 1; return 0; }
hipError_t hipDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
hipError_t hipSetDevice(int d) { return d == 0 ? 0 : 101; }
hipError_t hipDeviceGetName(char* name, int len, int d) {
    snprintf(name, (size_t)len, "%s", "Mock MI250X");
    return d == 0 ? 0 : 101;
}
hipError_t hipDeviceGetAttribute(int* v, int attr, int d) {
    switch (attr) {
        case 56: *v = 1024; break;   // MaxThreadsPerBlock
        case 63: *v = 110; break;    // MultiprocessorCount
        case 74: *v = 65536; break;  // MaxSharedMemoryPerBlock
        case 87: *v = getenv("MOCK_HIP_WARP") ? atoi(getenv("MOCK_HIP_WARP")) : 64; break;
        default: return 1;
    }
    return d == 0 ? 0 : 101;
}
hipError_t hipDeviceTotalMem(size_t* bytes, int d) { *bytes = (size_t)64 << 30; return d == 0 ? 0 : 101; }

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
    return d == 0 ? 0 : 101;
}

const char* hipGetErrorString(hipError_t e) { return e == 0 ? "no error" : "mock error"; }

hipError_t hipMalloc(void** p, size_t bytes) {
    *p = malloc(bytes);
    return *p ? 0 : 2;
}
hipError_t hipFree(void* p) { free(p); return 0; }
hipError_t hipMemcpy(void* dst, const void* src, size_t bytes, int kind) {
    memcpy(dst, src, bytes);
    return kind == 1 || kind == 2 ? 0 : 1;
}
hipError_t hipMemcpyAsync(void* dst, const void* src, size_t bytes, int kind, void* stream) {
    (void)stream;
    return hipMemcpy(dst, src, bytes, kind);
}
hipError_t hipMemsetAsync(void* dst, int value, size_t bytes, void* stream) {
    (void)stream;
    memset(dst, value, bytes);
    return 0;
}
static int the_stream;
hipError_t hipStreamCreate(void** s) { *s = &the_stream; return 0; }
hipError_t hipStreamDestroy(void* s) { return s == &the_stream ? 0 : 400; }
hipError_t hipStreamSynchronize(void* s) { return s == &the_stream ? 0 : 400; }
static int the_event;
hipError_t hipEventCreate(void** e) { *e = &the_event; return 0; }
hipError_t hipEventRecord(void* e, void* s) { (void)e; (void)s; return 0; }
hipError_t hipEventSynchronize(void* e) { (void)e; return 0; }
hipError_t hipEventElapsedTime(float* ms, void* a, void* b) { (void)a; (void)b; *ms = 0.0f; return 0; }
hipError_t hipEventDestroy(void* e) { (void)e; return 0; }

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
    for (size_t i = 0; i + n <= m->size; ++i) {
        if (memcmp(m->image + i, symbol, n) == 0) {
            *function = strdup(name);  // leaked: the mock lives for one test process
            return 0;
        }
    }
    return 500;
}
// Logs "<kernel> grid=x,y,z block=x,y,z shared=n"; for moemla_moe_route_* also its scalar
// parameters (experts, top_k, n_group, topk_group, score_func, group_select, renormalize,
// routed_scaling_factor), read through kernelParams as the kernel would.
hipError_t hipModuleLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                 unsigned by, unsigned bz, unsigned shared, void* stream,
                                 void** params, void** extra) {
    char line[512];
    int n = snprintf(line, sizeof line, "%s grid=%u,%u,%u block=%u,%u,%u shared=%u", (const char*)f,
                     gx, gy, gz, bx, by, bz, shared);
    if (strncmp((const char*)f, "moemla_moe_route_", 17) == 0) {
        snprintf(line + n, sizeof line - (size_t)n, " scalars=%d,%d,%d,%d,%d,%d,%d,%g",
                 *(int*)params[5], *(int*)params[6], *(int*)params[7], *(int*)params[8],
                 *(int*)params[9], *(int*)params[10], *(int*)params[11], *(float*)params[12]);
    }
    log_line(line);
    return stream == &the_stream && extra == NULL ? 0 : 1;
}
