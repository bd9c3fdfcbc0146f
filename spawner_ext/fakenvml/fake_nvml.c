/*
 * gpuhub's fake NVML: a small libnvidia-ml.so.1 for machines without NVIDIA GPUs (tests,
 * `gpuhub up --simulate-gpus`). Unmodified pynvml (nvidia-ml-py) loads it through
 * LD_LIBRARY_PATH and calls the functions below as it would call the real library's.
 *
 * The GPUs are described by a text file named by GPUHUB_FAKE_NVML_CONFIG, read again whenever
 * it changes (replace it atomically: write a new file and rename it over the old one). One
 * record per line, fields separated by tabs, the first field the record's kind:
 *
 *   system  driver=550.54.15  fail_init=0
 *   gpu     uuid=GPU-...  name=NVIDIA H100 80GB  memory_total=85520809984  memory_used=0
 *           utilization=0  memory_utilization=0  processes=4242:1048576,4243:0  fail=0
 *           mig_mode=0
 *   mig     parent=0  uuid=MIG-...  name=NVIDIA H100 80GB MIG 1g.10gb  memory_total=...
 *           memory_used=...  processes=...  fail=0
 *
 * `fail` is an NVML return code every query of that device answers (15: GPU is lost);
 * `fail_init` is what nvmlInit answers (9: driver not loaded). A MIG device has no
 * utilization: nvmlDeviceGetUtilizationRates answers NOT_SUPPORTED for it, as the real one does.
 * A device gone from the file answers GPU_IS_LOST to handles taken before.
 *
 * Written for this project (see spawner_ext/fakenvml/__init__.py); not NVIDIA's code.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define NVML_SUCCESS 0
#define NVML_ERROR_UNINITIALIZED 1
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NOT_FOUND 6
#define NVML_ERROR_INSUFFICIENT_SIZE 7
#define NVML_ERROR_GPU_IS_LOST 15
#define NVML_ERROR_UNKNOWN 999

#define MAX_GPUS 64
#define MAX_MIGS_PER_GPU 7
#define MAX_PROCS 64
#define TEXT 96

typedef int nvmlReturn_t;

typedef struct {
    unsigned long long total, free, used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total, reserved, free, used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu, memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId, computeInstanceId;
} nvmlProcessInfo_t;

struct fake_device {
    int present;
    int is_mig;
    int index;  /* GPU index, or the MIG device's index on its parent */
    int parent; /* for MIG devices */
    int fail;
    int mig_mode;
    char uuid[TEXT];
    char name[TEXT];
    unsigned long long memory_total, memory_used;
    unsigned int utilization, memory_utilization;
    unsigned int nprocs;
    unsigned int pids[MAX_PROCS];
    unsigned long long proc_memory[MAX_PROCS];
};

typedef struct fake_device *nvmlDevice_t;

static struct fake_device gpus[MAX_GPUS];
static struct fake_device migs[MAX_GPUS][MAX_MIGS_PER_GPU];
static unsigned int gpu_count;
static char driver[TEXT] = "550.54.15";
static int fail_init;
static int initialized;
static struct timespec loaded_mtime;
static ino_t loaded_inode;
static off_t loaded_size = -1;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void copy_text(char *to, const char *from) {
    snprintf(to, TEXT, "%s", from);
}

static void parse_processes(struct fake_device *d, const char *value) {
    d->nprocs = 0;
    const char *p = value;
    while (*p && d->nprocs < MAX_PROCS) {
        char *end;
        unsigned long pid = strtoul(p, &end, 10);
        unsigned long long memory = 0;
        if (end == p)
            break;
        if (*end == ':')
            memory = strtoull(end + 1, &end, 10);
        d->pids[d->nprocs] = (unsigned int)pid;
        d->proc_memory[d->nprocs] = memory;
        d->nprocs++;
        p = (*end == ',') ? end + 1 : end;
        if (*end != ',')
            break;
    }
}

