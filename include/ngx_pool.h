/*
 * ngx_pool.h - the handler ABI of ngx-pool (https://github.com/ngx-pool): what a handler
 * library exports, and the host functions poold gives it. One header, opaque request handles,
 * a table of host functions, a version and size check at load time. See docs/abi.md.
 */

#ifndef NGX_POOL_H
#define NGX_POOL_H

/* Generated from crates/abi by cbindgen: do not edit. See docs/abi.md. */

#include <stddef.h>
#include <stdint.h>
/* The symbol poold looks up in a handler library (dlsym). */
#define NGX_POOL_HANDLER_SYMBOL "ngx_pool_handler_v1"

#if defined(__cplusplus)
#define NGX_POOL_EXTERN_C extern "C"
#else
#define NGX_POOL_EXTERN_C
#endif
#if defined(__GNUC__)
#define NGX_POOL_EXPORT NGX_POOL_EXTERN_C __attribute__((visibility("default")))
#else
#define NGX_POOL_EXPORT NGX_POOL_EXTERN_C
#endif

/*
 * Declares the library's handler: NGX_POOL_HANDLER(.name = "hello", .handle = handle);
 * fills in the ABI version and the descriptor's size, and exports ngx_pool_handler_v1().
 */
#define NGX_POOL_HANDLER(...)                                                         \
    static const ngx_pool_handler ngx_pool_handler_descriptor_ = {                    \
        .abi_major = NGX_POOL_ABI_MAJOR,                                              \
        .abi_minor = NGX_POOL_ABI_MINOR,                                              \
        .size = (uint32_t)sizeof(ngx_pool_handler),                                   \
        __VA_ARGS__};                                                                 \
    NGX_POOL_EXPORT const ngx_pool_handler *ngx_pool_handler_v1(void) {               \
        return &ngx_pool_handler_descriptor_;                                         \
    }

/*
 * True if the host table has FIELD (it may be older than this header: a function added in a
 * later minor version is absent from an older poold's table).
 */
#define NGX_POOL_HOST_HAS(host, field)                                                \
    (offsetof(ngx_pool_host, field) + sizeof((host)->field) <= (host)->size &&        \
     (host)->field != NULL)

/* A string literal as an ngx_pool_str. */
#define NGX_POOL_STR(lit) ((ngx_pool_str){(const uint8_t *)(lit), sizeof(lit) - 1})


// The ABI's major version: a library built for another one is refused at load time.
#define NGX_POOL_ABI_MAJOR 1

// The ABI's minor version: what was appended to the tables since the major version began.
#define NGX_POOL_ABI_MINOR 3

// Success.
#define NGX_POOL_OK 0

// An argument is invalid: a NULL pointer, a status outside 100..=999, a header name or value
// that HTTP does not allow (CR, LF, NUL; a name with spaces or ':').
#define NGX_POOL_ERR_INVALID -1

// Not allowed now: `start` after the response head was sent, `write` before `start`, a
// request handle used outside its `handle` call.
#define NGX_POOL_ERR_STATE -2

// The client went away or the deadline passed: nobody reads the response any more. Stop early.
#define NGX_POOL_ERR_GONE -3

// The shared-memory channel failed (corrupt data, the arena unusable); the request fails.
#define NGX_POOL_ERR_IO -4

// A write would go past the `Content-Length` the handler declared.
#define NGX_POOL_ERR_TOO_LARGE -5

// An index past the end (`header_at`, `param_at`).
#define NGX_POOL_ERR_NOT_FOUND -6

// ABI 1.2, `task_submit`: no room to queue the task now (tasks hold their share of the pool's
// slots): run it yourself.
#define NGX_POOL_ERR_FULL -7

// ABI 1.2, `task_result`: the pool worker running the task died (crashed, killed) before it
// answered; it has been replaced.
#define NGX_POOL_ERR_LOST -8

// ABI 1.2, `task_wait`: the wait's own `timeout_ms` passed first.
#define NGX_POOL_ERR_TIMEOUT -9

// ABI 1.2, `task_wait`: no worker has taken the task named in `*task` yet, and the host gave
// it back to the caller: run it yourself (the host has forgotten it; do not release it).
#define NGX_POOL_TASK_YOURS 1

// ABI 1.3, `read_wait`: no body byte came: its `timeout_ms` passed, or a `wake` (or the
// request's `closing` turning non-zero) ended the wait.
#define NGX_POOL_AGAIN -10

