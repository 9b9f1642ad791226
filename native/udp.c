/*
 * Transparent UDP for DNS under TPROXY. Node's dgram cannot set
 * IP_TRANSPARENT or read IP_ORIGDSTADDR, so the receive side lives here:
 * a non-blocking socket watched with uv_poll on Node's own event loop (no
 * thread, no blocking call), each datagram handed to a JS callback as
 * (data, clientHost, clientPort, dstHost, dstPort). Replies leave from the
 * address the client asked (a transparent socket bound to it), so the
 * client's resolver accepts them.
 *
 * Errors follow transgate.c (native/common.c): code = errno name,
 * errno = -errno, syscall.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <node_api.h>
#include <uv.h>

#include "common.h"

#define UDP_MAX_DATAGRAM 65536
/* Datagrams read per poll wakeup before yielding to the rest of the loop. */
#define UDP_BATCH 64

/*
 * Two owners: the poll handle (until its close callback) and the JS object
 * (until its finalizer). The listener is freed when both have let go, so a
 * closed handle still points at valid memory and answers later calls
 * (udpClose again, udpListenerPort) instead of reading freed memory, which
 * it did when on_closed freed it alone.
 */
typedef struct udp_listener {
  tg_env *te;
  uv_poll_t poll;
  int fd; /* -1 once closed */
  int family;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  bool closing; /* udpClose or teardown ran: no more datagrams, calls, or closes */
  int refs;     /* the poll handle, the JS object */
  struct udp_listener *prev, *next; /* te->udps while not closing */
} udp_listener;

static void udp_release(udp_listener *l) {
  if (--l->refs > 0) return;
  free(l);
}

/* host (IPv4/IPv6 literal) and port into a sockaddr; false with a TypeError pending otherwise. */
static bool udp_get_sockaddr(napi_env env, napi_value host_v, napi_value port_v,
                             struct sockaddr_storage *ss, socklen_t *len) {
  char host[64];
  size_t got = 0;
  double port;
  napi_valuetype t;
  if (napi_typeof(env, host_v, &t) != napi_ok || t != napi_string ||
      napi_get_value_string_utf8(env, host_v, host, sizeof host, &got) != napi_ok ||
      got >= sizeof host - 1) {
    tg_throw_arg(env, "host must be an IPv4 or IPv6 literal");
    return false;
  }
  if (!tg_get_int(env, port_v, "port", 0, 65535, &port)) return false;
  if (tg_sockaddr(host, (uint16_t)port, ss, len)) return true;
  tg_throw_arg(env, "host must be an IPv4 or IPv6 literal");
  return false;
}

static int udp_socket(int family, bool transparent, const char **failed) {
  int one = 1;
  *failed = "socket";
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (transparent) {
    if (family == AF_INET6) {
      *failed = "setsockopt(IPV6_TRANSPARENT)";
      if (setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one) != 0) goto fail;
    }
    *failed = "setsockopt(IP_TRANSPARENT)";
    if (setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one) != 0) goto fail;
  }
  *failed = "setsockopt(SO_REUSEADDR)";
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) goto fail;
  return fd;
fail:
  tg_close_keep_errno(fd);
  return -1;
}

