/*
 * transgate native helpers: the few socket options Node cannot set itself
 * (IP_TRANSPARENT, SO_MARK, SO_ORIGINAL_DST). Every syscall failure becomes
 * a JS Error with code = errno name, errno = -errno (Node's convention, so
 * util.getSystemErrorName works) and syscall = the call that failed
 * (tg_throw_errno, native/common.c).
 *
 * Callers (src/native/index.ts) validate arguments first; the checks here
 * are a second line so that a direct caller cannot crash the process.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <node_api.h>

#include "common.h"

#define HOST_MAX 64 /* longer than any IPv6 literal; longer input is refused */

static bool get_family(napi_env env, napi_value v, int *family) {
  double d;
  if (!tg_get_int(env, v, "family", 4, 6, &d) || (d != 4 && d != 6)) {
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) == napi_ok && !pending)
      tg_throw_arg(env, "family must be 4 or 6");
    return false;
  }
  *family = d == 4 ? AF_INET : AF_INET6;
  return true;
}

static int set_int_opt(int fd, int level, int name, int value) {
  return setsockopt(fd, level, name, &value, sizeof value);
}

static napi_value make_undefined(napi_env env) {
  napi_value out;
  TG_NAPI_CALL(env, napi_get_undefined(env, &out));
  return out;
}

/* A new socket's fd as a JS number; the fd is closed if even that fails. */
static napi_value fd_value(napi_env env, int fd) {
  napi_value out;
  if (napi_create_int32(env, fd, &out) != napi_ok) {
    close(fd);
    tg_throw_napi_failure(env, "napi_create_int32");
    return NULL;
  }
  return out;
}

/* IPv6 sockets need both options: IPV6_TRANSPARENT for v6 peers and
 * IP_TRANSPARENT for v4-mapped peers on a dual-stack socket. */
static int set_transparent(int fd, int family, const char **failed) {
  if (family == AF_INET6) {
    *failed = "setsockopt(IPV6_TRANSPARENT)";
    if (set_int_opt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1) != 0) return -1;
  }
  *failed = "setsockopt(IP_TRANSPARENT)";
  return set_int_opt(fd, SOL_IP, IP_TRANSPARENT, 1);
}

/* {address, port, family} with v4-mapped IPv6 shown as plain IPv4. */
static napi_value make_endpoint(napi_env env, const struct sockaddr_storage *ss) {
  char text[INET6_ADDRSTRLEN];
  uint16_t port;
  int family_num = tg_format_addr(ss, text, &port);
  if (family_num == 0) return tg_throw_errno(env, "getsockopt(SO_ORIGINAL_DST)", EAFNOSUPPORT);

  napi_value obj, address, port_val, family_val;
  TG_NAPI_CALL(env, napi_create_object(env, &obj));
  TG_NAPI_CALL(env, napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &address));
  TG_NAPI_CALL(env, napi_create_uint32(env, port, &port_val));
  TG_NAPI_CALL(env, napi_create_uint32(env, (uint32_t)family_num, &family_val));
  TG_NAPI_CALL(env, napi_set_named_property(env, obj, "address", address));
  TG_NAPI_CALL(env, napi_set_named_property(env, obj, "port", port_val));
  TG_NAPI_CALL(env, napi_set_named_property(env, obj, "family", family_val));
  return obj;
}

/* listenTcp(host, port, backlog, transparent, v6only, reuseAddr) -> fd */
static napi_value js_listen_tcp(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  char host[HOST_MAX];
  size_t host_len;
  napi_valuetype t;
  double port, backlog;
  bool transparent, v6only, reuse;
  struct sockaddr_storage ss;
  socklen_t ss_len;
  int family, fd;
  const char *failed = NULL;

  if (!tg_get_args(env, info, 6, argv)) return NULL;
  if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_string ||
      napi_get_value_string_utf8(env, argv[0], host, sizeof host, &host_len) != napi_ok ||
      host_len >= sizeof host - 1 || strlen(host) != host_len)
    return tg_throw_arg(env, "host must be an IPv4 or IPv6 literal");
  if (!tg_get_int(env, argv[1], "port", 0, 65535, &port) ||
      !tg_get_int(env, argv[2], "backlog", 1, INT_MAX, &backlog) ||
      !tg_get_bool(env, argv[3], "transparent", &transparent) ||
      !tg_get_bool(env, argv[4], "v6only", &v6only) ||
      !tg_get_bool(env, argv[5], "reuseAddr", &reuse))
    return NULL;

  if (!tg_sockaddr(host, (uint16_t)port, &ss, &ss_len))
    return tg_throw_arg(env, "host must be an IPv4 or IPv6 literal");
  family = ss.ss_family;

  /* Non-blocking because libuv expects it; CLOEXEC so the rule-applying
   * child processes (iptables/nft) don't inherit a listener. */
  fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return tg_throw_errno(env, "socket", errno);

  if (reuse && set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1) != 0) {
    failed = "setsockopt(SO_REUSEADDR)";
    goto fail;
  }
  /* Set explicitly: the sysctl default (bindv6only) must not decide
   * whether '::' also accepts IPv4. */
  if (family == AF_INET6 && set_int_opt(fd, SOL_IPV6, IPV6_V6ONLY, v6only ? 1 : 0) != 0) {
    failed = "setsockopt(IPV6_V6ONLY)";
    goto fail;
  }
  /* Before bind: binding a non-local (TPROXY) address needs it already. */
  if (transparent && set_transparent(fd, family, &failed) != 0) goto fail;
  if (bind(fd, (struct sockaddr *)&ss, ss_len) != 0) {
    failed = "bind";
    goto fail;
  }
  if (listen(fd, (int)backlog) != 0) {
    failed = "listen";
    goto fail;
  }

  return fd_value(env, fd);

