/*
 * A fake NVML driver for tests: serves a scenario file through NVML's C API.
 *
 * The test suite builds this file into libnvidia-ml.so.1 so that the real,
 * unmodified pynvml module runs on machines without a GPU. The scenario file is
 * named by the FAKE_NVML_SCENARIO environment variable and written by
 * tests/fake_nvml/__init__.py in a line format (see parse_line below):
 *
 *     fake_nvml 1                     header, always first
 *     generation 3                    ignored; makes every write differ
 *     driver_version 550.54.15        node-level settings ...
 *     gpu GPU-0b5c...                 starts a GPU; the keys below apply to it
 *     name NVIDIA H100 80GB HBM3
 *     proc 1234 1048576 40 10         pid, memory bytes, sm %, memory %
 *     mig 1 0 10468982784 0           GPU instance, compute instance, total, used
 *     mig_uuid MIG-...                the keys below apply to the last MIG instance
 *     mig_proc 777 1048576 0 0
 *     end                             always last, so a torn file is detected
 *
 * Only NVML names are exported (-fvisibility=hidden plus EXPORT). All state sits
 * behind one mutex because ctypes releases the GIL during calls.
 */

#define _GNU_SOURCE

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- NVML types, written to match nvml.h on x86-64 ---------------------- */

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999,
};

/* Handles point into the static arrays below; the struct itself is opaque. */
struct fake_device {
    unsigned char unused;
};
typedef struct fake_device *nvmlDevice_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t;

typedef struct {
    unsigned int pid;
    unsigned long long timeStamp;
    unsigned int smUtil;
    unsigned int memUtil;
    unsigned int encUtil;
    unsigned int decUtil;
} nvmlProcessUtilizationSample_t;

_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t");
_Static_assert(offsetof(nvmlMemory_v2_t, total) == 8, "nvmlMemory_v2_t.total");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t");
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t");
_Static_assert(offsetof(nvmlPciInfo_t, busId) == 36, "nvmlPciInfo_t.busId");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t");
_Static_assert(offsetof(nvmlProcessInfo_t, gpuInstanceId) == 16, "gpuInstanceId");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "sample size");
_Static_assert(offsetof(nvmlProcessUtilizationSample_t, smUtil) == 16, "smUtil");

/* Wide enough for mW * ns over any uptime; __extension__ keeps -Wpedantic quiet. */
__extension__ typedef unsigned __int128 u128;

#define NVML_MEMORY_V2_VERSION 0x02000028u
#define NVML_TEMPERATURE_GPU 0u
#define NO_INSTANCE_ID 0xFFFFFFFFu

/* ---- Scenario ----------------------------------------------------------- */

#define MAX_GPUS 64
#define MAX_MIG 16
#define MAX_ERRORS 64
#define MAX_MISSING 256
#define STR_LEN 96    /* NVML_DEVICE_NAME_V2_BUFFER_SIZE, ..._UUID_V2_... */
#define DRIVER_LEN 80 /* NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE */
#define FUNC_LEN 96
#define REAL_MIG_SLOTS 7  /* what A100 and H100 report as the maximum */
#define GROWTH_PID_BASE 4194304u /* PID_MAX_LIMIT: no real process has it */
#define MAX_FILE_BYTES (64u << 20)

typedef struct {
    unsigned int pid;
    unsigned long long memory;
    unsigned int sm_percent;
    unsigned int memory_percent;
} proc_t;

typedef struct {
    proc_t *items;
    unsigned int n;
    unsigned int cap;
} proc_list_t;

typedef struct {
    char func[FUNC_LEN];
    nvmlReturn_t code;
} func_error_t;

typedef struct {
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
    char uuid[STR_LEN];
    char name[STR_LEN];
    unsigned long long memory_total;
    unsigned long long memory_used;
    proc_list_t procs;
} mig_cfg_t;

typedef struct {
    char uuid[STR_LEN];
    char name[STR_LEN];
    unsigned int power_mw;
    unsigned long long energy_mj;
    int integrate_energy;
    unsigned int gpu_util;
    unsigned int memory_util;
    unsigned long long memory_total;
    unsigned long long memory_used;
    unsigned int temperature;
    unsigned int power_limit_mw;
    int lost;
    proc_list_t procs;
    mig_cfg_t mig[MAX_MIG];
    unsigned int n_mig;
    func_error_t errors[MAX_ERRORS];
    unsigned int n_errors;
} gpu_cfg_t;

typedef struct {
    char driver_version[DRIVER_LEN];
    nvmlReturn_t init_error;
    char missing[MAX_MISSING][FUNC_LEN];
    unsigned int n_missing;
    unsigned int util_period_ms;
    unsigned int util_buffer_size;
    unsigned int util_sizing_count;
    unsigned int process_growth;
    gpu_cfg_t gpu[MAX_GPUS];
    unsigned int n_gpu;
} scenario_t;

/* ---- Runtime state ------------------------------------------------------ */

