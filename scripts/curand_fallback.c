/*
 * A stand-in for libcurand.so.10 on a GPU machine whose PyTorch wheels do not bring cuRAND
 * (torch 2.15 installs cuda-toolkit[cublas,cudart,...] without curand) - docs/GPU.md.
 *
 * candle creates a cuRAND generator when it opens a CUDA device, and fills tensors from it
 * in Tensor::rand / Tensor::randn; without libcurand.so.10 the binary does not even start.
 * This library exports the cuRAND functions that cudarc binds and computes the numbers on the
 * host (SplitMix64; Box-Muller for the normal distribution; Knuth's or a rounded normal for
 * Poisson), then copies them to the device on the generator's stream through the driver API.
 * The distributions are right, the sequences are not cuRAND's (nor PyTorch's): nothing may
 * depend on the exact numbers. scripts/gpu_run.sh puts it on the library path only when no
 * real libcurand.so.10 is found, and says so.
 *
 *   cc -shared -fPIC -O2 -Wl,-soname,libcurand.so.10 -o libcurand.so.10 curand_fallback.c -ldl -lm
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef int curandStatus_t;
enum {
    CURAND_STATUS_SUCCESS = 0,
    CURAND_STATUS_NOT_INITIALIZED = 101,
    CURAND_STATUS_ALLOCATION_FAILED = 102,
    CURAND_STATUS_OUT_OF_RANGE = 104,
    CURAND_STATUS_LAUNCH_FAILURE = 201,
    CURAND_STATUS_INITIALIZATION_FAILED = 203,
};

struct generator {
    uint64_t state;
    uint64_t seed;
    void *stream;
};
typedef struct generator *curandGenerator_t;

typedef int (*memcpy_htod_async_fn)(unsigned long long, const void *, size_t, void *);
typedef int (*stream_sync_fn)(void *);

static uint64_t next(struct generator *g) {
    uint64_t z = (g->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* In (0, 1], as cuRAND's uniform: never 0, so that log() in Box-Muller stays finite. */
static double uniform(struct generator *g) { return ((next(g) >> 11) + 1) * 0x1p-53; }
static float uniform_f(struct generator *g) { return ((next(g) >> 40) + 1) * 0x1p-24f; }

static double normal(struct generator *g) {
    return sqrt(-2.0 * log(uniform(g))) * cos(6.283185307179586 * uniform(g));
}

static unsigned int poisson(struct generator *g, double lambda) {
    if (lambda < 64.0) {
        double limit = exp(-lambda), p = uniform(g);
        unsigned int k = 0;
        while (p > limit) {
            p *= uniform(g);
            k++;
        }
        return k;
    }
    double x = floor(lambda + sqrt(lambda) * normal(g) + 0.5);
    return x < 0 ? 0 : (unsigned int)x;
}

/* Copies bytes from the host to the device pointer dst on the generator's stream and waits
 * for it. libcuda.so.1 is loaded already (the binary needs it), so its symbols are found. */
static curandStatus_t to_device(struct generator *g, void *dst, const void *src, size_t bytes) {
    static memcpy_htod_async_fn copy;
    static stream_sync_fn sync;
    if (!copy) {
        copy = (memcpy_htod_async_fn)dlsym(RTLD_DEFAULT, "cuMemcpyHtoDAsync_v2");
        sync = (stream_sync_fn)dlsym(RTLD_DEFAULT, "cuStreamSynchronize");
        if (!copy || !sync) return CURAND_STATUS_INITIALIZATION_FAILED;
    }
    if (copy((unsigned long long)(uintptr_t)dst, src, bytes, g->stream) != 0)
        return CURAND_STATUS_LAUNCH_FAILURE;
    return sync(g->stream) == 0 ? CURAND_STATUS_SUCCESS : CURAND_STATUS_LAUNCH_FAILURE;
}

