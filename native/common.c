/* The helpers declared in common.h, shared by transgate.c, udp.c, splice.c and tunnel.c. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strerrorname_np */
#endif

#include "common.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
/* After <netinet/in.h>, so the uapi headers skip what libc already defined. */
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>

void tg_throw_napi_failure(napi_env env, const char *what) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return;
  const napi_extended_error_info *info = NULL;
  const char *msg = what;
  if (napi_get_last_error_info(env, &info) == napi_ok && info != NULL &&
      info->error_message != NULL)
    msg = info->error_message;
  napi_throw_error(env, "ERR_TRANSGATE_NAPI", msg);
}

const char *tg_errno_name(int err) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
  const char *name = strerrorname_np(err);
  if (name != NULL) return name;
#endif
  (void)err;
  return "EUNKNOWN";
}

napi_value tg_throw_errno(napi_env env, const char *syscall, int err) {
  char msg[256];
  napi_value code, message, error, errno_val, syscall_val;
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  if (napi_create_string_utf8(env, tg_errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message) != napi_ok ||
      napi_create_error(env, code, message, &error) != napi_ok ||
      napi_create_int32(env, -err, &errno_val) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_val) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_val) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_val) != napi_ok ||
      napi_throw(env, error) != napi_ok) {
    tg_throw_napi_failure(env, msg);
  }
  return NULL;
}

napi_value tg_throw_arg(napi_env env, const char *msg) {
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
  return NULL;
}

napi_value tg_u32(napi_env env, uint32_t v) {
  napi_value out;
  TG_NAPI_CALL(env, napi_create_uint32(env, v, &out));
  return out;
}

void tg_close_keep_errno(int fd) {
  int saved = errno;
  close(fd);
  errno = saved;
}

bool tg_get_int(napi_env env, napi_value v, const char *name, double min, double max, double *out) {
  char msg[128];
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number ||
      napi_get_value_double(env, v, &d) != napi_ok || d != d /* NaN */ || d < min || d > max ||
      d != (double)(long long)d) {
    snprintf(msg, sizeof msg, "%s must be an integer in [%.0f, %.0f]", name, min, max);
    tg_throw_arg(env, msg);
    return false;
  }
  *out = d;
  return true;
}

bool tg_get_fd(napi_env env, napi_value v, int *fd) {
  double d;
  if (!tg_get_int(env, v, "fd", 0, INT_MAX, &d)) return false;
  *fd = (int)d;
  return true;
}

bool tg_get_bool(napi_env env, napi_value v, const char *name, bool *out) {
  char msg[128];
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_boolean ||
      napi_get_value_bool(env, v, out) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a boolean", name);
    tg_throw_arg(env, msg);
    return false;
  }
  return true;
}

bool tg_get_args(napi_env env, napi_callback_info info, size_t argc, napi_value *argv) {
  size_t got = argc;
  if (napi_get_cb_info(env, info, &got, argv, NULL, NULL) != napi_ok) {
    tg_throw_napi_failure(env, "napi_get_cb_info");
    return false;
  }
  return true;
}

int tg_original_dst(int fd, struct sockaddr_storage *dst, const char **failed) {
  struct sockaddr_storage local;
  socklen_t len = sizeof local;
  memset(&local, 0, sizeof local);
  memset(dst, 0, sizeof *dst);
  if (getsockname(fd, (struct sockaddr *)&local, &len) != 0) {
    *failed = "getsockname";
    return -1;
  }
  /* A dual-stack socket's v4 client is tracked by IPv4 conntrack; SOL_IP
   * is accepted on an AF_INET6 TCP socket and reaches that table. */
  bool v4 = local.ss_family == AF_INET ||
            (local.ss_family == AF_INET6 &&
             IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&local)->sin6_addr));
  if (v4) {
    len = sizeof(struct sockaddr_in);
    *failed = "getsockopt(SO_ORIGINAL_DST)";
    return getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst, &len) == 0 ? 0 : -1;
  }
  if (local.ss_family == AF_INET6) {
    len = sizeof(struct sockaddr_in6);
    *failed = "getsockopt(IP6T_SO_ORIGINAL_DST)";
    return getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &len) == 0 ? 0 : -1;
  }
  *failed = "getsockname";
  errno = EAFNOSUPPORT;
  return -1;
}

