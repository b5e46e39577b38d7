/*
 * A handler that floods stdout and stderr, for the integration test tests/tests/log_flood.rs:
 * poold must pass at most log_rate= lines a second on to the error log, whatever the handler
 * (or a process it forks) writes.
 *
 *   .../lines?n=N    N lines to stderr (one write each), then 200 with N as the body
 *   .../child?n=N    the same, written by a process the worker forks (and waits for)
 *   .../say?id=ID    one ordinary line through the host's log function, then 200
 */
#include <ngx_pool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const ngx_pool_header plain[] = {{NGX_POOL_STR("Content-Type"), NGX_POOL_STR("text/plain")}};

/* True if the request path ends with `suffix`. */
static int is(const ngx_pool_host *h, ngx_pool_request *r, const char *suffix) {
    ngx_pool_str p = h->path(r);
    size_t n = strlen(suffix);
    return p.len >= n && memcmp(p.data + p.len - n, suffix, n) == 0;
}

/* The value of query argument `name` (up to 63 bytes) into `out`, NUL-terminated. */
static void arg(const ngx_pool_host *h, ngx_pool_request *r, const char *name, char out[64]) {
    ngx_pool_str q = h->query(r);
    size_t n = strlen(name);
    out[0] = 0;
    for (size_t i = 0; i + n < q.len; i++) {
        if ((i == 0 || q.data[i - 1] == '&') && memcmp(q.data + i, name, n) == 0 &&
            q.data[i + n] == '=') {
            size_t j = 0, k = i + n + 1;
            while (k < q.len && q.data[k] != '&' && j < 63) out[j++] = (char)q.data[k++];
            out[j] = 0;
            return;
        }
    }
}

static void flood(const char *who, long n) {
    for (long i = 0; i < n; i++) {
        /* stderr is unbuffered: one write(2) per line, as a chatty app's. */
        fprintf(stderr, "flood line %ld of %ld from the %s\n", i + 1, n, who);
    }
}

static int reply(const ngx_pool_host *h, ngx_pool_request *r, const char *text) {
    int rc = h->start(r, 200, plain, 1);
    return rc == NGX_POOL_OK ? h->write(r, (const uint8_t *)text, strlen(text)) : rc;
}

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    char v[64], out[128];
    arg(h, r, "n", v);
    long n = strtol(v, NULL, 10);
    if (is(h, r, "/lines")) {
        flood("worker", n);
    } else if (is(h, r, "/child")) {
        pid_t child = fork();
        if (child < 0) return NGX_POOL_ERR;
        if (child == 0) {
            flood("child", n);
            _exit(0);
        }
        int status;
        if (waitpid(child, &status, 0) != child) return NGX_POOL_ERR;
    } else if (is(h, r, "/say")) {
        arg(h, r, "id", v);
        int len = snprintf(out, sizeof(out), "an ordinary line, id %s", v);
        h->log(r, NGX_POOL_LOG_NOTICE, (const uint8_t *)out, (size_t)len);
    } else {
        return NGX_POOL_ERR;
    }
    snprintf(out, sizeof(out), "%ld\n", n);
    return reply(h, r, out);
}

NGX_POOL_HANDLER(.name = "log_flood", .handle = handle);
