/*
 * The zero-copy relay: once a tunnel is open, the bytes between the client
 * socket and the upstream socket move socket -> pipe -> socket with
 * splice(2), so they never enter user space. A direction holds a pipe only
 * while bytes are in it: empty pipes go back to a small pool shared by all
 * relays (as HAProxy does), so an idle connection costs its two sockets and
 * nothing else, and a busy one takes a pipe from the pool without syscalls.
 * Event-driven on Node's own libuv loop with uv_poll (level-triggered), no
 * thread per connection.
 *
 * Ownership: spliceRelay() dup()s both fds and owns the duplicates; the
 * caller closes its own fds (Node destroys its sockets) right after the call.
 * The duplicate keeps the connection open, and Node's close then neither
 * sends a FIN nor frees a descriptor number that this code still polls. The
 * relay closes its duplicates exactly once, when it finishes.
 *
 * The result is one callback(up, down, outcome) on the loop thread after all
 * handles are closed: outcome is "ok" (both directions reached EOF and were
 * half-closed in turn), "idle-timeout", "aborted", "<side> <ERRNO>" when a
 * side failed (the other side is then reset: SO_LINGER 0 before close), or
 * "relay <ERRNO>" for a local failure (pipe2 out of fds).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* splice, pipe2, F_DUPFD_CLOEXEC */
#endif

#include "splice.h"
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>

#include <uv.h>

/* Pipe capacity asked for with F_SETPIPE_SZ: four times the default 64 KiB,
 * so that a bulk transfer needs a quarter of the wake-ups and splice calls.
 * Pages are only allocated while bytes sit in the pipe. Splice moves whole
 * skb fragments into pipe slots, so a pipe can be "full" with fewer bytes;
 * see in_full. te->pipe_cap is what the kernel granted (64 KiB if it refused). */
#define PIPE_WANT (256 * 1024)
#define PIPE_CAP (r->te->pipe_cap)

enum { CLIENT = 0, UPSTREAM = 1 };
static const char *const SIDE_NAME[2] = {"client", "upstream"};

typedef struct tg_relay {
  tg_env *te;
  uv_poll_t poll[2]; /* poll[i] watches fd[i] */
  uv_timer_t timer;  /* idle timeout; unused when idle_ms == 0 */
  int fd[2];         /* our duplicates; -1 once closed */
  /* Direction d carries side d's bytes to side 1-d through pipe[d]. */
  int pipe_r[2], pipe_w[2];
  size_t inpipe[2];   /* bytes in pipe[d] not yet written out */
  uint64_t bytes[2];  /* bytes written to side 1-d */
  bool rd_eof[2];     /* side d reached EOF */
  bool in_full[2];    /* splice into pipe[d] said EAGAIN with data in it: the pipe is full */
  bool wr_blocked[2]; /* writing to side 1-d said EAGAIN */
  bool shut[2];       /* side 1-d was half-closed after direction d finished */
  int events[2];      /* what poll[i] currently waits for */
  uint64_t idle_ms, last_active;
  int open_handles; /* initialised handles whose close callback has not run */
  bool finished;
  char outcome[64];
  tg_relay_done_fn done; /* called once, after every handle is closed */
  void *user;
  struct tg_relay *prev, *next;
} tg_relay;

/* Empty pipes ready for reuse: te->pool_r/pool_w, per environment (its
 * loop thread only, like everything here). */