static void set_field(struct fake_device *d, const char *key, const char *value) {
    if (!strcmp(key, "uuid"))
        copy_text(d->uuid, value);
    else if (!strcmp(key, "name"))
        copy_text(d->name, value);
    else if (!strcmp(key, "memory_total"))
        d->memory_total = strtoull(value, NULL, 10);
    else if (!strcmp(key, "memory_used"))
        d->memory_used = strtoull(value, NULL, 10);
    else if (!strcmp(key, "utilization"))
        d->utilization = (unsigned int)strtoul(value, NULL, 10);
    else if (!strcmp(key, "memory_utilization"))
        d->memory_utilization = (unsigned int)strtoul(value, NULL, 10);
    else if (!strcmp(key, "processes"))
        parse_processes(d, value);
    else if (!strcmp(key, "fail"))
        d->fail = atoi(value);
    else if (!strcmp(key, "mig_mode"))
        d->mig_mode = atoi(value);
    else if (!strcmp(key, "parent"))
        d->parent = atoi(value);
}

/* Split a line into its tab-separated key=value fields and apply them to `d`. */
static void apply_fields(char *fields, struct fake_device *d, int is_system) {
    char *save = NULL;
    for (char *field = strtok_r(fields, "\t", &save); field; field = strtok_r(NULL, "\t", &save)) {
        char *eq = strchr(field, '=');
        if (!eq)
            continue;
        *eq = '\0';
        const char *key = field, *value = eq + 1;
        if (is_system) {
            if (!strcmp(key, "driver"))
                copy_text(driver, value);
            else if (!strcmp(key, "fail_init"))
                fail_init = atoi(value);
        } else {
            set_field(d, key, value);
        }
    }
}

/* Read the config file again if it changed since it was last read. Called with `lock` held. */
static void reload(void) {
    const char *path = getenv("GPUHUB_FAKE_NVML_CONFIG");
    struct stat st;
    if (!path || stat(path, &st) != 0) {
        if (loaded_size != -1) { /* the file went away: no GPUs */
            for (unsigned int i = 0; i < MAX_GPUS; i++)
                gpus[i].present = 0;
            gpu_count = 0;
            loaded_size = -1;
        }
        return;
    }
    if (st.st_ino == loaded_inode && st.st_size == loaded_size &&
        st.st_mtim.tv_sec == loaded_mtime.tv_sec && st.st_mtim.tv_nsec == loaded_mtime.tv_nsec)
        return;
    FILE *file = fopen(path, "r");
    if (!file)
        return;
    static struct fake_device fresh_gpus[MAX_GPUS];
    static struct fake_device fresh_migs[MAX_GPUS][MAX_MIGS_PER_GPU];
    memset(fresh_gpus, 0, sizeof fresh_gpus);
    memset(fresh_migs, 0, sizeof fresh_migs);
    unsigned int count = 0;
    int mig_counts[MAX_GPUS] = {0};
    copy_text(driver, "550.54.15");
    fail_init = 0;
    char line[4096];
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, "\r\n")] = '\0';
        char *tab = strchr(line, '\t');
        if (line[0] == '#' || !tab)
            continue;
        *tab = '\0';
        char *kind = line, *fields = tab + 1;
        if (!strcmp(kind, "system")) {
            apply_fields(fields, NULL, 1);
        } else if (!strcmp(kind, "gpu") && count < MAX_GPUS) {
            struct fake_device *d = &fresh_gpus[count];
            d->present = 1;
            d->index = (int)count;
            apply_fields(fields, d, 0);
            count++;
        } else if (!strcmp(kind, "mig")) {
            struct fake_device probe = {0};
            char copy[4096];
            snprintf(copy, sizeof copy, "%s", fields);
            apply_fields(copy, &probe, 0);
            int parent = probe.parent;
            if (parent < 0 || parent >= MAX_GPUS || mig_counts[parent] >= MAX_MIGS_PER_GPU)
                continue;
            struct fake_device *d = &fresh_migs[parent][mig_counts[parent]];
            *d = probe;
            d->present = 1;
            d->is_mig = 1;
            d->index = mig_counts[parent]++;
        }
    }
    fclose(file);
    /* Copy into the slots handles point to, so handles taken earlier see the new state. */
    memcpy(gpus, fresh_gpus, sizeof gpus);
    memcpy(migs, fresh_migs, sizeof migs);
    gpu_count = count;
    loaded_inode = st.st_ino;
    loaded_size = st.st_size;
    loaded_mtime = st.st_mtim;
}

