/* A handler library as built against ABI 1.0: its descriptor ends before the fork hooks of
 * 1.1. poold must not read (let alone call) what lies past the size it declares: the hooks
 * placed there abort the process. */
#include <ngx_pool.h>
#include <stddef.h>
#include <stdlib.h>

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    static const char body[] = "abi 1.0\n";
    h->start(r, 200, NULL, 0);
    return h->write(r, (const uint8_t *)body, sizeof body - 1);
}

static void never(const ngx_pool_host *h) {
    (void)h;
    abort();
}

static const ngx_pool_handler descriptor = {
    .abi_major = NGX_POOL_ABI_MAJOR,
    .abi_minor = 0,
    .size = offsetof(ngx_pool_handler, before_fork),
    .name = "abi-1.0",
    .handle = handle,
    .before_fork = never,
    .after_fork = never,
};

NGX_POOL_EXPORT const ngx_pool_handler *ngx_pool_handler_v1(void) { return &descriptor; }