static int pipe_get(tg_env *te, int *r, int *w) {
  if (te->pool_n > 0) {
    te->pool_n--;
    *r = te->pool_r[te->pool_n];
    *w = te->pool_w[te->pool_n];
    return 0;
  }
  int p[2];
  if (pipe2(p, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
  /* A refusal (fs.pipe-max-size) leaves the default size: not an error. */
  int got = fcntl(p[1], F_SETPIPE_SZ, PIPE_WANT);
  if (got > 0 && (size_t)got > te->pipe_cap) te->pipe_cap = (size_t)got;
  *r = p[0];
  *w = p[1];
  return 0;
}

/* Only empty pipes may be pooled: a byte left behind would reach another
 * connection. None once the environment is torn down (the pool is closed). */
static void pipe_put(tg_env *te, int r, int w, bool empty) {
  if (empty && !te->stopping && te->pool_n < TG_PIPE_POOL_MAX) {
    te->pool_r[te->pool_n] = r;
    te->pool_w[te->pool_n] = w;
    te->pool_n++;
    return;
  }
  close(r);
  close(w);
}

static void finish(tg_relay *r, const char *outcome);

/* The relay's memory goes with its last handle; done() is called then,
 * unless the relay never started (tg_relay_start failed: r->done NULL). */
static void on_handle_closed(uv_handle_t *h) {
  tg_relay *r = (tg_relay *)h->data;
  tg_env *te = r->te;
  if (--r->open_handles == 0) {
    if (r->done != NULL) r->done(r->user, r->bytes[CLIENT], r->bytes[UPSTREAM], r->outcome);
    free(r);
  }
  tg_handle_closed(te);
}

static void on_poll(uv_poll_t *h, int status, int events);
static void local_fail(tg_relay *r, int err);

static void update_polls(tg_relay *r) {
  for (int side = 0; side < 2; side++) {
    int d_in = side, d_out = 1 - side;
    int ev = 0;
    if (!r->rd_eof[d_in] && !r->in_full[d_in] && r->inpipe[d_in] < PIPE_CAP) ev |= UV_READABLE;
    if (r->wr_blocked[d_out]) ev |= UV_WRITABLE;
    if (ev == r->events[side]) continue;
    r->events[side] = ev;
    if (ev == 0) {
      (void)uv_poll_stop(&r->poll[side]);
    } else {
      int rc = uv_poll_start(&r->poll[side], ev, on_poll);
      if (rc != 0) {
        local_fail(r, -rc);
        return;
      }
    }
  }
}

static void set_linger0(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* Side `side` failed with err: the other side gets a reset, as a transparent
 * path would have delivered. */
static void fail(tg_relay *r, int side, int err) {
  char msg[64];
  snprintf(msg, sizeof msg, "%s %s", SIDE_NAME[side], tg_errno_name(err));
  set_linger0(r->fd[1 - side]);
  finish(r, msg);
}

static void local_fail(tg_relay *r, int err) {
  char msg[64];
  snprintf(msg, sizeof msg, "relay %s", tg_errno_name(err));
  finish(r, msg);
}

/* Moves what can move in direction d without blocking. Returns false when the relay finished. */
/* Writes what the pipe of direction d holds. False when the relay failed.
 * A short write means the socket buffer is full: wait for POLLOUT instead of
 * learning it from one more splice that says EAGAIN. */
static bool drain(tg_relay *r, int d) {
  for (;;) {
    ssize_t n = splice(r->pipe_r[d], NULL, r->fd[1 - d], NULL, r->inpipe[d],
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      r->inpipe[d] -= (size_t)n;
      r->bytes[d] += (uint64_t)n;
      r->in_full[d] = false;
      r->wr_blocked[d] = r->inpipe[d] > 0;
      r->last_active = uv_now(r->poll[0].loop);
      return true;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      r->wr_blocked[d] = true;
      return true;
    }
    fail(r, 1 - d, n < 0 ? errno : EPIPE);
    return false;
  }
}

/* Moves what can move in direction d without blocking. Returns false when
 * the relay finished. Level-triggered polls make stopping early safe: the
 * loop ends after a short read (the socket is most likely empty) rather than
 * paying for a splice that says EAGAIN; if bytes remain, the poll fires
 * again. On return, bytes left in the pipe always have a writer waiting for
 * POLLOUT (wr_blocked), so nothing can stall in the pipe. */
static bool pump(tg_relay *r, int d) {
  const int src = d, dst = 1 - d;
  for (;;) {
    if (r->inpipe[d] > 0 && !r->wr_blocked[d] && !drain(r, d)) return false;
    if (r->rd_eof[d] || r->in_full[d] || r->inpipe[d] >= PIPE_CAP) break;
    if (r->pipe_r[d] < 0 && pipe_get(r->te, &r->pipe_r[d], &r->pipe_w[d]) != 0) {
      local_fail(r, errno);
      return false;
    }
    size_t want = PIPE_CAP - r->inpipe[d];
    ssize_t n =
        splice(r->fd[src], NULL, r->pipe_w[d], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
      r->inpipe[d] += (size_t)n;
      r->last_active = uv_now(r->poll[0].loop);
      if ((size_t)n == want) continue; /* a full read: more may be waiting */
      if (!r->wr_blocked[d] && !drain(r, d)) return false;
      break;
    }
    if (n == 0) {
      r->rd_eof[d] = true;
      r->last_active = uv_now(r->poll[0].loop);
      if (r->inpipe[d] > 0 && !r->wr_blocked[d] && !drain(r, d)) return false;
      break;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN) {
      fail(r, src, errno);
      return false;
    }
    /* With bytes in the pipe this may be the pipe, not the socket: stop
     * polling the socket until the pipe drains, or a level-triggered
     * readable socket would spin the loop. */
    if (r->inpipe[d] > 0) r->in_full[d] = true;
    break;
  }
  if (r->inpipe[d] == 0 && r->pipe_r[d] >= 0) {
    pipe_put(r->te, r->pipe_r[d], r->pipe_w[d], true);
    r->pipe_r[d] = r->pipe_w[d] = -1;
    r->in_full[d] = false;
  }
  if (r->rd_eof[d] && r->inpipe[d] == 0 && !r->shut[d]) {
    r->shut[d] = true;
    /* ENOTCONN: the peer is already gone; the other direction reports it. */
    if (shutdown(r->fd[dst], SHUT_WR) != 0 && errno != ENOTCONN) {
      fail(r, dst, errno);
      return false;
    }
  }
  if (r->shut[0] && r->shut[1]) {
    finish(r, "ok");
    return false;
  }
  return true;
}

static void on_poll(uv_poll_t *h, int status, int events) {
  tg_relay *r = (tg_relay *)h->data;
  const int side = h == &r->poll[CLIENT] ? CLIENT : UPSTREAM;
  if (r->finished) return;
  if (status < 0) {
    fail(r, side, tg_socket_error(r->fd[side], status));
    return;
  }
  /* Readable: side's bytes can move on (direction side). Writable: the
   * other direction can drain into side. */
  if ((events & UV_READABLE) && !pump(r, side)) return;
  if (events & UV_WRITABLE) {
    r->wr_blocked[1 - side] = false;
    if (!pump(r, 1 - side)) return;
  }
  update_polls(r);
}

static void on_timer(uv_timer_t *t) {
  tg_relay *r = (tg_relay *)t->data;
  uint64_t idle = uv_now(t->loop) - r->last_active;
  if (idle >= r->idle_ms) {
    finish(r, "idle-timeout");
    return;
  }
  int rc = uv_timer_start(t, on_timer, r->idle_ms - idle, 0);
  if (rc != 0) local_fail(r, -rc);
}

static void finish(tg_relay *r, const char *outcome) {
  if (r->finished) return;
  r->finished = true;
  snprintf(r->outcome, sizeof r->outcome, "%s", outcome);
  tg_env *te = r->te;
  if (r->prev)
    r->prev->next = r->next;
  else
    te->relays = r->next;
  if (r->next) r->next->prev = r->prev;
  te->relay_count--;
  /* uv_close stops the polls at once, so the fds can be closed right after.
   * All three handles are open (open_handles == 3) once a relay runs. */
  uv_close((uv_handle_t *)&r->poll[0], on_handle_closed);
  uv_close((uv_handle_t *)&r->poll[1], on_handle_closed);
  uv_close((uv_handle_t *)&r->timer, on_handle_closed);
  for (int i = 0; i < 2; i++) {
    if (r->fd[i] >= 0) close(r->fd[i]);
    if (r->pipe_r[i] >= 0) pipe_put(te, r->pipe_r[i], r->pipe_w[i], r->inpipe[i] == 0);
    r->fd[i] = r->pipe_r[i] = r->pipe_w[i] = -1;
  }
}

/* ---- C entry point ---------------------------------------------------------- */

/* A relay that could not start: its initialised handles are closed (libuv
 * owns them until their close callbacks, which free r without a done()). */
static int abandon(tg_relay *r, int rc, const char *what, const char **failed) {
  uv_handle_t *h[3] = {(uv_handle_t *)&r->poll[CLIENT], (uv_handle_t *)&r->poll[UPSTREAM],
                       (uv_handle_t *)&r->timer};
  int n = r->open_handles;
  r->done = NULL;
  r->finished = true;
  *failed = what;
  if (n == 0) free(r);
  for (int i = 0; i < n; i++) uv_close(h[i], on_handle_closed);
  return rc;
}

int tg_relay_start(tg_env *te, int client_fd, int upstream_fd, uint64_t idle_ms, bool client_eof,
                   bool upstream_eof, tg_relay_done_fn done, void *user, const char **failed) {
  tg_relay *r = calloc(1, sizeof *r);
  if (r == NULL) {
    *failed = "calloc";
    return -ENOMEM;
  }
  r->te = te;
  r->done = done;
  r->user = user;
  r->idle_ms = idle_ms;
  r->fd[CLIENT] = client_fd;
  r->fd[UPSTREAM] = upstream_fd;
  r->rd_eof[CLIENT] = client_eof;
  r->rd_eof[UPSTREAM] = upstream_eof;
  for (int i = 0; i < 2; i++) r->pipe_r[i] = r->pipe_w[i] = -1;
  /* open_handles counts in the order abandon() closes them. */
  int rc = tg_poll_init(te, &r->poll[CLIENT], client_fd);
  if (rc != 0) return abandon(r, rc, "uv_poll_init_socket", failed);
  r->poll[CLIENT].data = r;
  r->open_handles++;
  rc = tg_poll_init(te, &r->poll[UPSTREAM], upstream_fd);
  if (rc != 0) return abandon(r, rc, "uv_poll_init_socket", failed);
  r->poll[UPSTREAM].data = r;
  r->open_handles++;
  rc = tg_timer_init(te, &r->timer);
  if (rc != 0) return abandon(r, rc, "uv_timer_init", failed);
  r->timer.data = r;
  r->open_handles++;
  r->last_active = uv_now(te->loop);
  if (r->idle_ms > 0 && (rc = uv_timer_start(&r->timer, on_timer, r->idle_ms, 0)) != 0)
    return abandon(r, rc, "uv_timer_start", failed);
  /* Keep the loop alive while bytes flow, like Node's own sockets. */
  r->next = te->relays;
  if (te->relays) te->relays->prev = r;
  te->relays = r;
  te->relay_count++;

  /* Bytes may already wait in the kernel (and EOF flags may already be set):
   * move them now rather than on the first poll. */
  if (pump(r, CLIENT) && pump(r, UPSTREAM)) update_polls(r);
  return 0;
}

/* ---- JS entry points ------------------------------------------------------ */

/* One async context per environment for every relay: a context per
 * connection would cost a JS object and async-hook events per connection
 * for nothing transgate reads. */
static napi_status tg_shared_async_context(tg_env *te, napi_async_context *out) {
  if (te->actx == NULL) {
    napi_value name;
    napi_status st = napi_create_string_utf8(te->env, "transgate.native", NAPI_AUTO_LENGTH, &name);
    if (st == napi_ok) st = napi_async_init(te->env, NULL, name, &te->actx);
    if (st != napi_ok) {
      te->actx = NULL;
      return st;
    }
  }
  *out = te->actx;
  return napi_ok;
}

napi_value tg_call_js(tg_env *te, napi_ref fn, size_t argc, const napi_value *argv) {
  napi_env env = te->env;
  napi_value cb, recv, result;
  napi_async_context actx;
  if (te->stopping) return NULL; /* no JS runs in an environment being torn down */
  if (napi_get_reference_value(env, fn, &cb) != napi_ok || cb == NULL) return NULL;
  if (napi_get_global(env, &recv) != napi_ok) return NULL; /* MakeCallback wants an object */
  if (tg_shared_async_context(te, &actx) != napi_ok) return NULL;
  if (napi_make_callback(env, actx, recv, cb, argc, argv, &result) != napi_ok) {
    /* An exception in the callback: hand it to process 'uncaughtException'
     * as Node does for its own callbacks, instead of losing it. */
    napi_value exc;
    if (napi_get_and_clear_last_exception(env, &exc) == napi_ok) napi_fatal_exception(env, exc);
    return NULL;
  }
  return result;
}

/* What spliceRelay's caller waits for: the JS callback of one relay. */
typedef struct {
  tg_env *te;
  napi_ref cb;
} js_done;

static void js_relay_done(void *user, uint64_t up, uint64_t down, const char *outcome) {
  js_done *d = user;
  napi_env env = d->te->env;
  napi_handle_scope scope;
  if (!d->te->stopping && napi_open_handle_scope(env, &scope) == napi_ok) {
    napi_value argv[3];
    if (napi_create_double(env, (double)up, &argv[0]) == napi_ok &&
        napi_create_double(env, (double)down, &argv[1]) == napi_ok &&
        napi_create_string_utf8(env, outcome, NAPI_AUTO_LENGTH, &argv[2]) == napi_ok)
      tg_call_js(d->te, d->cb, 3, argv);
    napi_close_handle_scope(env, scope);
  }
  napi_delete_reference(env, d->cb);
  free(d);
}

/* 0 for a stream socket, else the errno to report. */
static int stream_socket_error(int fd) {
  int type = 0;
  socklen_t len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return errno;
  return type == SOCK_STREAM ? 0 : ENOTSOCK;
}

/* spliceRelay(clientFd, upstreamFd, idleTimeoutMs, clientEof, upstreamEof, callback) */
static napi_value js_splice_relay(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value argv[6];
  double fd_d[2], idle_d;
  bool eof[2];
  napi_valuetype t;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok)
    return tg_throw_arg(env, "bad call");
  if (argc < 6) return tg_throw_arg(env, "spliceRelay needs 6 arguments");
  if (!tg_get_int(env, argv[0], "clientFd", 0, INT_MAX, &fd_d[0]) ||
      !tg_get_int(env, argv[1], "upstreamFd", 0, INT_MAX, &fd_d[1]) ||
      !tg_get_int(env, argv[2], "idleTimeoutMs", 0, 2147483647.0, &idle_d) ||
      !tg_get_bool(env, argv[3], "clientEof", &eof[0]) ||
      !tg_get_bool(env, argv[4], "upstreamEof", &eof[1]))
    return NULL;
  if (napi_typeof(env, argv[5], &t) != napi_ok || t != napi_function)
    return tg_throw_arg(env, "callback must be a function");
  if (fd_d[0] == fd_d[1]) return tg_throw_arg(env, "clientFd and upstreamFd must differ");
  for (int i = 0; i < 2; i++) {
    int e = stream_socket_error((int)fd_d[i]);
    if (e != 0) return tg_throw_errno(env, "getsockopt(SO_TYPE)", e);
  }

  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  napi_async_context actx;
  if (tg_shared_async_context(te, &actx) != napi_ok)
    return tg_throw_errno(env, "napi_async_init", ENOMEM);

  js_done *d = calloc(1, sizeof *d);
  if (d == NULL) return tg_throw_errno(env, "calloc", ENOMEM);
  d->te = te;
  if (napi_create_reference(env, argv[5], 1, &d->cb) != napi_ok) {
    free(d);
    return tg_throw_errno(env, "napi_create_reference", ENOMEM);
  }
  int fd[2] = {-1, -1};
  int err = 0;
  const char *what = NULL;
  for (int i = 0; i < 2 && err == 0; i++) {
    fd[i] = fcntl((int)fd_d[i], F_DUPFD_CLOEXEC, 0);
    if (fd[i] < 0) err = errno, what = "fcntl(F_DUPFD_CLOEXEC)";
  }
  if (err == 0) {
    int rc =
        tg_relay_start(te, fd[0], fd[1], (uint64_t)idle_d, eof[0], eof[1], js_relay_done, d, &what);
    if (rc != 0) err = -rc;
  }
  if (err != 0) {
    for (int i = 0; i < 2; i++)
      if (fd[i] >= 0) close(fd[i]);
    napi_delete_reference(env, d->cb);
    free(d);
    return tg_throw_errno(env, what, err);
  }
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

/* spliceAbortAll() -> how many relays were aborted. Each still gets its callback. */
static napi_value js_splice_abort_all(napi_env env, napi_callback_info info) {
  (void)info;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  uint32_t n = 0;
  while (te->relays != NULL) {
    finish(te->relays, "aborted");
    n++;
  }
  return tg_u32(env, n);
}

/* spliceActive() -> relays running now in this environment. */
static napi_value js_splice_active(napi_env env, napi_callback_info info) {
  (void)info;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  return tg_u32(env, te->relay_count);
}

void tg_splice_teardown(tg_env *te) {
  while (te->relays != NULL) finish(te->relays, "aborted");
}

napi_status tg_splice_register(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"spliceRelay", NULL, js_splice_relay, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spliceAbortAll", NULL, js_splice_abort_all, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spliceActive", NULL, js_splice_active, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
