/*
 * A pool's code turned hostile, one attack a path, for the isolation tests
 * (tests/tests/isolation.rs). Each answers what it managed as text.
 *
 *   /hostile/scribble  overwrites every byte of the pool's shared region (found in
 *                      /proc/self/maps as /memfd:ngx-pool:...) with garbage, then answers
 *   /hostile/setuid    tries to become root again: setuid(0), setresuid(0, 0, 0), and writes a
 *                      file as whoever it is then (its path is the X_FILE pool_param)
 *   /hostile/shift     moves both positions of the request queue on by its capacity (`?ENQ,DEQ`:
 *                      their byte offsets in the region's header, which the test computes from
 *                      the Rust layout): every later push then finds the queue "full", a state the
 *                      region's own checks cannot see
 *   /hostile/empty     empties the free list whose head word is at byte OFFSET of the region
 *                      (`?OFFSET`): every later allocation from it fails, a state the region's
 *                      own checks cannot see
 *   /hostile/kill      sends signal SIG to process PID (`?PID,SIG`), answers what kill returned
 *   /hostile/ok        answers "ok"
 *
 * Before any request, in the pool manager (poold) as it loads the library, the same attempt:
 *   - in a constructor, when the environment has HOSTILE_ROOT_AT_LOAD=TARGET:REPORT (the pool's
 *     env=): it tries to write TARGET, and writes what it got into REPORT;
 *   - in init, with init args "setuid-at-init:TARGET:REPORT", likewise.
 */
#define _GNU_SOURCE
#include <ngx_pool.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static const ngx_pool_header plain[] = {{NGX_POOL_STR("Content-Type"), NGX_POOL_STR("text/plain")}};

static int is(const ngx_pool_host *h, ngx_pool_request *r, const char *path) {
    ngx_pool_str p = h->path(r);
    return p.len == strlen(path) && memcmp(p.data, path, p.len) == 0;
}

static int say(const ngx_pool_host *h, ngx_pool_request *r, const char *text) {
    int rc = h->start(r, 200, plain, 1);
    return rc == NGX_POOL_OK ? h->write(r, (const uint8_t *)text, strlen(text)) : rc;
}

/* The start of this process's mapping of its region (its first writable /memfd:ngx-pool: line). */
static unsigned char *region_base(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    unsigned long from = 0;
    if (maps == NULL) return NULL;
    while (fgets(line, sizeof line, maps) != NULL) {
        if (strstr(line, "/memfd:ngx-pool:") == NULL || strstr(line, " rw") == NULL) continue;
        if (sscanf(line, "%lx-", &from) == 1) break;
    }
    fclose(maps);
    return (unsigned char *)from;
}

/* Overwrites every mapping of an ngx-pool region in this process; returns the bytes written. */
static long scribble(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    long written = 0;
    if (maps == NULL) return -1;
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long from, to;
        if (strstr(line, "/memfd:ngx-pool:") == NULL) continue;
        if (sscanf(line, "%lx-%lx", &from, &to) != 2) continue;
        if (strstr(line, " rw") == NULL) continue;
        memset((void *)from, 0xA5, to - from);
        written += (long)(to - from);
    }
    fclose(maps);
    return written;
}

/* The root attempt: what setuid(0) and setresuid(0,0,0) returned, the uids after, and whether a
 * file could be written as root (its owner), into `text`. */