/* Calls the JS callback for one datagram. */
static void deliver(udp_listener *l, size_t n, const struct sockaddr_storage *from,
                    const struct sockaddr_storage *dst) {
  napi_env env = l->env;
  char from_text[INET6_ADDRSTRLEN], dst_text[INET6_ADDRSTRLEN];
  uint16_t from_port, dst_port;
  if (tg_format_addr(from, from_text, &from_port) == 0 ||
      tg_format_addr(dst, dst_text, &dst_port) == 0)
    return;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value cb, recv, argv[5], result;
  void *data = NULL;
  if (napi_get_reference_value(env, l->callback, &cb) == napi_ok && cb != NULL &&
      /* MakeCallback needs an object as receiver: undefined would throw. */
      napi_get_global(env, &recv) == napi_ok &&
      napi_create_buffer_copy(env, n, l->te->udp_buf, &data, &argv[0]) == napi_ok &&
      napi_create_string_utf8(env, from_text, NAPI_AUTO_LENGTH, &argv[1]) == napi_ok &&
      napi_create_uint32(env, from_port, &argv[2]) == napi_ok &&
      napi_create_string_utf8(env, dst_text, NAPI_AUTO_LENGTH, &argv[3]) == napi_ok &&
      napi_create_uint32(env, dst_port, &argv[4]) == napi_ok) {
    if (napi_make_callback(env, l->async, recv, cb, 5, argv, &result) != napi_ok) {
      /* A throwing callback is a bug in transgate: report it as uncaught, like any other. */
      bool pending = false;
      napi_value exc;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending &&
          napi_get_and_clear_last_exception(env, &exc) == napi_ok)
        napi_fatal_exception(env, exc);
    }
  }
  napi_close_handle_scope(env, scope);
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  udp_listener *l = (udp_listener *)handle->data;
  (void)events;
  if (l->closing) return;
  if (status < 0) {
    /* libuv stops a poll handle on EPOLLERR. Reading SO_ERROR clears the
     * socket's error; then listen on, or DNS would stop for good. */
    (void)tg_socket_error(l->fd, status);
    (void)uv_poll_start(&l->poll, UV_READABLE, on_readable); /* nobody to tell if not */
    return;
  }
  for (int i = 0; i < UDP_BATCH && !l->closing; i++) {
    struct sockaddr_storage from, dst;
    char control[256];
    struct iovec iov = {l->te->udp_buf, UDP_MAX_DATAGRAM};
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    memset(&dst, 0, sizeof dst);
    msg.msg_name = &from;
    msg.msg_namelen = sizeof from;
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t n = recvmsg(l->fd, &msg, MSG_DONTWAIT);
    if (n < 0) {
      /* EAGAIN: drained. Anything else (ICMP errors queued on the socket) is per datagram: go on next time. */
      return;
    }
    if (msg.msg_flags & MSG_TRUNC) continue; /* larger than any DNS message: drop */
    bool have_dst = false;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_IP && c->cmsg_type == IP_ORIGDSTADDR &&
          c->cmsg_len >= CMSG_LEN(sizeof(struct sockaddr_in))) {
        memcpy(&dst, CMSG_DATA(c), sizeof(struct sockaddr_in));
        have_dst = true;
      } else if (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_ORIGDSTADDR &&
                 c->cmsg_len >= CMSG_LEN(sizeof(struct sockaddr_in6))) {
        memcpy(&dst, CMSG_DATA(c), sizeof(struct sockaddr_in6));
        have_dst = true;
      }
    }
    /* Without the original destination there is no address to answer from. */
    if (!have_dst) continue;
    deliver(l, (size_t)n, &from, &dst);
  }
}

static void on_closed(uv_handle_t *h) {
  udp_listener *l = (udp_listener *)h->data;
  tg_env *te = l->te;
  close(l->fd);
  l->fd = -1;
  udp_release(l); /* the poll handle's reference */
  tg_handle_closed(te);
}

/* Ends a listener (udpClose, teardown, a failed udpListen): no datagram is
 * delivered after this; the fd closes once libuv let go of it. Idempotent. */
static void udp_stop(udp_listener *l) {
  if (l->closing) return;
  l->closing = true;
  if (l->prev)
    l->prev->next = l->next;
  else
    l->te->udps = l->next;
  if (l->next) l->next->prev = l->prev;
  l->prev = l->next = NULL;
  napi_async_destroy(l->env, l->async);
  napi_delete_reference(l->env, l->callback);
  uv_close((uv_handle_t *)&l->poll, on_closed);
}

static void udp_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  udp_release(data); /* the JS object's reference */
}

/* Tells udpListen handles apart from other externals (tunnelListen's). */
static const napi_type_tag UDP_TAG = {0x7472616e73676174ULL, 0x6520756470206c73ULL};