// ABI 1.3: the `body_length` of a request nginx is ready to upgrade (a WebSocket handshake,
// `Upgrade: websocket` over HTTP/1.1, to a pool whose handler carries them). If the handler
// answers 101, the body is then whatever the client sends on the upgraded connection, read
// with `read_wait` while the response streams, until the client closes (`NGX_POOL_ERR_GONE`).
// Any other answer is an ordinary response and nothing of the body is read.
#define NGX_POOL_BODY_OPEN (1 << 62)

// A generic failure, for a handler's own `init`, `worker_init` or `handle` to return.
#define NGX_POOL_ERR -100

// Log levels of `ngx_pool_host.log`, nginx's (`error_log` filters them the same way).
#define NGX_POOL_LOG_EMERG 1

#define NGX_POOL_LOG_ALERT 2

#define NGX_POOL_LOG_CRIT 3

#define NGX_POOL_LOG_ERR 4

#define NGX_POOL_LOG_WARN 5

#define NGX_POOL_LOG_NOTICE 6

#define NGX_POOL_LOG_INFO 7

#define NGX_POOL_LOG_DEBUG 8

// A request being handled: an opaque handle, valid only during the `handle` call that
// received it, and only in that pool worker.
typedef struct ngx_pool_request ngx_pool_request;

// Bytes borrowed from the host (or given to it): not NUL-terminated. `data == NULL` means
// absent (a header or parameter the request does not have); an empty but present value has a
// non-NULL `data` and `len == 0`. Strings the host returns stay valid until the `handle` call
// that received the request returns.
typedef struct ngx_pool_str {
  const uint8_t *data;
  size_t len;
} ngx_pool_str;

// A header or parameter: name and value.
typedef struct ngx_pool_header {
  struct ngx_pool_str name;
  struct ngx_pool_str value;
} ngx_pool_header;

