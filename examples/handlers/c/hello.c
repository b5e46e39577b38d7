/*
 * A handler library in C, on nothing but include/ngx_pool.h.
 *
 *   GET  /...?            "hello, NAME": NAME is the X_USER pool_param (or "you")
 *   GET  .../stream?bytes=N   N bytes (default 1 MiB) streamed in 64 KiB writes, with a
 *                         Content-Length; byte i is 'a' + i % 26
 *   POST .../body         reads the request body as a stream: its length and FNV-1a hash
 *
 * Build: cc -O2 -shared -fPIC -I../../../include -o libhello.so hello.c   (or: make)
 * Use:   pool c handler=dylib:/path/to/libhello.so;
 */
#include <ngx_pool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ngx_pool_header text_plain[] = {
    {NGX_POOL_STR("Content-Type"), NGX_POOL_STR("text/plain")},
};

/* True if the request path ends with `suffix`. */
static int path_ends_with(const ngx_pool_host *h, ngx_pool_request *r, const char *suffix) {
    ngx_pool_str p = h->path(r);
    size_t n = strlen(suffix);
    return p.len >= n && memcmp(p.data + p.len - n, suffix, n) == 0;
}

/* The value of query argument `name` as a number, or `dflt`. */
static unsigned long long arg_number(const ngx_pool_host *h, ngx_pool_request *r,
                                     const char *name, unsigned long long dflt) {
    ngx_pool_str q = h->query(r);
    size_t n = strlen(name);
    for (size_t i = 0; i + n < q.len; i++) {
        if ((i == 0 || q.data[i - 1] == '&') && memcmp(q.data + i, name, n) == 0 &&
            q.data[i + n] == '=') {
            char buf[32] = {0};
            size_t j = 0, k = i + n + 1;
            while (k < q.len && q.data[k] != '&' && j < sizeof(buf) - 1) buf[j++] = (char)q.data[k++];
            return strtoull(buf, NULL, 10);
        }
    }
    return dflt;
}

static int hello(const ngx_pool_host *h, ngx_pool_request *r) {
    ngx_pool_str who = h->param(r, "X_USER"); /* a pool_param, or absent */
    int rc = h->start(r, 200, text_plain, 1);
    if (rc != NGX_POOL_OK) return rc;
    if ((rc = h->write(r, (const uint8_t *)"hello, ", 7)) != NGX_POOL_OK) return rc;
    if (who.data == NULL) who = NGX_POOL_STR("you");
    if ((rc = h->write(r, who.data, who.len)) != NGX_POOL_OK) return rc;
    return h->write(r, (const uint8_t *)"\n", 1);
}

static int stream(const ngx_pool_host *h, ngx_pool_request *r) {
    unsigned long long total = arg_number(h, r, "bytes", 1 << 20);
    char length[32];
    snprintf(length, sizeof length, "%llu", total);
    ngx_pool_header headers[] = {
        {NGX_POOL_STR("Content-Type"), NGX_POOL_STR("application/octet-stream")},
        {NGX_POOL_STR("Content-Length"), {(const uint8_t *)length, strlen(length)}},
    };
    int rc = h->start(r, 200, headers, 2);
    static uint8_t buf[64 * 1024];
    for (unsigned long long at = 0; rc == NGX_POOL_OK && at < total;) {
        size_t n = total - at < sizeof buf ? (size_t)(total - at) : sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = (uint8_t)('a' + (at + i) % 26);
        rc = h->write(r, buf, n); /* blocks while the client is slow; GONE once it left */
        at += n;
    }
    return rc;
}

static int body(const ngx_pool_host *h, ngx_pool_request *r) {
    uint64_t hash = 1469598103934665603ULL, length = 0;
    uint8_t buf[16 * 1024];
    intptr_t n;
    while ((n = h->read(r, buf, sizeof buf)) > 0) {
        for (intptr_t i = 0; i < n; i++) hash = (hash ^ buf[i]) * 1099511628211ULL;
        length += (uint64_t)n;
    }
    if (n < 0) return (int)n; /* cancelled, or the channel failed */
    char out[96];
    int len = snprintf(out, sizeof out, "{\"length\":%llu,\"fnv1a\":\"%016llx\"}\n",
                       (unsigned long long)length, (unsigned long long)hash);
    ngx_pool_header json[] = {{NGX_POOL_STR("Content-Type"), NGX_POOL_STR("application/json")}};
    int rc = h->start(r, 200, json, 1);
    return rc == NGX_POOL_OK ? h->write(r, (const uint8_t *)out, (size_t)len) : rc;
}

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    if (path_ends_with(h, r, "/stream")) return stream(h, r);
    if (path_ends_with(h, r, "/body")) return body(h, r);
    return hello(h, r);
}

static int init(const ngx_pool_host *h, ngx_pool_str args) {
    char line[160];
    int n = snprintf(line, sizeof line, "C example handler loaded (handler_args: \"%.*s\")",
                     (int)(args.len > 100 ? 100 : args.len), (const char *)args.data);
    h->log(NULL, NGX_POOL_LOG_NOTICE, (const uint8_t *)line, (size_t)n);
    return NGX_POOL_OK;
}

NGX_POOL_HANDLER(.name = "c-hello", .init = init, .handle = handle);