static void regain_root(const char *file, char *text, size_t size) {
    int a = setuid(0);
    int b = setresuid(0, 0, 0);
    int written = -1;
    if (file != NULL && *file != '\0') {
        int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            written = (int)write(fd, "written\n", 8);
            close(fd);
        }
    }
    snprintf(text, size, "setuid %d setresuid %d uid %d euid %d written %d", a, b, (int)getuid(),
             (int)geteuid(), written);
}

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    char out[256];
    if (is(h, r, "/hostile/scribble")) {
        snprintf(out, sizeof out, "scribbled %ld bytes", scribble());
        return say(h, r, out);
    }
    if (is(h, r, "/hostile/shift")) {
        ngx_pool_str q = h->query(r);
        char args[64] = "";
        unsigned long enq = 0, deq = 0;
        if (q.data != NULL && q.len < sizeof args) {
            memcpy(args, q.data, q.len);
            args[q.len] = '\0';
        }
        if (sscanf(args, "%lu,%lu", &enq, &deq) != 2) return say(h, r, "bad query");
        unsigned char *region = region_base();
        if (region == NULL) return say(h, r, "no region");
        uint32_t slots = *(uint32_t *)(region + 16); /* Header.geometry.slots */
        uint64_t cap = 1;
        while (cap < slots) cap <<= 1;
        __atomic_fetch_add((uint64_t *)(region + deq), cap, __ATOMIC_SEQ_CST);
        __atomic_fetch_add((uint64_t *)(region + enq), cap, __ATOMIC_SEQ_CST);
        return say(h, r, "shifted");
    }
    if (is(h, r, "/hostile/empty")) {
        ngx_pool_str q = h->query(r);
        char args[32] = "";
        unsigned long at = 0;
        if (q.data != NULL && q.len < sizeof args) {
            memcpy(args, q.data, q.len);
            args[q.len] = '\0';
        }
        if (sscanf(args, "%lu", &at) != 1) return say(h, r, "bad query");
        unsigned char *region = region_base();
        if (region == NULL) return say(h, r, "no region");
        /* The head word is tag << 32 | (index + 1), 0 meaning empty: a new tag, no index. */
        uint64_t *head = (uint64_t *)(region + at);
        uint64_t cur = __atomic_load_n(head, __ATOMIC_SEQ_CST);
        __atomic_store_n(head, ((cur >> 32) + 1) << 32, __ATOMIC_SEQ_CST);
        return say(h, r, "emptied");
    }
    if (is(h, r, "/hostile/kill")) {
        ngx_pool_str q = h->query(r);
        char args[64] = "";
        int pid = 0, sig = 0;
        if (q.data != NULL && q.len < sizeof args) {
            memcpy(args, q.data, q.len);
            args[q.len] = '\0';
        }
        if (sscanf(args, "%d,%d", &pid, &sig) != 2) return say(h, r, "bad query");
        int rc = kill(pid, sig);
        snprintf(out, sizeof out, "kill %d errno %d", rc, rc == 0 ? 0 : errno);
        return say(h, r, out);
    }
    if (is(h, r, "/hostile/setuid")) {
        ngx_pool_str f = h->param(r, "X_FILE");
        char file[256] = "";
        if (f.data != NULL && f.len < sizeof file) {
            memcpy(file, f.data, f.len);
            file[f.len] = '\0';
        }
        regain_root(file, out, sizeof out);
        return say(h, r, out);
    }
    return say(h, r, "ok");
}

/* The root attempt for "TARGET:REPORT": tries TARGET, leaves the outcome in REPORT. */
static void regain_root_reporting(const char *spec, size_t len) {
    char target[256], text[256];
    if (len >= sizeof target) return;
    memcpy(target, spec, len);
    target[len] = '\0';
    char *report = strchr(target, ':');
    if (report == NULL) return;
    *report++ = '\0';
    regain_root(target, text, sizeof text);
    int fd = open(report, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        (void)!write(fd, text, strlen(text));
        close(fd);
    }
}

__attribute__((constructor)) static void at_load(void) {
    const char *spec = getenv("HOSTILE_ROOT_AT_LOAD");
    if (spec != NULL) regain_root_reporting(spec, strlen(spec));
}

static int init(const ngx_pool_host *h, ngx_pool_str args) {
    (void)h;
    static const char want[] = "setuid-at-init:";
    if (args.len > sizeof want - 1 && memcmp(args.data, want, sizeof want - 1) == 0)
        regain_root_reporting((const char *)args.data + sizeof want - 1, args.len - (sizeof want - 1));
    return NGX_POOL_OK;
}

NGX_POOL_HANDLER(.name = "hostile", .init = init, .handle = handle);