// The functions poold offers a handler. Every function is safe to call with any request
// handle the host passed to `handle` (and only during that call); every one returns a status
// or a value, never unwinds, and checks its arguments. Appended to in minor versions: check
// `size` before calling a function newer than the host may be (`NGX_POOL_HOST_HAS`).
typedef struct ngx_pool_host {
  // `NGX_POOL_ABI_MAJOR` of the host.
  uint32_t abi_major;
  // `NGX_POOL_ABI_MINOR` of the host.
  uint32_t abi_minor;
  // `sizeof(ngx_pool_host)` as the host was built: the fields within it exist.
  uint32_t size;
  // The method as sent (`GET`, `POST`, ...).
  struct ngx_pool_str (*method)(struct ngx_pool_request *r);
  // The request target as sent, with its arguments (`/path?a=b`), not decoded.
  struct ngx_pool_str (*uri)(struct ngx_pool_request *r);
  // The target without the query string, not decoded.
  struct ngx_pool_str (*path)(struct ngx_pool_request *r);
  // The query string without `?` (empty, not absent, when there is none).
  struct ngx_pool_str (*query)(struct ngx_pool_request *r);
  // The HTTP version as nginx numbers it: major * 1000 + minor (1001 for HTTP/1.1).
  uint32_t (*http_version)(struct ngx_pool_request *r);
  // The client's address as nginx saw it (`$remote_addr`).
  struct ngx_pool_str (*client_addr)(struct ngx_pool_request *r);
  // The client's port (`$remote_port`), 0 for a unix-socket client.
  uint16_t (*client_port)(struct ngx_pool_request *r);
  // How many request headers there are (repeated ones counted each time).
  size_t (*header_count)(struct ngx_pool_request *r);
  // Header `index` in arrival order into `*out`; `NGX_POOL_ERR_NOT_FOUND` past the end.
  int32_t (*header_at)(struct ngx_pool_request *r, size_t index, struct ngx_pool_header *out);
  // The first header named `name` (NUL-terminated, compared case-insensitively); absent
  // (`data == NULL`) if there is none.
  struct ngx_pool_str (*header)(struct ngx_pool_request *r, const char *name);
  // How many per-request parameters there are (`pool_param`s and the default set).
  size_t (*param_count)(struct ngx_pool_request *r);
  // Parameter `index` into `*out`; `NGX_POOL_ERR_NOT_FOUND` past the end.
  int32_t (*param_at)(struct ngx_pool_request *r, size_t index, struct ngx_pool_header *out);
  // The parameter named `name` (NUL-terminated, exact case); absent if there is none.
  struct ngx_pool_str (*param)(struct ngx_pool_request *r, const char *name);
  // The request body's length in bytes (nginx has read it whole before the request is
  // queued; the handler reads it as a stream).
  uint64_t (*body_length)(struct ngx_pool_request *r);
  // Reads up to `len` body bytes into `buf`: the number read, 0 at the end of the body, or
  // a negative status (`NGX_POOL_ERR_GONE` once the request is cancelled). Blocks while nginx
  // has not delivered more yet.
  ptrdiff_t (*read)(struct ngx_pool_request *r, uint8_t *buf, size_t len);
  // Sets the response status (100..=999) and headers, copied by the host. Once per request,
  // before any `write`. A `Content-Length` header announces the body's length, which the
  // host then holds the handler to; without one the body is sent chunked if it streams. The
  // head is not sent yet: a small response goes out whole when `handle` returns.
  int32_t (*start)(struct ngx_pool_request *r, uint16_t status, const struct ngx_pool_header *headers, size_t count);
  // Appends `len` body bytes, copied by the host. Buffered up to 64 KiB; past that (or after
  // `flush`) the head goes out and every write streams to the client, blocking while the
  // client is not keeping up. `NGX_POOL_ERR_GONE` once the client is gone.
  int32_t (*write)(struct ngx_pool_request *r, const uint8_t *data, size_t len);
  // Sends the head and what is buffered now, and streams from then on.
  int32_t (*flush)(struct ngx_pool_request *r);
  // 1 once nginx no longer wants the response (client gone, deadline passed), else 0.
  int32_t (*is_cancelled)(struct ngx_pool_request *r);
  // Writes `len` bytes of `msg` to nginx's error_log at `level` (`NGX_POOL_LOG_*`), tagged
  // with the pool, the worker's pid and (when `r` is not NULL) the request's URI. Callable
  // from `init`, `worker_init` and `worker_exit` with `r == NULL`.
  void (*log)(struct ngx_pool_request *r, uint32_t level, const uint8_t *msg, size_t len);
  // ABI 1.2. Queues a fan-out task of request (or task) `r` for the pool's other workers:
  // its `len` input bytes (copied) go to the library's `run_task` in whichever worker takes
  // it. `*task` receives a handle (never 0) for `task_wait` / `task_result` /
  // `task_release`. `NGX_POOL_ERR_FULL`: no room now, run it yourself. The task inherits the
  // request's deadline and is cancelled with it.
  int32_t (*task_submit)(struct ngx_pool_request *r, const uint8_t *input, size_t len, uint64_t *task);
  // ABI 1.2. Waits until one of the `count` tasks at `tasks` is answered, moving every task
  // of `r` along meanwhile (their input and output stream while the caller waits here).
  // `NGX_POOL_OK`: `*task` is answered (`task_result`). `NGX_POOL_TASK_YOURS`: rather than
  // sleep, the host took back `*task`, a task of `r` no worker had taken yet (one of
  // `tasks` if it could, else the newest): run it yourself, then wait again; this is what
  // makes a fan-out complete when every worker is busy. `NGX_POOL_ERR_TIMEOUT`: `timeout_ms`
  // (negative: none) passed. `NGX_POOL_ERR_GONE`: the request was cancelled or passed its
  // deadline; its tasks are cancelled.
  int32_t (*task_wait)(struct ngx_pool_request *r, const uint64_t *tasks, size_t count, int64_t timeout_ms, uint64_t *task);
  // ABI 1.2. The answer of an answered task: `NGX_POOL_OK` and its output bytes in `*out`
  // (valid until `task_release` or the end of `r`'s call); `NGX_POOL_ERR_LOST` (its worker
  // died), `NGX_POOL_ERR_GONE` (cancelled, or stopped at the deadline), `NGX_POOL_ERR`
  // (its `run_task` failed), `NGX_POOL_ERR_STATE` (not answered yet, or not a task of `r`).
  int32_t (*task_result)(struct ngx_pool_request *r, uint64_t task, struct ngx_pool_str *out);
  // ABI 1.2. Forgets a task: an unanswered one is cancelled (dropped if queued; if running,
  // its answer is discarded). Tasks still held when `r`'s call returns are released so.
  void (*task_release)(struct ngx_pool_request *r, uint64_t task);
  // ABI 1.2. How many workers the pool may run at once (its `workers`, or MAX of MIN-MAX).
  uint32_t (*pool_workers)(void);
  // ABI 1.3. As `read`, but waits at most `timeout_ms` (negative: no limit; 0: not at all),
  // and returns `NGX_POOL_AGAIN` when that passes with no byte, or when another thread
  // `wake`s the request, or when its `closing` turns non-zero. Reads an open body
  // (`NGX_POOL_BODY_OPEN`) while the response streams. An idle wait costs no CPU.
  ptrdiff_t (*read_wait)(struct ngx_pool_request *r, uint8_t *buf, size_t len, int64_t timeout_ms);
  // ABI 1.3. A token that names request `r` to `wake` (never 0), usable from any thread.
  uint64_t (*waker)(struct ngx_pool_request *r);
  // ABI 1.3. From any thread: ends the `read_wait` that the request named by `waker` sleeps
  // in, or makes its next one return at once. A token of a request that has ended, or that
  // was never given, does nothing.
  void (*wake)(uint64_t waker);
  // ABI 1.3. Whether a long-lived request (an upgraded connection) should end now, as a
  // WebSocket close code: 0, no; 1001, this worker retires (`max_requests`, `max_rss`); 1012,
  // the pool or nginx restarts (a reload, a stop). `read_wait` returns once when it changes.
  uint32_t (*closing)(struct ngx_pool_request *r);
} ngx_pool_host;