typedef struct {
    /* Energy in mW*ns (picojoules) at base_ns, kept exact across reloads. */
    u128 energy_base;
    long long energy_base_ns;
    /* Ring buffer of utilization samples, oldest at start. */
    nvmlProcessUtilizationSample_t *ring;
    unsigned int ring_cap;
    unsigned int ring_start;
    unsigned int ring_len;
    unsigned long long next_tick_us;
} gpu_rt_t;

typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_sig_t;

static struct {
    pthread_mutex_t mu;
    unsigned int refcount;
    scenario_t *scn;
    gpu_rt_t rt[MAX_GPUS];
    char path[PATH_MAX];
    file_sig_t sig;
    int have_sig;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

/*
 * The moment of this thread's last sizing call of nvmlDeviceGetProcessUtilization.
 * The fill call that follows it on the same device sees the same moment, so that
 * a sample period boundary falling between the two calls cannot make the fill
 * fail. Any next call of that function consumes it.
 */
static __thread struct {
    int valid;
    unsigned int gpu;
    unsigned long long us;
} util_snapshot;

static struct fake_device gpu_handles[MAX_GPUS];
static struct fake_device mig_handles[MAX_GPUS][MAX_MIG];

/* ---- Small helpers ------------------------------------------------------ */

static long long monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static unsigned long long realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000ULL +
           (unsigned long long)ts.tv_nsec / 1000ULL;
}

__attribute__((format(printf, 1, 2))) static void warn(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fake_nvml: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static nvmlReturn_t copy_string(char *dst, unsigned int len, const char *src)
{
    size_t need = strlen(src) + 1;
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (len < need)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, need);
    return NVML_SUCCESS;
}

/* ---- Scenario parsing --------------------------------------------------- */

static void free_scenario(scenario_t *s)
{
    if (!s)
        return;
    for (unsigned int i = 0; i < s->n_gpu; i++) {
        free(s->gpu[i].procs.items);
        for (unsigned int j = 0; j < s->gpu[i].n_mig; j++)
            free(s->gpu[i].mig[j].procs.items);
    }
    free(s);
}

static int proc_append(proc_list_t *list, const proc_t *p)
{
    if (list->n == list->cap) {
        unsigned int cap = list->cap ? list->cap * 2 : 8;
        proc_t *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return -1;
        list->items = items;
        list->cap = cap;
    }
    list->items[list->n++] = *p;
    return 0;
}

/* Parses exactly n whitespace-separated decimal numbers, each at most max[i]. */
static int parse_numbers(char *text, unsigned long long *out, int n,
                         const unsigned long long *max)
{
    char *save = NULL;
    char *tok = strtok_r(text, " ", &save);
    for (int i = 0; i < n; i++, tok = strtok_r(NULL, " ", &save)) {
        char *end;
        if (!tok || tok[0] < '0' || tok[0] > '9')
            return -1;
        errno = 0;
        out[i] = strtoull(tok, &end, 10);
        if (errno || *end || out[i] > max[i])
            return -1;
    }
    return tok ? -1 : 0;
}

static int parse_one(char *text, unsigned long long max, unsigned long long *out)
{
    return parse_numbers(text, out, 1, &max);
}

static int parse_uint(char *text, unsigned int *out)
{
    unsigned long long v;
    if (parse_one(text, UINT_MAX, &v))
        return -1;
    *out = (unsigned int)v;
    return 0;
}

static int parse_flag(char *text, int *out)
{
    unsigned long long v;
    if (parse_one(text, 1, &v))
        return -1;
    *out = (int)v;
    return 0;
}

static int parse_string(const char *text, char *out, size_t size)
{
    size_t len = strlen(text);
    if (len >= size)
        return -1;
    memcpy(out, text, len + 1);
    return 0;
}

static int parse_proc(char *text, proc_list_t *list)
{
    static const unsigned long long max[4] = {UINT_MAX, ULLONG_MAX, UINT_MAX,
                                              UINT_MAX};
    unsigned long long v[4];
    if (parse_numbers(text, v, 4, max))
        return -1;
    proc_t p = {(unsigned int)v[0], v[1], (unsigned int)v[2], (unsigned int)v[3]};
    return proc_append(list, &p);
}