fail:
  tg_close_keep_errno(fd);
  return tg_throw_errno(env, failed, errno);
}

/* createTcpSocket(family, mark | undefined, transparent) -> fd */
static napi_value js_create_tcp_socket(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  napi_valuetype t;
  int family, fd;
  double mark = 0;
  bool has_mark, transparent;
  const char *failed = NULL;

  if (!tg_get_args(env, info, 3, argv) || !get_family(env, argv[0], &family)) return NULL;
  if (napi_typeof(env, argv[1], &t) != napi_ok) return tg_throw_arg(env, "mark must be an integer");
  has_mark = t != napi_undefined;
  if (has_mark && !tg_get_int(env, argv[1], "mark", 0, UINT32_MAX, &mark)) return NULL;
  if (!tg_get_bool(env, argv[2], "transparent", &transparent)) return NULL;

  fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return tg_throw_errno(env, "socket", errno);
  /* Before connect: the mark must be on the SYN so netfilter skips it. */
  if (has_mark && tg_set_mark(fd, (uint32_t)mark) != 0) {
    failed = "setsockopt(SO_MARK)";
    goto fail;
  }
  if (transparent && set_transparent(fd, family, &failed) != 0) goto fail;

  return fd_value(env, fd);

fail:
  tg_close_keep_errno(fd);
  return tg_throw_errno(env, failed, errno);
}

static int local_name(int fd, struct sockaddr_storage *ss) {
  socklen_t len = sizeof *ss;
  memset(ss, 0, sizeof *ss);
  return getsockname(fd, (struct sockaddr *)ss, &len);
}