/* udpListen(host, port, transparent, callback) -> handle */
static napi_value js_udp_listen(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  struct sockaddr_storage ss;
  socklen_t len;
  bool transparent;
  napi_valuetype t;
  const char *failed = NULL;
  int one = 1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (!udp_get_sockaddr(env, argv[0], argv[1], &ss, &len)) return NULL;
  if (!tg_get_bool(env, argv[2], "transparent", &transparent)) return NULL;
  if (napi_typeof(env, argv[3], &t) != napi_ok || t != napi_function)
    return tg_throw_arg(env, "callback must be a function");

  int family = ss.ss_family;
  int fd = udp_socket(family, transparent, &failed);
  if (fd < 0) return tg_throw_errno(env, failed, errno);
  if (family == AF_INET6) {
    failed = "setsockopt(IPV6_V6ONLY)";
    if (setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) goto fail;
    failed = "setsockopt(IPV6_RECVORIGDSTADDR)";
    if (setsockopt(fd, SOL_IPV6, IPV6_RECVORIGDSTADDR, &one, sizeof one) != 0) goto fail;
  } else {
    failed = "setsockopt(IP_RECVORIGDSTADDR)";
    if (setsockopt(fd, SOL_IP, IP_RECVORIGDSTADDR, &one, sizeof one) != 0) goto fail;
  }
  failed = "bind";
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;

  tg_env *te = tg_env_of(env);
  if (te == NULL) {
    close(fd);
    return NULL;
  }
  /* One receive buffer per environment: listeners of one loop never read at once. */
  if (te->udp_buf == NULL && (te->udp_buf = malloc(UDP_MAX_DATAGRAM)) == NULL) {
    close(fd);
    return tg_throw_errno(env, "malloc", ENOMEM);
  }
  udp_listener *l = calloc(1, sizeof *l);
  if (l == NULL) {
    close(fd);
    return tg_throw_errno(env, "calloc", ENOMEM);
  }
  l->te = te;
  l->fd = fd;
  l->family = family;
  l->env = env;
  napi_value resource_name, handle;
  if (napi_create_reference(env, argv[3], 1, &l->callback) != napi_ok ||
      napi_create_string_utf8(env, "transgate.udp", NAPI_AUTO_LENGTH, &resource_name) != napi_ok ||
      napi_async_init(env, NULL, resource_name, &l->async) != napi_ok) {
    if (l->callback) napi_delete_reference(env, l->callback);
    close(fd);
    free(l);
    napi_throw_error(env, "ERR_TRANSGATE_NAPI", "udpListen: could not keep the callback");
    return NULL;
  }
  int rc = tg_poll_init(te, &l->poll, fd);
  if (rc != 0) {
    napi_async_destroy(env, l->async);
    napi_delete_reference(env, l->callback);
    close(fd);
    free(l);
    return tg_throw_errno(env, "uv_poll_init_socket", -rc);
  }
  l->poll.data = l;
  l->refs = 1; /* the poll handle's; from here on udp_stop ends the listener */
  l->next = te->udps;
  if (te->udps) te->udps->prev = l;
  te->udps = l;
  if (napi_create_external(env, l, udp_finalize, NULL, &handle) != napi_ok) {
    udp_stop(l);
    tg_throw_napi_failure(env, "udpListen: napi_create_external");
    return NULL;
  }
  l->refs++; /* the JS object's, released by udp_finalize */
  if (napi_type_tag_object(env, handle, &UDP_TAG) != napi_ok) {
    udp_stop(l);
    tg_throw_napi_failure(env, "udpListen: napi_type_tag_object");
    return NULL;
  }
  if ((rc = uv_poll_start(&l->poll, UV_READABLE, on_readable)) != 0) {
    udp_stop(l);
    return tg_throw_errno(env, "uv_poll_start", -rc);
  }
  return handle;
fail:
  tg_close_keep_errno(fd);
  return tg_throw_errno(env, failed, errno);
}

/* The listener from a udpListen handle; NULL with a TypeError pending for
 * anything else (a tunnelListen handle included: both are externals). */
static udp_listener *udp_of(napi_env env, napi_value v) {
  napi_valuetype t;
  bool tagged = false;
  void *p = NULL;
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, v, &UDP_TAG, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, v, &p) != napi_ok || p == NULL) {
    tg_throw_arg(env, "handle must be a handle from udpListen");
    return NULL;
  }
  return p;
}