/* Applies one "key value" line to the scenario; returns an error message or NULL. */
static const char *parse_line(scenario_t *s, const char *key, char *value)
{
    gpu_cfg_t *gpu = s->n_gpu ? &s->gpu[s->n_gpu - 1] : NULL;
    mig_cfg_t *mig = gpu && gpu->n_mig ? &gpu->mig[gpu->n_mig - 1] : NULL;
    unsigned long long v;

    if (!strcmp(key, "generation"))
        return NULL;
    if (!strcmp(key, "driver_version"))
        return parse_string(value, s->driver_version, DRIVER_LEN) ? "too long" : NULL;
    if (!strcmp(key, "init_error")) {
        if (parse_one(value, INT_MAX, &v))
            return "bad error code";
        s->init_error = (nvmlReturn_t)v;
        return NULL;
    }
    if (!strcmp(key, "missing")) {
        if (s->n_missing == MAX_MISSING)
            return "too many missing functions";
        if (parse_string(value, s->missing[s->n_missing], FUNC_LEN))
            return "function name too long";
        s->n_missing++;
        return NULL;
    }
    if (!strcmp(key, "util_sample_period_ms"))
        return parse_uint(value, &s->util_period_ms) ? "bad number" : NULL;
    if (!strcmp(key, "util_buffer_size"))
        return parse_uint(value, &s->util_buffer_size) ? "bad number" : NULL;
    if (!strcmp(key, "util_sizing_count"))
        return parse_uint(value, &s->util_sizing_count) ? "bad number" : NULL;
    if (!strcmp(key, "process_growth"))
        return parse_uint(value, &s->process_growth) ? "bad number" : NULL;
    if (!strcmp(key, "gpu")) {
        if (s->n_gpu == MAX_GPUS)
            return "too many GPUs";
        gpu = &s->gpu[s->n_gpu++];
        return parse_string(value, gpu->uuid, STR_LEN) ? "UUID too long" : NULL;
    }

    /* Everything below describes the current GPU. */
    if (!gpu)
        return "unknown key, or a GPU key before the first 'gpu' line";
    if (!strcmp(key, "name"))
        return parse_string(value, gpu->name, STR_LEN) ? "name too long" : NULL;
    if (!strcmp(key, "power_mw"))
        return parse_uint(value, &gpu->power_mw) ? "bad number" : NULL;
    if (!strcmp(key, "energy_mj"))
        return parse_one(value, ULLONG_MAX, &gpu->energy_mj) ? "bad number" : NULL;
    if (!strcmp(key, "integrate_energy"))
        return parse_flag(value, &gpu->integrate_energy) ? "expected 0 or 1" : NULL;
    if (!strcmp(key, "gpu_util_percent"))
        return parse_uint(value, &gpu->gpu_util) ? "bad number" : NULL;
    if (!strcmp(key, "memory_util_percent"))
        return parse_uint(value, &gpu->memory_util) ? "bad number" : NULL;
    if (!strcmp(key, "memory_total_bytes"))
        return parse_one(value, ULLONG_MAX, &gpu->memory_total) ? "bad number" : NULL;
    if (!strcmp(key, "memory_used_bytes"))
        return parse_one(value, ULLONG_MAX, &gpu->memory_used) ? "bad number" : NULL;
    if (!strcmp(key, "temperature_c"))
        return parse_uint(value, &gpu->temperature) ? "bad number" : NULL;
    if (!strcmp(key, "power_limit_mw"))
        return parse_uint(value, &gpu->power_limit_mw) ? "bad number" : NULL;
    if (!strcmp(key, "lost"))
        return parse_flag(value, &gpu->lost) ? "expected 0 or 1" : NULL;
    if (!strcmp(key, "proc"))
        return parse_proc(value, &gpu->procs) ? "expected: pid bytes sm% mem%" : NULL;
    if (!strcmp(key, "error")) {
        char *save = NULL;
        char *func = strtok_r(value, " ", &save);
        char *code = strtok_r(NULL, "", &save);
        func_error_t *e;
        if (gpu->n_errors == MAX_ERRORS)
            return "too many errors";
        e = &gpu->errors[gpu->n_errors];
        if (!func || !code || parse_string(func, e->func, FUNC_LEN) ||
            parse_one(code, INT_MAX, &v))
            return "expected: function code";
        e->code = (nvmlReturn_t)v;
        gpu->n_errors++;
        return NULL;
    }
    if (!strcmp(key, "mig")) {
        static const unsigned long long max[4] = {UINT_MAX, UINT_MAX, ULLONG_MAX,
                                                  ULLONG_MAX};
        unsigned long long f[4];
        if (gpu->n_mig == MAX_MIG)
            return "too many MIG instances";
        if (parse_numbers(value, f, 4, max))
            return "expected: gpu_instance compute_instance total used";
        mig = &gpu->mig[gpu->n_mig++];
        mig->gpu_instance_id = (unsigned int)f[0];
        mig->compute_instance_id = (unsigned int)f[1];
        mig->memory_total = f[2];
        mig->memory_used = f[3];
        return NULL;
    }

    /* Everything below describes the current MIG instance. */
    if (!mig)
        return "unknown key, or a MIG key before the first 'mig' line";
    if (!strcmp(key, "mig_uuid"))
        return parse_string(value, mig->uuid, STR_LEN) ? "UUID too long" : NULL;
    if (!strcmp(key, "mig_name"))
        return parse_string(value, mig->name, STR_LEN) ? "name too long" : NULL;
    if (!strcmp(key, "mig_proc"))
        return parse_proc(value, &mig->procs) ? "expected: pid bytes sm% mem%" : NULL;
    return "unknown key";
}

/*
 * Reads and parses the scenario at path. On success returns the scenario and
 * the signature of the file actually read; on failure returns NULL, sets *rc
 * and explains on stderr.
 */