/* localPort(fd) -> port */
static napi_value js_local_port(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_storage ss;
  int fd;
  if (!tg_get_args(env, info, 1, argv) || !tg_get_fd(env, argv[0], &fd)) return NULL;
  if (local_name(fd, &ss) != 0) return tg_throw_errno(env, "getsockname", errno);
  if (ss.ss_family == AF_INET) return tg_u32(env, ntohs(((struct sockaddr_in *)&ss)->sin_port));
  if (ss.ss_family == AF_INET6) return tg_u32(env, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
  return tg_throw_errno(env, "getsockname", EAFNOSUPPORT);
}

/* socketFamily(fd) -> 4 | 6 */
static napi_value js_socket_family(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_storage ss;
  int fd;
  if (!tg_get_args(env, info, 1, argv) || !tg_get_fd(env, argv[0], &fd)) return NULL;
  if (local_name(fd, &ss) != 0) return tg_throw_errno(env, "getsockname", errno);
  if (ss.ss_family == AF_INET) return tg_u32(env, 4);
  if (ss.ss_family == AF_INET6) return tg_u32(env, 6);
  return tg_throw_errno(env, "getsockname", EAFNOSUPPORT);
}

/* originalDst(fd) -> {address, port, family} */
static napi_value js_original_dst(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  struct sockaddr_storage dst;
  const char *failed = NULL;
  int fd;
  if (!tg_get_args(env, info, 1, argv) || !tg_get_fd(env, argv[0], &fd)) return NULL;
  if (tg_original_dst(fd, &dst, &failed) != 0) return tg_throw_errno(env, failed, errno);
  return make_endpoint(env, &dst);
}

/* setMark(fd, mark) */
static napi_value js_set_mark(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double mark;
  int fd;
  if (!tg_get_args(env, info, 2, argv) || !tg_get_fd(env, argv[0], &fd) ||
      !tg_get_int(env, argv[1], "mark", 0, UINT32_MAX, &mark))
    return NULL;
  if (tg_set_mark(fd, (uint32_t)mark) != 0)
    return tg_throw_errno(env, "setsockopt(SO_MARK)", errno);
  return make_undefined(env);
}

/* getMark(fd) -> mark */
static napi_value js_get_mark(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint32_t mark = 0;
  socklen_t len = sizeof mark;
  int fd;
  if (!tg_get_args(env, info, 1, argv) || !tg_get_fd(env, argv[0], &fd)) return NULL;
  if (getsockopt(fd, SOL_SOCKET, SO_MARK, &mark, &len) != 0)
    return tg_throw_errno(env, "getsockopt(SO_MARK)", errno);
  return tg_u32(env, mark);
}

/* setTransparent(fd, family) */
static napi_value js_set_transparent(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd, family;
  const char *failed = NULL;
  if (!tg_get_args(env, info, 2, argv) || !tg_get_fd(env, argv[0], &fd) ||
      !get_family(env, argv[1], &family))
    return NULL;
  if (set_transparent(fd, family, &failed) != 0) return tg_throw_errno(env, failed, errno);
  return make_undefined(env);
}

/* RLIMIT_NOFILE as a JS number; RLIM_INFINITY as Infinity. */
static napi_value rlim_value(napi_env env, rlim_t v) {
  napi_value out;
  TG_NAPI_CALL(env, napi_create_double(env, v == RLIM_INFINITY ? INFINITY : (double)v, &out));
  return out;
}

/* fs.nr_open: the most a process may set RLIMIT_NOFILE to. 0 if unreadable. */
static rlim_t nr_open(void) {
  char buf[32];
  ssize_t n = -1;
  int fd = open("/proc/sys/fs/nr_open", O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
  }
  if (n <= 0) return 0;
  buf[n] = 0;
  char *end;
  unsigned long long v = strtoull(buf, &end, 10);
  return end == buf ? 0 : (rlim_t)v;
}

/*
 * raiseNofileLimit() -> {soft, hard}: the soft open-files limit raised to the
 * hard one (which needs no privilege), and the limits as they are after.
 * Every connection costs two descriptors (three while a pipe carries bytes),
 * and systemd's default soft limit is 1024. An unlimited hard limit (the
 * kernel refuses RLIM_INFINITY for RLIMIT_NOFILE) raises soft to fs.nr_open.
 */
static napi_value js_raise_nofile_limit(napi_env env, napi_callback_info info) {
  struct rlimit rl;
  napi_value out, soft, hard;
  (void)info;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return tg_throw_errno(env, "getrlimit(RLIMIT_NOFILE)", errno);
  rlim_t want = rl.rlim_max;
  if (want == RLIM_INFINITY) want = nr_open();
  if (want > rl.rlim_cur) {
    rl.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
      return tg_throw_errno(env, "setrlimit(RLIMIT_NOFILE)", errno);
  }
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
    return tg_throw_errno(env, "getrlimit(RLIMIT_NOFILE)", errno);
  if ((soft = rlim_value(env, rl.rlim_cur)) == NULL ||
      (hard = rlim_value(env, rl.rlim_max)) == NULL)
    return NULL;
  TG_NAPI_CALL(env, napi_create_object(env, &out));
  TG_NAPI_CALL(env, napi_set_named_property(env, out, "soft", soft));
  TG_NAPI_CALL(env, napi_set_named_property(env, out, "hard", hard));
  return out;
}

/* native/splice.c: the zero-copy relay. */
#include "splice.h"
#include "protocol.h"

/* native/udp.c: transparent UDP (DNS under TPROXY). */
napi_status transgate_register_udp(napi_env env, napi_value exports);

/* abiVersion() -> TG_ABI_VERSION: checked by src/native/index.ts at load. */
static napi_value js_abi_version(napi_env env, napi_callback_info info) {
  (void)info;
  return tg_u32(env, TG_ABI_VERSION);
}

static napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"abiVersion", NULL, js_abi_version, NULL, NULL, NULL, napi_enumerable, NULL},
      {"listenTcp", NULL, js_listen_tcp, NULL, NULL, NULL, napi_enumerable, NULL},
      {"createTcpSocket", NULL, js_create_tcp_socket, NULL, NULL, NULL, napi_enumerable, NULL},
      {"localPort", NULL, js_local_port, NULL, NULL, NULL, napi_enumerable, NULL},
      {"socketFamily", NULL, js_socket_family, NULL, NULL, NULL, napi_enumerable, NULL},
      {"originalDst", NULL, js_original_dst, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setMark", NULL, js_set_mark, NULL, NULL, NULL, napi_enumerable, NULL},
      {"getMark", NULL, js_get_mark, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setTransparent", NULL, js_set_transparent, NULL, NULL, NULL, napi_enumerable, NULL},
      {"raiseNofileLimit", NULL, js_raise_nofile_limit, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  /* First: every entry point below reads this environment's state. */
  TG_NAPI_CALL(env, tg_env_init(env));
  TG_NAPI_CALL(env, napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  TG_NAPI_CALL(env, transgate_register_udp(env, exports));
  TG_NAPI_CALL(env, tg_splice_register(env, exports));
  TG_NAPI_CALL(env, tg_tunnel_register(env, exports));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