/* The device behind a handle after a reload, or the error a query of it answers. */
static nvmlReturn_t check(nvmlDevice_t device) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!device)
        return NVML_ERROR_INVALID_ARGUMENT;
    reload();
    if (!device->present)
        return NVML_ERROR_GPU_IS_LOST;
    if (device->is_mig && device->parent >= 0 && device->parent < MAX_GPUS &&
        gpus[device->parent].fail)
        return gpus[device->parent].fail;
    return device->fail;
}

#define LOCKED(body)                                                                       \
    do {                                                                                   \
        pthread_mutex_lock(&lock);                                                         \
        nvmlReturn_t locked_result = (body);                                               \
        pthread_mutex_unlock(&lock);                                                       \
        return locked_result;                                                              \
    } while (0)

static nvmlReturn_t init(void) {
    reload();
    if (fail_init)
        return fail_init;
    initialized++;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    LOCKED(init());
}
nvmlReturn_t nvmlInit_v2(void) { LOCKED(init()); }
nvmlReturn_t nvmlInit(void) { LOCKED(init()); }

static nvmlReturn_t shutdown_(void) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    initialized--;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlShutdown(void) { LOCKED(shutdown_()); }

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case 9: return "Driver Not Loaded";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t text_out(const char *value, char *out, unsigned int length) {
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(value) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, value, strlen(value) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t driver_version(char *out, unsigned int length) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    reload();
    return text_out(driver, out, length);
}
nvmlReturn_t nvmlSystemGetDriverVersion(char *out, unsigned int length) {
    LOCKED(driver_version(out, length));
}
nvmlReturn_t nvmlSystemGetNVMLVersion(char *out, unsigned int length) {
    LOCKED(driver_version(out, length));
}

static nvmlReturn_t count_(unsigned int *count) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    reload();
    *count = gpu_count;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count) { LOCKED(count_(count)); }
nvmlReturn_t nvmlDeviceGetCount(unsigned int *count) { LOCKED(count_(count)); }

static nvmlReturn_t by_index(unsigned int index, nvmlDevice_t *device) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    reload();
    if (!device || index >= gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *device = &gpus[index];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    LOCKED(by_index(index, device));
}
nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    LOCKED(by_index(index, device));
}

static nvmlReturn_t by_uuid(const char *uuid, nvmlDevice_t *device) {
    if (!initialized)
        return NVML_ERROR_UNINITIALIZED;
    if (!uuid || !device)
        return NVML_ERROR_INVALID_ARGUMENT;
    reload();
    for (unsigned int i = 0; i < gpu_count; i++) {
        if (!strcmp(gpus[i].uuid, uuid)) {
            *device = &gpus[i];
            return NVML_SUCCESS;
        }
        for (int m = 0; m < MAX_MIGS_PER_GPU; m++) {
            if (migs[i][m].present && !strcmp(migs[i][m].uuid, uuid)) {
                *device = &migs[i][m];
                return NVML_SUCCESS;
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device) {
    LOCKED(by_uuid(uuid, device));
}

static nvmlReturn_t name_(nvmlDevice_t device, char *out, unsigned int length) {
    nvmlReturn_t result = check(device);
    return result ? result : text_out(device->name, out, length);
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *out, unsigned int length) {
    LOCKED(name_(device, out, length));
}

static nvmlReturn_t uuid_(nvmlDevice_t device, char *out, unsigned int length) {
    nvmlReturn_t result = check(device);
    return result ? result : text_out(device->uuid, out, length);
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *out, unsigned int length) {
    LOCKED(uuid_(device, out, length));
}

static nvmlReturn_t index_(nvmlDevice_t device, unsigned int *index) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!index)
        return NVML_ERROR_INVALID_ARGUMENT;
    *index = (unsigned int)(device->is_mig ? device->parent : device->index);
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    LOCKED(index_(device, index));
}

static nvmlReturn_t memory_(nvmlDevice_t device, nvmlMemory_t *memory) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = device->memory_total;
    memory->used = device->memory_used;
    memory->free = device->memory_total > device->memory_used
                       ? device->memory_total - device->memory_used : 0;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory) {
    LOCKED(memory_(device, memory));
}

