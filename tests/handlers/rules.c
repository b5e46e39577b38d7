/*
 * A handler that breaks the ABI's rules on purpose, one path each, for the integration tests
 * (tests/tests/handlers.rs): poold must answer each with the right status and an error_log
 * line, and go on serving.
 */
#include <ngx_pool.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static ngx_pool_request *kept; /* a request handle kept past its handle call */

static const ngx_pool_header plain[] = {{NGX_POOL_STR("Content-Type"), NGX_POOL_STR("text/plain")}};

static int is(const ngx_pool_host *h, ngx_pool_request *r, const char *path) {
    ngx_pool_str p = h->path(r);
    return p.len == strlen(path) && memcmp(p.data, path, p.len) == 0;
}

static int say(const ngx_pool_host *h, ngx_pool_request *r, const char *text) {
    int rc = h->start(r, 200, plain, 1);
    return rc == NGX_POOL_OK ? h->write(r, (const uint8_t *)text, strlen(text)) : rc;
}

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    if (is(h, r, "/rules/segv")) {
        signal(SIGSEGV, SIG_DFL);
        raise(SIGSEGV);
    }
    if (is(h, r, "/rules/none")) return NGX_POOL_OK; /* no response at all: 502 */
    if (is(h, r, "/rules/error")) return NGX_POOL_ERR; /* a failure: 500 */
    if (is(h, r, "/rules/overrun")) { /* past Content-Length: refused, then 502 */
        ngx_pool_header hs[] = {{NGX_POOL_STR("Content-Length"), NGX_POOL_STR("5")}};
        h->start(r, 200, hs, 1);
        int rc = h->write(r, (const uint8_t *)"0123456789", 10);
        return rc == NGX_POOL_ERR_TOO_LARGE ? NGX_POOL_OK : NGX_POOL_ERR;
    }
    if (is(h, r, "/rules/short")) { /* fewer bytes than Content-Length: 502 */
        ngx_pool_header hs[] = {{NGX_POOL_STR("Content-Length"), NGX_POOL_STR("10")}};
        h->start(r, 200, hs, 1);
        return h->write(r, (const uint8_t *)"01234", 5);
    }
    if (is(h, r, "/rules/twice")) { /* a second head after the first was sent: cut short */
        h->start(r, 200, plain, 1);
        h->write(r, (const uint8_t *)"first", 5);
        h->flush(r);
        int rc = h->start(r, 500, plain, 1);
        return rc == NGX_POOL_ERR_STATE ? NGX_POOL_OK : NGX_POOL_ERR;
    }
    if (is(h, r, "/rules/inject")) { /* a header value with CR LF: refused, the handler fails */
        ngx_pool_header hs[] = {{NGX_POOL_STR("X-A"), NGX_POOL_STR("b\r\nSet-Cookie: x=1")}};
        return h->start(r, 200, hs, 1);
    }
    if (is(h, r, "/rules/statuses")) { /* the status each misuse gets, as text */
        char out[256];
        ngx_pool_header none;
        int bad_status = h->start(r, 42, NULL, 0);
        int past_end = h->header_at(r, 100000, &none);
        int null_out = h->header_at(r, 0, NULL);
        int unknown_param = h->param(r, "NO_SUCH_PARAM").data == NULL;
        snprintf(out, sizeof out,
                 "start_status_42=%d header_past_end=%d header_null_out=%d "
                 "unknown_param_absent=%d",
                 bad_status, past_end, null_out, unknown_param);
        return say(h, r, out);
    }
    if (is(h, r, "/rules/early")) { /* body bytes before the head: dropped, then 502 */
        h->write(r, (const uint8_t *)"early", 5);
        return say(h, r, "late");
    }
    if (is(h, r, "/rules/keep")) { /* keep the handle for the next request */
        kept = r;
        return say(h, r, "kept");
    }
    if (is(h, r, "/rules/stale")) { /* use the kept handle: the host refuses it */
        ngx_pool_str m = kept ? h->method(kept) : NGX_POOL_STR("none kept");
        int w = kept ? h->write(kept, (const uint8_t *)"x", 1) : 0;
        char out[96];
        snprintf(out, sizeof out, "stale method %s, write %d",
                 m.data == NULL ? "absent" : "present", w);
        return say(h, r, out);
    }
    return say(h, r, "ok");
}

static int init(const ngx_pool_host *h, ngx_pool_str args) {
    (void)h;
    if (args.len == 9 && memcmp(args.data, "fail-init", 9) == 0) return NGX_POOL_ERR;
    return NGX_POOL_OK;
}

NGX_POOL_HANDLER(.name = "rules", .init = init, .handle = handle);