/* udpClose(handle): stops polling, closes the socket once libuv let go of it. Idempotent. */
static napi_value js_udp_close(napi_env env, napi_callback_info info) {
  napi_value argv[1], undef;
  if (!tg_get_args(env, info, 1, argv)) return NULL;
  udp_listener *l = udp_of(env, argv[0]);
  if (l == NULL) return NULL;
  udp_stop(l); /* a closed listener stays valid memory until its JS object is finalized */
  TG_NAPI_CALL(env, napi_get_undefined(env, &undef));
  return undef;
}

/* udpListenerPort(handle) -> the bound port (for port 0). */
static napi_value js_udp_listener_port(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  char text[INET6_ADDRSTRLEN];
  uint16_t port;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  udp_listener *l = udp_of(env, argv[0]);
  if (l == NULL) return NULL;
  /* A closed listener has no socket: EBADF, as getsockname on a closed fd says. */
  if (l->closing) return tg_throw_errno(env, "getsockname", EBADF);
  if (getsockname(l->fd, (struct sockaddr *)&ss, &len) != 0)
    return tg_throw_errno(env, "getsockname", errno);
  if (tg_format_addr(&ss, text, &port) == 0)
    return tg_throw_errno(env, "getsockname", EAFNOSUPPORT);
  return tg_u32(env, port);
}

/*
 * udpReplySocket(host, port) -> fd: a transparent UDP socket bound to
 * host:port (an address that is not this host's: the one the client asked),
 * for sending answers from it. It never reads: receiving is shut down.
 */
static napi_value js_udp_reply_socket(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2], out;
  struct sockaddr_storage ss;
  socklen_t len;
  const char *failed = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (!udp_get_sockaddr(env, argv[0], argv[1], &ss, &len)) return NULL;
  int fd = udp_socket(ss.ss_family, true, &failed);
  if (fd < 0) return tg_throw_errno(env, failed, errno);
  if (ss.ss_family == AF_INET6) {
    int one = 1;
    failed = "setsockopt(IPV6_V6ONLY)";
    if (setsockopt(fd, SOL_IPV6, IPV6_V6ONLY, &one, sizeof one) != 0) goto fail;
  }
  /* Nothing should queue up on a socket that is only written to. */
  int small = 1;
  failed = "setsockopt(SO_RCVBUF)";
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small) != 0) goto fail;
  failed = "bind";
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) goto fail;
  if (napi_create_int32(env, fd, &out) != napi_ok) {
    close(fd);
    return NULL;
  }
  return out;
fail:
  tg_close_keep_errno(fd);
  return tg_throw_errno(env, failed, errno);
}

/* udpSend(fd, buffer, host, port) -> bytes sent; EAGAIN is thrown like any errno (UDP: the caller drops). */
static napi_value js_udp_send(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  struct sockaddr_storage ss;
  socklen_t len;
  int fd;
  void *data = NULL;
  size_t size = 0;
  bool is_buffer = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return NULL;
  if (!tg_get_fd(env, argv[0], &fd)) return NULL;
  if (napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &size) != napi_ok)
    return tg_throw_arg(env, "data must be a Buffer");
  if (!udp_get_sockaddr(env, argv[2], argv[3], &ss, &len)) return NULL;
  ssize_t n = sendto(fd, data, size, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&ss, len);
  if (n < 0) return tg_throw_errno(env, "sendto", errno);
  return tg_u32(env, (uint32_t)n);
}

void tg_udp_teardown(tg_env *te) {
  while (te->udps != NULL) udp_stop(te->udps);
}

/* Called once from the module init in transgate.c. */
napi_status transgate_register_udp(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"udpListen", NULL, js_udp_listen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpClose", NULL, js_udp_close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpListenerPort", NULL, js_udp_listener_port, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpReplySocket", NULL, js_udp_reply_socket, NULL, NULL, NULL, napi_enumerable, NULL},
      {"udpSend", NULL, js_udp_send, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