static scenario_t *load_file(const char *path, file_sig_t *sig, nvmlReturn_t *rc)
{
    FILE *f = fopen(path, "rb");
    struct stat st;
    char *text = NULL;
    scenario_t *s = NULL;
    const char *err = NULL;
    unsigned long lineno = 0;
    int header = 0, ended = 0;

    *rc = NVML_ERROR_UNKNOWN;
    if (!f) {
        warn("cannot open scenario %s: %s", path, strerror(errno));
        *rc = NVML_ERROR_DRIVER_NOT_LOADED;
        return NULL;
    }
    /* The signature comes from the open file, so a concurrent replace is
       noticed again on the next call rather than missed. */
    if (fstat(fileno(f), &st) || (unsigned long long)st.st_size > MAX_FILE_BYTES)
        goto fail;
    sig->dev = st.st_dev;
    sig->ino = st.st_ino;
    sig->size = st.st_size;
    sig->mtime = st.st_mtim;
    text = malloc((size_t)st.st_size + 1);
    s = calloc(1, sizeof *s);
    if (!text || !s)
        goto fail;
    text[fread(text, 1, (size_t)st.st_size, f)] = '\0';

    for (char *line = text, *next; line && *line; line = next) {
        char *sp;
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        if (!*line || *line == '#')
            continue;
        if (ended) {
            err = "text after 'end'";
            break;
        }
        sp = strchr(line, ' ');
        if (sp)
            *sp = '\0';
        if (!header) {
            unsigned long long version;
            if (strcmp(line, "fake_nvml") || !sp || parse_one(sp + 1, 1, &version)) {
                err = "expected the header 'fake_nvml 1'";
                break;
            }
            header = 1;
            continue;
        }
        if (!strcmp(line, "end")) {
            ended = 1;
            continue;
        }
        err = parse_line(s, line, sp ? sp + 1 : line + strlen(line));
        if (err)
            break;
    }
    if (!err && !ended)
        err = "missing 'end' (truncated file?)";
    if (err) {
        warn("%s:%lu: %s", path, lineno, err);
        goto fail;
    }
    free(text);
    fclose(f);
    *rc = NVML_SUCCESS;
    return s;

fail:
    free(text);
    free_scenario(s);
    fclose(f);
    return NULL;
}

/* ---- Energy and utilization samples ------------------------------------- */

static u128 energy_fine(const gpu_cfg_t *c, const gpu_rt_t *rt,
                                     long long now_ns)
{
    u128 e = rt->energy_base;
    if (c->integrate_energy && now_ns > rt->energy_base_ns)
        e += (u128)c->power_mw *
             (unsigned long long)(now_ns - rt->energy_base_ns);
    return e;
}

static unsigned long long energy_mj(const gpu_cfg_t *c, const gpu_rt_t *rt,
                                    long long now_ns)
{
    /* mW * ns = 1e-12 J; 1e9 of them make one mJ. */
    return (unsigned long long)(energy_fine(c, rt, now_ns) / 1000000000u);
}

static void ring_push(gpu_rt_t *rt, const proc_t *p, unsigned long long ts)
{
    unsigned int pos;
    if (!rt->ring_cap)
        return;
    pos = (rt->ring_start + rt->ring_len) % rt->ring_cap;
    if (rt->ring_len == rt->ring_cap)
        rt->ring_start = (rt->ring_start + 1) % rt->ring_cap; /* drop the oldest */
    else
        rt->ring_len++;
    rt->ring[pos] = (nvmlProcessUtilizationSample_t){
        .pid = p->pid, .timeStamp = ts, .smUtil = p->sm_percent,
        .memUtil = p->memory_percent};
}

static int samples_something(const proc_t *p)
{
    return p->sm_percent > 0 || p->memory_percent > 0;
}

static void take_samples(const gpu_cfg_t *c, gpu_rt_t *rt, unsigned long long ts)
{
    for (unsigned int i = 0; i < c->procs.n; i++)
        if (samples_something(&c->procs.items[i]))
            ring_push(rt, &c->procs.items[i], ts);
}

/* Adds the samples of every period boundary up to now_us that is still due. */
static void catch_up_samples(const scenario_t *s, const gpu_cfg_t *c, gpu_rt_t *rt,
                             unsigned long long now_us)
{
    unsigned long long period = (unsigned long long)s->util_period_ms * 1000ULL;
    unsigned long long ticks, keep;
    unsigned int active = 0;

    if (!period || rt->next_tick_us > now_us)
        return;
    for (unsigned int i = 0; i < c->procs.n; i++)
        active += samples_something(&c->procs.items[i]) ? 1u : 0u;
    ticks = (now_us - rt->next_tick_us) / period + 1;
    /* After a long pause only the newest ticks fit the ring; skip the rest. */
    keep = active ? rt->ring_cap / active + 1 : 0;
    if (ticks > keep) {
        rt->next_tick_us += (ticks - keep) * period;
        ticks = keep;
    }
    for (; ticks > 0; ticks--, rt->next_tick_us += period)
        take_samples(c, rt, rt->next_tick_us);
}