#define FILL(T, out, n, expr)                                              \
    do {                                                                   \
        if (!g) return CURAND_STATUS_NOT_INITIALIZED;                      \
        if (n == 0) return CURAND_STATUS_SUCCESS;                          \
        T *host = malloc((n) * sizeof(T));                                 \
        if (!host) return CURAND_STATUS_ALLOCATION_FAILED;                 \
        for (size_t i = 0; i < (n); i++) host[i] = (expr);                 \
        curandStatus_t status = to_device(g, out, host, (n) * sizeof(T)); \
        free(host);                                                        \
        return status;                                                     \
    } while (0)

curandStatus_t curandCreateGenerator(curandGenerator_t *gen, int rng_type) {
    (void)rng_type;
    static int told;
    if (!told++)
        fprintf(stderr, "libcurand.so.10: unetpp's host-side stand-in "
                        "(scripts/curand_fallback.c), not NVIDIA's cuRAND\n");
    struct generator *g = calloc(1, sizeof *g);
    if (!g) return CURAND_STATUS_ALLOCATION_FAILED;
    *gen = g;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandCreateGeneratorHost(curandGenerator_t *gen, int rng_type) {
    return curandCreateGenerator(gen, rng_type);
}

curandStatus_t curandDestroyGenerator(curandGenerator_t g) {
    if (!g) return CURAND_STATUS_NOT_INITIALIZED;
    free(g);
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandGetVersion(int *version) {
    *version = 10400;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandSetStream(curandGenerator_t g, void *stream) {
    if (!g) return CURAND_STATUS_NOT_INITIALIZED;
    g->stream = stream;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandSetPseudoRandomGeneratorSeed(curandGenerator_t g, unsigned long long seed) {
    if (!g) return CURAND_STATUS_NOT_INITIALIZED;
    g->seed = seed;
    g->state = seed;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandSetGeneratorOffset(curandGenerator_t g, unsigned long long offset) {
    if (!g) return CURAND_STATUS_NOT_INITIALIZED;
    g->state = g->seed + offset * 0x9e3779b97f4a7c15ull;
    return CURAND_STATUS_SUCCESS;
}

curandStatus_t curandSetGeneratorOrdering(curandGenerator_t g, int order) {
    (void)order;
    return g ? CURAND_STATUS_SUCCESS : CURAND_STATUS_NOT_INITIALIZED;
}

curandStatus_t curandGenerateSeeds(curandGenerator_t g) {
    return g ? CURAND_STATUS_SUCCESS : CURAND_STATUS_NOT_INITIALIZED;
}

curandStatus_t curandGenerate(curandGenerator_t g, unsigned int *out, size_t n) {
    FILL(unsigned int, out, n, (unsigned int)(next(g) >> 32));
}

curandStatus_t curandGenerateLongLong(curandGenerator_t g, unsigned long long *out, size_t n) {
    FILL(unsigned long long, out, n, next(g));
}

curandStatus_t curandGenerateUniform(curandGenerator_t g, float *out, size_t n) {
    FILL(float, out, n, uniform_f(g));
}

curandStatus_t curandGenerateUniformDouble(curandGenerator_t g, double *out, size_t n) {
    FILL(double, out, n, uniform(g));
}

curandStatus_t curandGenerateNormal(curandGenerator_t g, float *out, size_t n, float mean,
                                    float std) {
    FILL(float, out, n, (float)(mean + std * normal(g)));
}

curandStatus_t curandGenerateNormalDouble(curandGenerator_t g, double *out, size_t n,
                                          double mean, double std) {
    FILL(double, out, n, mean + std * normal(g));
}

curandStatus_t curandGenerateLogNormal(curandGenerator_t g, float *out, size_t n, float mean,
                                       float std) {
    FILL(float, out, n, (float)exp(mean + std * normal(g)));
}

curandStatus_t curandGenerateLogNormalDouble(curandGenerator_t g, double *out, size_t n,
                                             double mean, double std) {
    FILL(double, out, n, exp(mean + std * normal(g)));
}

curandStatus_t curandGeneratePoisson(curandGenerator_t g, unsigned int *out, size_t n,
                                     double lambda) {
    if (!(lambda > 0)) return CURAND_STATUS_OUT_OF_RANGE;
    FILL(unsigned int, out, n, poisson(g, lambda));
}
