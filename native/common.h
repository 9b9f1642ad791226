/*
 * Helpers shared by transgate.c, udp.c and splice.c (native/common.c):
 * errors thrown the same way from every entry point, and the argument
 * readers. Every syscall failure becomes a JS Error with code = errno name,
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

/* Returns NULL from the calling function when N-API itself fails. */
#define TG_NAPI_CALL(env, call)                                                \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      tg_throw_napi_failure(env, #call);                                       \
      return NULL;                                                             \
    }                                                                          \
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
bool tg_get_int(napi_env env, napi_value v, const char *name, double min, double max,
                double *out);

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

#endif