/* Gives rt a ring of cap samples, keeping the newest ones it already had. */
static void ring_resize(gpu_rt_t *rt, unsigned int cap)
{
    nvmlProcessUtilizationSample_t *ring = NULL;
    unsigned int keep = rt->ring_len < cap ? rt->ring_len : cap;

    if (cap == rt->ring_cap)
        return;
    if (cap) {
        ring = calloc(cap, sizeof *ring);
        if (!ring) {
            cap = 0;
            keep = 0;
        }
    }
    for (unsigned int i = 0; i < keep; i++)
        ring[i] = rt->ring[(rt->ring_start + rt->ring_len - keep + i) % rt->ring_cap];
    free(rt->ring);
    rt->ring = ring;
    rt->ring_cap = cap;
    rt->ring_start = 0;
    rt->ring_len = keep;
}

/* ---- Loading and reloading ---------------------------------------------- */

static int find_gpu(const scenario_t *s, const char *uuid)
{
    if (s)
        for (unsigned int i = 0; i < s->n_gpu; i++)
            if (!strcmp(s->gpu[i].uuid, uuid))
                return (int)i;
    return -1;
}

/*
 * Installs a newly parsed scenario. A GPU whose UUID was already present keeps
 * its sample history, and its energy counter carries on unless energy_mj
 * changed (a driver reload); with fresh set, everything starts over.
 */
static void install(scenario_t *s, int fresh)
{
    long long now_ns = monotonic_ns();
    unsigned long long now_us = realtime_us();
    unsigned long long period = (unsigned long long)s->util_period_ms * 1000ULL;
    scenario_t *old = g.scn;
    gpu_rt_t rt[MAX_GPUS];

    memset(rt, 0, sizeof rt);
    for (unsigned int i = 0; i < s->n_gpu; i++) {
        const gpu_cfg_t *c = &s->gpu[i];
        int j = fresh ? -1 : find_gpu(old, c->uuid);
        gpu_rt_t *r = &rt[i];

        r->energy_base = (u128)c->energy_mj * 1000000000u;
        if (j >= 0) {
            const gpu_cfg_t *oc = &old->gpu[j];
            gpu_rt_t *orr = &g.rt[j];
            /* Samples due before now belong to the old scenario. */
            catch_up_samples(old, oc, orr, now_us);
            if (oc->energy_mj == c->energy_mj)
                r->energy_base = energy_fine(oc, orr, now_ns);
            r->ring = orr->ring;
            r->ring_cap = orr->ring_cap;
            r->ring_start = orr->ring_start;
            r->ring_len = orr->ring_len;
            /* Moved, not shared: a repeated UUID gets an empty ring. */
            orr->ring = NULL;
            orr->ring_cap = orr->ring_start = orr->ring_len = 0;
        }
        r->energy_base_ns = now_ns;
        ring_resize(r, s->util_buffer_size);
        /* One sample at load time, so the first query finds something. */
        take_samples(c, r, now_us);
        r->next_tick_us = now_us + period;
    }
    for (unsigned int i = 0; i < MAX_GPUS; i++)
        free(g.rt[i].ring);
    memcpy(g.rt, rt, sizeof rt);
    free_scenario(old);
    g.scn = s;
}

