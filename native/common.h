/*
 * Helpers shared by transgate.c, udp.c, splice.c and tunnel.c
 * (native/common.c): errors thrown the same way from every entry point, the
 * argument readers, and the per-environment state (tg_env, below). Every syscall failure becomes a JS Error with code = errno name,
 * errno = -errno (Node's convention, so util.getSystemErrorName works) and
 * syscall = the call that failed; a bad argument becomes a TypeError with
 * code ERR_INVALID_ARG_TYPE.
 */
#ifndef TRANSGATE_COMMON_H
#define TRANSGATE_COMMON_H

#include <stdbool.h>
#include <stddef.h>

#include <stdint.h>
#include <sys/socket.h>

#include <node_api.h>
#include <uv.h>

/* Returns NULL from the calling function when N-API itself fails. */
#define TG_NAPI_CALL(env, call)                                                                    \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      tg_throw_napi_failure(env, #call);                                                           \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

/* Throws ERR_TRANSGATE_NAPI with N-API's own message (else `what`), unless
 * an exception is already pending. */
void tg_throw_napi_failure(napi_env env, const char *what);

/* "ECONNRESET" for ECONNRESET; "EUNKNOWN" where libc cannot name it. */
const char *tg_errno_name(int err);

/* Throws the Error described above. Always returns NULL so callers can
 * `return tg_throw_errno(...)`. */
napi_value tg_throw_errno(napi_env env, const char *syscall, int err);

/* Throws a TypeError with code ERR_INVALID_ARG_TYPE. Always returns NULL. */
napi_value tg_throw_arg(napi_env env, const char *msg);

/* close() must not clobber the errno we are about to report. */
void tg_close_keep_errno(int fd);

/* An integer in [min, max]; false (with a TypeError pending) otherwise. */
bool tg_get_int(napi_env env, napi_value v, const char *name, double min, double max, double *out);

/* A descriptor number: an integer in [0, INT_MAX]; false (with a TypeError pending) otherwise. */
bool tg_get_fd(napi_env env, napi_value v, int *fd);

/* A boolean; false (with a TypeError pending) otherwise. */
bool tg_get_bool(napi_env env, napi_value v, const char *name, bool *out);

/* A JS number from an unsigned value; NULL (with an error pending) when N-API fails. */
napi_value tg_u32(napi_env env, uint32_t v);

/* Reads exactly argc arguments; missing ones arrive as undefined. */
bool tg_get_args(napi_env env, napi_callback_info info, size_t argc, napi_value *argv);

/* Where a REDIRECTed connection was going (SO_ORIGINAL_DST, or
 * IP6T_SO_ORIGINAL_DST for IPv6). 0, or -1 with errno set and *failed naming
 * the call. */
int tg_original_dst(int fd, struct sockaddr_storage *dst, const char **failed);

/* An IPv4 or IPv6 literal and a port as a socket address; false when `ip`
 * is not a literal. */
bool tg_sockaddr(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);

/* Why a socket that libuv reported with `status` < 0 (EPOLLERR arrives as
 * UV_EBADF) or that finished connecting failed: its SO_ERROR (ECONNRESET,
 * ECONNREFUSED), else -status, else 0. */
int tg_socket_error(int fd, int status);

/* The address as text, a v4-mapped IPv6 address as plain IPv4, and the port.
 * Returns 4 or 6, or 0 for another family. `text` holds INET6_ADDRSTRLEN. */
int tg_format_addr(const struct sockaddr_storage *ss, char *text, uint16_t *port);

/* SO_MARK as the kernel keeps it: all 32 bits (0x80000000 and above are
 * marks like any other, not "none"). 0, or -1 with errno set. */
int tg_set_mark(int fd, uint32_t mark);

/* ---- per-environment state ------------------------------------------------
 *
 * The addon may be loaded by several Node.js environments at once (the main
 * thread and worker_threads), each running its own event loop on its own
 * thread. Everything mutable therefore lives in one tg_env per environment
 * (napi_set_instance_data), never in a global: a relay list or a pipe pool
 * shared by two threads would be corrupted, and an object of one loop
 * closed from another.
 *
 * Teardown: an environment that ends (a worker that exits or is terminated)
 * must leave no libuv handle of ours on its loop, or Node aborts the whole
 * process in uv_loop_close. An asynchronous cleanup hook closes every
 * listener, connection and relay (without calling JS any more) and lets the
 * environment go once `handles` is back at 0. tg_env itself is freed by the
 * instance-data finalizer, which runs after that.
 *
 * uv_poll_stop, uv_timer_stop and uv_close cannot fail (libuv returns 0,
 * or nothing, unconditionally); every other uv_* result is checked.
 */
#define TG_PIPE_POOL_MAX 256

struct tg_relay;
struct tg_conn;
struct tg_front;
struct udp_listener;

typedef struct tg_env {
  napi_env env;
  uv_loop_t *loop;
  /* libuv handles opened (tg_poll_init, tg_timer_init) whose close callback
   * has not run yet (tg_handle_closed). */
  uint32_t handles;
  bool stopping;                          /* torn down: no JS calls, no new work */
  napi_async_cleanup_hook_handle cleanup; /* NULL once teardown has finished */
  napi_async_context actx;                /* for tg_call_js (splice.c); NULL until first use */
  /* splice.c: running relays, and empty pipes ready for reuse. */
  struct tg_relay *relays;
  uint32_t relay_count;
  int pool_r[TG_PIPE_POOL_MAX], pool_w[TG_PIPE_POOL_MAX];
  int pool_n;
  size_t pipe_cap; /* what F_SETPIPE_SZ granted so far */
  /* tunnel.c: connections not yet relaying, and listeners not yet closed. */
  struct tg_conn *conns;
  uint32_t conn_count, next_conn_id;
  struct tg_front *fronts;
  /* udp.c: listeners not yet closed, and the receive buffer (64 KiB, on first use). */
  struct udp_listener *udps;
  unsigned char *udp_buf;
} tg_env;

/* Creates this environment's state and its cleanup hook (module init). */
napi_status tg_env_init(napi_env env);

/* This environment's state; NULL with an error pending. */
tg_env *tg_env_of(napi_env env);

/* uv_poll_init_socket / uv_timer_init, counted in te->handles on success.
 * 0 or a negative libuv error (the handle is then not initialised). */
int tg_poll_init(tg_env *te, uv_poll_t *h, int fd);
int tg_timer_init(tg_env *te, uv_timer_t *t);

/* Every close callback of a handle from tg_*_init ends with this. te must
 * not be used by the caller afterwards: it may be the last handle of an
 * environment being torn down. */
void tg_handle_closed(tg_env *te);

/* Teardown steps of each file: close everything still open, call no JS. */
void tg_splice_teardown(tg_env *te);
void tg_tunnel_teardown(tg_env *te);
void tg_udp_teardown(tg_env *te);

#endif