bool tg_sockaddr(const char *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len) {
  memset(ss, 0, sizeof *ss);
  struct sockaddr_in *sin = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
  if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    *len = sizeof *sin;
    return true;
  }
  if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    *len = sizeof *sin6;
    return true;
  }
  return false;
}

int tg_socket_error(int fd, int status) {
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = 0;
  return err != 0 ? err : status < 0 ? -status : 0;
}

int tg_format_addr(const struct sockaddr_storage *ss, char *text, uint16_t *port) {
  struct in_addr v4;
  const void *src;
  int af;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    af = AF_INET, src = &sin->sin_addr, *port = ntohs(sin->sin_port);
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    *port = ntohs(sin6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&sin6->sin6_addr)) {
      memcpy(&v4, &sin6->sin6_addr.s6_addr[12], sizeof v4);
      af = AF_INET, src = &v4;
    } else {
      af = AF_INET6, src = &sin6->sin6_addr;
    }
  } else {
    return 0;
  }
  if (inet_ntop(af, src, text, INET6_ADDRSTRLEN) == NULL) return 0;
  return af == AF_INET ? 4 : 6;
}

int tg_set_mark(int fd, uint32_t mark) {
  return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
}

/* ---- per-environment state (common.h) ---------------------------------------- */

static void env_finalize(napi_env env, void *data, void *hint) {
  tg_env *te = data;
  (void)env, (void)hint;
  free(te->udp_buf);
  free(te);
}

/* The last step of teardown: no handle of ours is left on the loop. */
static void env_teardown_done(tg_env *te) {
  for (int i = 0; i < te->pool_n; i++) {
    close(te->pool_r[i]);
    close(te->pool_w[i]);
  }
  te->pool_n = 0;
  if (te->actx != NULL) {
    napi_async_destroy(te->env, te->actx);
    te->actx = NULL;
  }
  napi_async_cleanup_hook_handle h = te->cleanup;
  te->cleanup = NULL;
  /* Lets the environment go on; te lives until env_finalize. A failure
   * here cannot be reported to anyone: the environment is ending. */
  (void)napi_remove_async_cleanup_hook(h);
}

/* The environment is ending: close what is open and wait for the close callbacks. */
static void on_env_teardown(napi_async_cleanup_hook_handle h, void *arg) {
  tg_env *te = arg;
  (void)h;
  te->stopping = true;
  tg_tunnel_teardown(te); /* first: its connections may hold relays */
  tg_splice_teardown(te);
  tg_udp_teardown(te);
  /* Close callbacks run on a later loop turn, never inside uv_close. */
  if (te->handles == 0) env_teardown_done(te);
}

napi_status tg_env_init(napi_env env) {
  tg_env *te = calloc(1, sizeof *te);
  if (te == NULL) return napi_generic_failure;
  te->env = env;
  te->pipe_cap = 64 * 1024; /* the kernel's default pipe size */
  napi_status st = napi_get_uv_event_loop(env, &te->loop);
  if (st != napi_ok) {
    free(te);
    return st;
  }
  st = napi_add_async_cleanup_hook(env, on_env_teardown, te, &te->cleanup);
  if (st != napi_ok) {
    free(te);
    return st;
  }
  st = napi_set_instance_data(env, te, env_finalize, NULL);
  if (st != napi_ok) {
    /* Nothing is open yet: the hook can go at once. */
    (void)napi_remove_async_cleanup_hook(te->cleanup);
    free(te);
  }
  return st;
}

tg_env *tg_env_of(napi_env env) {
  void *data = NULL;
  if (napi_get_instance_data(env, &data) != napi_ok || data == NULL) {
    tg_throw_napi_failure(env, "napi_get_instance_data");
    return NULL;
  }
  return data;
}

int tg_poll_init(tg_env *te, uv_poll_t *h, int fd) {
  int rc = uv_poll_init_socket(te->loop, h, fd);
  if (rc == 0) te->handles++;
  return rc;
}

int tg_timer_init(tg_env *te, uv_timer_t *t) {
  int rc = uv_timer_init(te->loop, t);
  if (rc == 0) te->handles++;
  return rc;
}

void tg_handle_closed(tg_env *te) {
  if (--te->handles == 0 && te->stopping && te->cleanup != NULL) env_teardown_done(te);
}