static int same_file(const file_sig_t *a, const file_sig_t *b)
{
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Reloads the current scenario file if it changed since it was read. */
static void check_reload(void)
{
    struct stat st;
    file_sig_t now, read_sig;
    nvmlReturn_t rc;
    scenario_t *s;

    if (!g.path[0] || stat(g.path, &st))
        return;
    now = (file_sig_t){st.st_dev, st.st_ino, st.st_size, st.st_mtim};
    if (g.have_sig && same_file(&now, &g.sig))
        return;
    s = load_file(g.path, &read_sig, &rc);
    /* Remember a broken file too, so that it is reported once, not per call. */
    g.sig = s ? read_sig : now;
    g.have_sig = 1;
    if (s)
        install(s, 0);
}

/* The 0 -> 1 init transition: a new scenario path starts a fresh machine. */
static nvmlReturn_t load_for_init(void)
{
    const char *path = getenv("FAKE_NVML_SCENARIO");
    file_sig_t sig;
    nvmlReturn_t rc;
    scenario_t *s;

    if (!path || !*path) {
        warn("FAKE_NVML_SCENARIO is not set");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    if (strlen(path) >= sizeof g.path)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (g.scn && !strcmp(path, g.path)) {
        check_reload();
        return NVML_SUCCESS;
    }
    s = load_file(path, &sig, &rc);
    if (!s)
        return rc;
    strcpy(g.path, path);
    g.sig = sig;
    g.have_sig = 1;
    install(s, 1);
    return NVML_SUCCESS;
}

/* ---- Call prologue ------------------------------------------------------ */

typedef struct {
    unsigned int index; /* NVML index of the physical GPU */
    gpu_cfg_t *gpu;
    gpu_rt_t *rt;
    mig_cfg_t *mig; /* NULL for a physical GPU handle */
    unsigned int mig_slot;
} dev_ref_t;

static int is_missing(const char *func)
{
    if (g.scn)
        for (unsigned int i = 0; i < g.scn->n_missing; i++)
            if (!strcmp(g.scn->missing[i], func))
                return 1;
    return 0;
}

/* Locks the state and checks what every call checks. Pair with leave(). */
static nvmlReturn_t enter(const char *func)
{
    pthread_mutex_lock(&g.mu);
    if (g.refcount > 0)
        check_reload();
    if (is_missing(func))
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    if (g.refcount == 0)
        return NVML_ERROR_UNINITIALIZED;
    return NVML_SUCCESS;
}

static nvmlReturn_t leave(nvmlReturn_t rc)
{
    pthread_mutex_unlock(&g.mu);
    return rc;
}

static nvmlReturn_t device_faults(const char *func, const gpu_cfg_t *gpu)
{
    if (gpu->lost)
        return NVML_ERROR_GPU_IS_LOST;
    for (unsigned int i = 0; i < gpu->n_errors; i++)
        if (!strcmp(gpu->errors[i].func, func))
            return gpu->errors[i].code;
    return NVML_SUCCESS;
}

/* Maps a handle back to its device; comparisons go through uintptr_t. */
static int resolve(nvmlDevice_t h, dev_ref_t *d)
{
    uintptr_t p = (uintptr_t)h;
    uintptr_t gb = (uintptr_t)gpu_handles, mb = (uintptr_t)mig_handles;
    unsigned int gpu, slot = 0;
    int mig = 0;

    if (p >= gb && p < gb + sizeof gpu_handles) {
        gpu = (unsigned int)((p - gb) / sizeof gpu_handles[0]);
    } else if (p >= mb && p < mb + sizeof mig_handles) {
        size_t k = (p - mb) / sizeof mig_handles[0][0];
        gpu = (unsigned int)(k / MAX_MIG);
        slot = (unsigned int)(k % MAX_MIG);
        mig = 1;
    } else {
        return 0;
    }
    if (gpu >= g.scn->n_gpu || (mig && slot >= g.scn->gpu[gpu].n_mig))
        return 0;
    d->index = gpu;
    d->gpu = &g.scn->gpu[gpu];
    d->rt = &g.rt[gpu];
    d->mig = mig ? &d->gpu->mig[slot] : NULL;
    d->mig_slot = slot;
    return 1;
}

/* Prologue of a call on any handle, physical or MIG, with one out pointer. */
static nvmlReturn_t enter_device(const char *func, nvmlDevice_t h, dev_ref_t *d,
                                 const void *out)
{
    nvmlReturn_t rc = enter(func);
    if (rc != NVML_SUCCESS)
        return rc;
    if (!resolve(h, d))
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = device_faults(func, d->gpu);
    if (rc != NVML_SUCCESS)
        return rc;
    return out ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

/* Prologue of a board-level call: MIG handles get NOT_SUPPORTED. */
static nvmlReturn_t enter_board(const char *func, nvmlDevice_t h, dev_ref_t *d,
                                const void *out)
{
    nvmlReturn_t rc = enter_device(func, h, d, out);
    if (rc == NVML_SUCCESS && d->mig)
        rc = NVML_ERROR_NOT_SUPPORTED;
    return rc;
}

/* ---- Init, shutdown, errors, system ------------------------------------- */

static nvmlReturn_t init(const char *func)
{
    nvmlReturn_t rc = NVML_SUCCESS;

    pthread_mutex_lock(&g.mu);
    if (g.refcount > 0)
        check_reload();
    else
        rc = load_for_init();
    if (rc == NVML_SUCCESS && is_missing(func))
        rc = NVML_ERROR_FUNCTION_NOT_FOUND;
    /* A failing driver fails the first init; nested inits just count. */
    if (rc == NVML_SUCCESS && g.refcount == 0 && g.scn->init_error)
        rc = g.scn->init_error;
    if (rc == NVML_SUCCESS)
        g.refcount++;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return init(__func__);
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return init(__func__);
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS)
        g.refcount--;
    return leave(rc);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case 0: return "Success";
    case 1: return "Uninitialized";
    case 2: return "Invalid Argument";
    case 3: return "Not Supported";
    case 4: return "Insufficient Permissions";
    case 5: return "Already Initialized";
    case 6: return "Not Found";
    case 7: return "Insufficient Size";
    case 8: return "Insufficient External Power";
    case 9: return "Driver Not Loaded";
    case 10: return "Timeout";
    case 11: return "Interrupt Request Issue";
    case 12: return "NVML Shared Library Not Found";
    case 13: return "Function Not Found";
    case 14: return "Corrupted infoROM";
    case 15: return "GPU is lost";
    case 16: return "GPU requires restart";
    case 17: return "The operating system has blocked the request";
    case 18: return "RM has detected an NVML/RM version mismatch";
    case 19: return "In use by another client";
    case 20: return "Insufficient Memory";
    case 21: return "No data";
    case 22: return "ECC is not supported on this vGPU";
    case 23: return "Insufficient resources";
    case 24: return "Frequency not supported";
    case 25: return "Argument version mismatch";
    case 26: return "Deprecated";
    case 27: return "Not ready";
    case 28: return "GPU not found";
    case 29: return "Invalid state";
    case 30: return "Reset type not supported";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS)
        rc = copy_string(version, length, g.scn->driver_version);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS && !deviceCount)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *deviceCount = g.scn->n_gpu;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index,
                                                  nvmlDevice_t *device)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS && (index >= g.scn->n_gpu || !device))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    /* A GPU that fell off the bus cannot even be opened, as with nvidia-smi. */
    if (rc == NVML_SUCCESS)
        rc = device_faults(__func__, &g.scn->gpu[index]);
    if (rc == NVML_SUCCESS)
        *device = &gpu_handles[index];
    return leave(rc);
}