// What a handler library exports, through `const ngx_pool_handler *ngx_pool_handler_v1(void)`.
// Only `handle` is required. The descriptor and the name must stay valid while the library is
// loaded (a static, as `NGX_POOL_HANDLER` makes).
typedef struct ngx_pool_handler {
  // `NGX_POOL_ABI_MAJOR` the library was built against; another one is refused.
  uint32_t abi_major;
  // `NGX_POOL_ABI_MINOR` the library was built against.
  uint32_t abi_minor;
  // `sizeof(ngx_pool_handler)` as the library was built: the host reads no field past it.
  uint32_t size;
  // The handler's name, NUL-terminated (log lines name it).
  const char *name;
  // Once, in poold before it forks the pool workers, with the pool's `handler_args` (empty
  // when none). Load what every worker shares here (copy-on-write after the fork); start no
  // threads (they would not survive the fork). Not `NGX_POOL_OK`: the pool does not start,
  // its requests get 503, and poold tries again later.
  int32_t (*init)(const struct ngx_pool_host *host, struct ngx_pool_str config);
  // Once in each pool worker after it is forked, before its first request (per-process
  // resources: connections, threads, random seeds). Not `NGX_POOL_OK`: the worker exits and
  // poold starts another, with a growing delay if that keeps happening.
  int32_t (*worker_init)(const struct ngx_pool_host *host);
  // Runs one request (required). `NGX_POOL_OK` once the response is complete; any other
  // status fails the request (500 if its head was not sent yet, otherwise the response is
  // cut short), with an error_log line naming the handler.
  int32_t (*handle)(const struct ngx_pool_host *host, struct ngx_pool_request *r);
  // In a pool worker that leaves in an orderly way (recycled by `max_requests`/`max_rss`,
  // stopped by poold); not after a crash or SIGKILL.
  void (*worker_exit)(const struct ngx_pool_host *host);
  // ABI 1.1. In poold, just before it forks each pool worker (the first ones and every
  // replacement), after `init`: for a runtime that must be quiesced across `fork` (CPython's
  // `PyOS_BeforeFork`). The child then runs `worker_init`, the parent `after_fork`.
  void (*before_fork)(const struct ngx_pool_host *host);
  // ABI 1.1. In poold, just after it forked a pool worker (or failed to): undoes
  // `before_fork` in the parent (CPython's `PyOS_AfterFork_Parent`).
  void (*after_fork)(const struct ngx_pool_host *host);
  // ABI 1.2. Runs one fan-out task that a handler of the same pool queued with
  // `task_submit`, in whichever pool worker took it: `t` is a request handle whose
  // `body_length` / `read` give the task's input and whose `write` appends its output (no
  // `start`: a task has no head); `is_cancelled`, `log` and the `task_*` functions (a nested
  // fan-out) work on it too, the HTTP accessors give nothing. `NGX_POOL_OK` once the output
  // is complete; any other status fails the task (`task_result` gives `NGX_POOL_ERR`).
  int32_t (*run_task)(const struct ngx_pool_host *host, struct ngx_pool_request *t);
} ngx_pool_handler;



#endif  /* NGX_POOL_H */
