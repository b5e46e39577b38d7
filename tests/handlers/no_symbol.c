/* A shared library that is no handler library: it lacks ngx_pool_handler_v1. */
int not_a_handler(void) { return 42; }