/* ---- Identity ----------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, index);
    if (rc == NVML_SUCCESS)
        *index = d.index;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name,
                                      unsigned int length)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, name);
    if (rc == NVML_SUCCESS)
        rc = copy_string(name, length, d.mig ? d.mig->name : d.gpu->name);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid,
                                      unsigned int length)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, uuid);
    if (rc == NVML_SUCCESS)
        rc = copy_string(uuid, length, d.mig ? d.mig->uuid : d.gpu->uuid);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, pci);
    if (rc == NVML_SUCCESS) {
        /* A made-up but well-formed address: bus 0x10 + index. */
        unsigned int bus = 0x10 + d.index;
        memset(pci, 0, sizeof *pci);
        pci->domain = 0;
        pci->bus = bus;
        pci->device = 0;
        pci->pciDeviceId = 0x233010DE;    /* H100 SXM5, NVIDIA's vendor ID */
        pci->pciSubSystemId = 0x16C110DE;
        snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "0000:%02X:00.0", bus);
        snprintf(pci->busId, sizeof pci->busId, "00000000:%02X:00.0", bus);
    }
    return leave(rc);
}

/* ---- Power, energy, temperature, utilization ---------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, power);
    if (rc == NVML_SUCCESS)
        *power = d.gpu->power_mw;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device,
                                                        unsigned long long *energy)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, energy);
    if (rc == NVML_SUCCESS)
        *energy = energy_mj(d.gpu, d.rt, monotonic_ns());
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device,
                                                    unsigned int *limit)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, limit);
    if (rc == NVML_SUCCESS)
        *limit = d.gpu->power_limit_mw;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device,
                                                      unsigned int *limit)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, limit);
    if (rc == NVML_SUCCESS)
        *limit = d.gpu->power_limit_mw;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, unsigned int sensor,
                                             unsigned int *temp)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, temp);
    if (rc == NVML_SUCCESS && sensor != NVML_TEMPERATURE_GPU)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *temp = d.gpu->temperature;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device,
                                                  nvmlUtilization_t *util)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, util);
    if (rc == NVML_SUCCESS) {
        util->gpu = d.gpu->gpu_util;
        util->memory = d.gpu->memory_util;
    }
    return leave(rc);
}

/* ---- Memory ------------------------------------------------------------- */

static void memory_of(const dev_ref_t *d, unsigned long long *total,
                      unsigned long long *used)
{
    *total = d->mig ? d->mig->memory_total : d->gpu->memory_total;
    *used = d->mig ? d->mig->memory_used : d->gpu->memory_used;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, memory);
    if (rc == NVML_SUCCESS) {
        memory_of(&d, &memory->total, &memory->used);
        memory->free = memory->used < memory->total ? memory->total - memory->used : 0;
    }
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device,
                                               nvmlMemory_v2_t *memory)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, memory);
    if (rc == NVML_SUCCESS && memory->version != NVML_MEMORY_V2_VERSION)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS) {
        /* The scenario has no reserved memory, so v2's used equals v1's. */
        memory_of(&d, &memory->total, &memory->used);
        memory->reserved = 0;
        memory->free = memory->used < memory->total ? memory->total - memory->used : 0;
    }
    return leave(rc);
}

/* ---- Running processes -------------------------------------------------- */

static void put_process(nvmlProcessInfo_t *out, unsigned int pid,
                        unsigned long long memory, const mig_cfg_t *mig)
{
    out->pid = pid;
    out->usedGpuMemory = memory;
    out->gpuInstanceId = mig ? mig->gpu_instance_id : NO_INSTANCE_ID;
    out->computeInstanceId = mig ? mig->compute_instance_id : NO_INSTANCE_ID;
}

/*
 * The two-call pattern: a call without a buffer learns the count; a call with
 * one also sees the process_growth processes that "started" in between. A
 * parent GPU in MIG mode lists its instances' processes too.
 */