static nvmlReturn_t memory_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    nvmlMemory_t plain;
    nvmlReturn_t result = memory_(device, &plain);
    if (result)
        return result;
    if (!memory)
        return NVML_ERROR_INVALID_ARGUMENT;
    memory->total = plain.total;
    memory->reserved = 0;
    memory->free = plain.free;
    memory->used = plain.used;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory) {
    LOCKED(memory_v2(device, memory));
}

static nvmlReturn_t utilization_(nvmlDevice_t device, nvmlUtilization_t *rates) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (device->is_mig || device->mig_mode)
        return NVML_ERROR_NOT_SUPPORTED;
    if (!rates)
        return NVML_ERROR_INVALID_ARGUMENT;
    rates->gpu = device->utilization;
    rates->memory = device->memory_utilization;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates) {
    LOCKED(utilization_(device, rates));
}

static nvmlReturn_t processes_(nvmlDevice_t device, unsigned int *count, nvmlProcessInfo_t *infos) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int room = *count;
    *count = device->nprocs;
    if (device->nprocs == 0)
        return NVML_SUCCESS;
    if (!infos || room < device->nprocs)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    for (unsigned int i = 0; i < device->nprocs; i++) {
        infos[i].pid = device->pids[i];
        infos[i].usedGpuMemory = device->proc_memory[i];
        infos[i].gpuInstanceId = device->is_mig ? (unsigned int)device->index : 0xFFFFFFFFu;
        infos[i].computeInstanceId = device->is_mig ? 0 : 0xFFFFFFFFu;
    }
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    LOCKED(processes_(device, count, infos));
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device, unsigned int *count,
                                                     nvmlProcessInfo_t *infos) {
    LOCKED(processes_(device, count, infos));
}

static nvmlReturn_t mig_mode_(nvmlDevice_t device, unsigned int *current, unsigned int *pending) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (device->is_mig)
        return NVML_ERROR_NOT_SUPPORTED;
    if (!current || !pending)
        return NVML_ERROR_INVALID_ARGUMENT;
    *current = *pending = (unsigned int)device->mig_mode;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                  unsigned int *pending) {
    LOCKED(mig_mode_(device, current, pending));
}

static nvmlReturn_t max_migs(nvmlDevice_t device, unsigned int *count) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = device->is_mig ? 0 : MAX_MIGS_PER_GPU;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count) {
    LOCKED(max_migs(device, count));
}

static nvmlReturn_t mig_by_index(nvmlDevice_t device, unsigned int index, nvmlDevice_t *mig) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (device->is_mig || !mig || index >= MAX_MIGS_PER_GPU)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct fake_device *found = &migs[device->index][index];
    if (!found->present)
        return NVML_ERROR_NOT_FOUND;
    *mig = found;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig) {
    LOCKED(mig_by_index(device, index, mig));
}

static nvmlReturn_t is_mig(nvmlDevice_t device, unsigned int *answer) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!answer)
        return NVML_ERROR_INVALID_ARGUMENT;
    *answer = (unsigned int)device->is_mig;
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *answer) {
    LOCKED(is_mig(device, answer));
}

static nvmlReturn_t parent_of(nvmlDevice_t device, nvmlDevice_t *parent) {
    nvmlReturn_t result = check(device);
    if (result)
        return result;
    if (!device->is_mig || !parent)
        return NVML_ERROR_INVALID_ARGUMENT;
    *parent = &gpus[device->parent];
    return NVML_SUCCESS;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t device,
                                                          nvmlDevice_t *parent) {
    LOCKED(parent_of(device, parent));
}
