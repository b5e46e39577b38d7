/* A handler library built for another major version of the ABI: poold must refuse it. */
#include <ngx_pool.h>

static int handle(const ngx_pool_host *h, ngx_pool_request *r) {
    (void)h;
    (void)r;
    return NGX_POOL_OK;
}

static const ngx_pool_handler descriptor = {
    .abi_major = NGX_POOL_ABI_MAJOR + 1,
    .abi_minor = 0,
    .size = sizeof(ngx_pool_handler),
    .name = "from-the-future",
    .handle = handle,
};

NGX_POOL_EXPORT const ngx_pool_handler *ngx_pool_handler_v1(void) { return &descriptor; }