static nvmlReturn_t running_processes(const char *func, nvmlDevice_t device,
                                      unsigned int *count, nvmlProcessInfo_t *infos)
{
    dev_ref_t d;
    unsigned int n = 0, total, k = 0;
    nvmlReturn_t rc = enter_device(func, device, &d, count);

    if (rc != NVML_SUCCESS)
        return leave(rc);
    if (d.mig) {
        n = d.mig->procs.n;
    } else {
        n = d.gpu->procs.n;
        for (unsigned int j = 0; j < d.gpu->n_mig; j++)
            n += d.gpu->mig[j].procs.n;
    }
    if (!infos) {
        if (n == 0) {
            *count = 0;
            return leave(NVML_SUCCESS);
        }
        if (*count >= n)
            return leave(NVML_ERROR_INVALID_ARGUMENT);
        *count = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    total = n + g.scn->process_growth;
    if (*count < total) {
        *count = total;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if (d.mig) {
        for (unsigned int i = 0; i < d.mig->procs.n; i++, k++)
            put_process(&infos[k], d.mig->procs.items[i].pid,
                        d.mig->procs.items[i].memory, d.mig);
    } else {
        for (unsigned int i = 0; i < d.gpu->procs.n; i++, k++)
            put_process(&infos[k], d.gpu->procs.items[i].pid,
                        d.gpu->procs.items[i].memory, NULL);
        for (unsigned int j = 0; j < d.gpu->n_mig; j++) {
            const mig_cfg_t *m = &d.gpu->mig[j];
            for (unsigned int i = 0; i < m->procs.n; i++, k++)
                put_process(&infos[k], m->procs.items[i].pid, m->procs.items[i].memory,
                            m);
        }
    }
    for (unsigned int i = 0; k < total; i++, k++)
        put_process(&infos[k], GROWTH_PID_BASE + i, 0, d.mig);
    *count = total;
    return leave(NVML_SUCCESS);
}

#ifndef FAKE_NVML_OMIT_V3
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return running_processes(__func__, device, infoCount, infos);
}
#endif

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *infoCount,
                                                            nvmlProcessInfo_t *infos)
{
    return running_processes(__func__, device, infoCount, infos);
}

/* ---- Per-process utilization -------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetProcessUtilization(
    nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
    unsigned int *processSamplesCount, unsigned long long lastSeenTimeStamp)
{
    dev_ref_t d;
    unsigned long long now;
    unsigned int found = 0, k = 0;
    gpu_rt_t *rt;
    nvmlReturn_t rc = enter_board(__func__, device, &d, processSamplesCount);

    /* nvml.h: not supported on MIG-enabled GPUs. */
    if (rc == NVML_SUCCESS && d.gpu->n_mig > 0)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc != NVML_SUCCESS)
        return leave(rc);

    rt = d.rt;
    if (utilization && util_snapshot.valid && util_snapshot.gpu == d.index)
        now = util_snapshot.us;
    else
        now = realtime_us();
    util_snapshot.valid = 0;
    catch_up_samples(g.scn, d.gpu, rt, now);
    for (unsigned int i = 0; i < rt->ring_len; i++) {
        unsigned long long ts = rt->ring[(rt->ring_start + i) % rt->ring_cap].timeStamp;
        found += ts > lastSeenTimeStamp && ts <= now;
    }
    if (found == 0) {
        *processSamplesCount = 0;
        return leave(NVML_ERROR_NOT_FOUND);
    }
    if (!utilization || *processSamplesCount < found) {
        util_snapshot.valid = 1;
        util_snapshot.gpu = d.index;
        util_snapshot.us = now;
        *processSamplesCount =
            !utilization && g.scn->util_sizing_count ? g.scn->util_sizing_count : found;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int i = 0; i < rt->ring_len; i++) {
        const nvmlProcessUtilizationSample_t *s =
            &rt->ring[(rt->ring_start + i) % rt->ring_cap];
        if (s->timeStamp > lastSeenTimeStamp && s->timeStamp <= now)
            utilization[k++] = *s;
    }
    *processSamplesCount = found;
    return leave(NVML_SUCCESS);
}

/* ---- MIG ---------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode,
                                         unsigned int *pendingMode)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, currentMode);
    if (rc == NVML_SUCCESS && !pendingMode)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS) {
        *currentMode = d.gpu->n_mig > 0;
        *pendingMode = d.gpu->n_mig > 0;
    }
    return leave(rc);
}

static unsigned int max_mig_devices(const gpu_cfg_t *gpu)
{
    if (gpu->n_mig == 0)
        return 0;
    return gpu->n_mig > REAL_MIG_SLOTS ? gpu->n_mig : REAL_MIG_SLOTS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device,
                                                   unsigned int *count)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, count);
    if (rc == NVML_SUCCESS)
        *count = max_mig_devices(d.gpu);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device,
                                                        unsigned int index,
                                                        nvmlDevice_t *migDevice)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_board(__func__, device, &d, migDevice);
    if (rc == NVML_SUCCESS && index >= max_mig_devices(d.gpu))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if (rc == NVML_SUCCESS && index >= d.gpu->n_mig)
        rc = NVML_ERROR_NOT_FOUND; /* an empty slot */
    if (rc == NVML_SUCCESS)
        *migDevice = &mig_handles[d.index][index];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice,
                                                                 nvmlDevice_t *device)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, migDevice, &d, device);
    if (rc == NVML_SUCCESS && !d.mig)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *device = &gpu_handles[d.index];
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device,
                                                unsigned int *isMigDevice)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, isMigDevice);
    if (rc == NVML_SUCCESS)
        *isMigDevice = d.mig != NULL;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, id);
    if (rc == NVML_SUCCESS && !d.mig)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *id = d.mig->gpu_instance_id;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device,
                                                   unsigned int *id)
{
    dev_ref_t d;
    nvmlReturn_t rc = enter_device(__func__, device, &d, id);
    if (rc == NVML_SUCCESS && !d.mig)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *id = d.mig->compute_instance_id;
    return leave(rc);
}
