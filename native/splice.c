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
 * The result is one callback(up, down, outcome, detail) on the loop thread
 * after all handles are closed: outcome (enum tg_outcome) is OK (both
 * directions reached EOF and were half-closed in turn), IDLE_TIMEOUT,
 * ABORTED, CLIENT_ERROR or UPSTREAM_ERROR with the errno name as detail when
 * a side failed (the other side is then reset: SO_LINGER 0 before close), or
 * RELAY_ERROR with the errno name for a local failure (pipe2 out of fds).
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
#include <strings.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include "protocol.h"

#include <uv.h>

/* Pipe capacity asked for with F_SETPIPE_SZ: four times the default 64 KiB,
 * so that a bulk transfer needs a quarter of the wake-ups and splice calls.
 * Pages are only allocated while bytes sit in the pipe. Splice moves whole
 * skb fragments into pipe slots, so a pipe can be "full" with fewer bytes;
 * see in_full. te->pipe_cap is what the kernel granted (64 KiB if it refused). */
#define PIPE_WANT (256 * 1024)
#define PIPE_CAP (r->te->pipe_cap)

enum { CLIENT = 0, UPSTREAM = 1 };

typedef struct tg_relay {
  tg_env *te;
  uv_poll_t poll[2]; /* poll[i] watches fd[i] */
  uv_timer_t timer;  /* the idle timeout and a partial frame's deadline (arm_timer) */
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
  /* The framed client direction (plain HTTP, tg_relay_framed); frame NULL: raw. */
  tg_frame_fn frame;
  uint64_t budget; /* client bytes that pass verbatim before the next boundary */
  char *cbuf;      /* client bytes read at a boundary, not yet passed on */
  size_t cbuf_len, cbuf_cap;
  char *out; /* the framer's bytes, written upstream before anything else */
  size_t out_len, out_off;
  bool want_more; /* the framer saw cbuf and asked for more */
  /* Slowloris on a kept-alive connection: the first head has the sniff
   * deadline, a later one head_ms from the framer's first read-on about it,
   * as the Node path's headersTimeout. 0: no partial frame. */
  uint64_t head_ms, head_since;
  uint64_t last_down; /* when upstream bytes last moved (0: never) */
  size_t seen;        /* with want_more: cbuf bytes known to hold no LF */
  /* A request head went upstream and no byte of any answer has come back
   * since (down_mark: bytes[UPSTREAM] + inpipe[UPSTREAM] then). The next
   * head is not read until one does: a client that pipelines then has at
   * most one answer under way at each boundary, so a hand-over, which
   * waits for upstream to go quiet, never leaves before an answer that
   * has not even begun. */
  bool awaiting;
  uint64_t down_mark;
  bool handing_over; /* TG_NEXT_HANDOVER: the client goes to JS once upstream is quiet */
  bool keep_client;  /* finish() leaves the client socket open: done() gets it */
  int kept_fd;
  bool status_known; /* the first response's status was looked at */
  int first_status;
  char *first_head; /* the first response's head, when the relay stopped for it */
  /* enum tg_outcome, and its detail (static: an errno name or "") */
  int outcome;
  const char *detail;
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

static void finish(tg_relay *r, int outcome, const char *detail);

/* The relay's memory goes with its last handle; done() is called then,
 * unless the relay never started (tg_relay_start failed: r->done NULL). */
static void on_handle_closed(uv_handle_t *h) {
  tg_relay *r = (tg_relay *)h->data;
  tg_env *te = r->te;
  if (--r->open_handles == 0) {
    if (r->done != NULL) {
      tg_relay_end end = {.up = r->bytes[CLIENT],
                          .down = r->bytes[UPSTREAM],
                          .outcome = r->outcome,
                          .detail = r->detail,
                          .kept_fd = r->keep_client ? r->kept_fd : -1,
                          .rest = r->cbuf,
                          .rest_len = r->cbuf_len,
                          .first_status = r->first_status,
                          .first_head = r->first_head};
      r->done(r->user, &end);
    } else if (r->keep_client && r->kept_fd >= 0) {
      close(r->kept_fd);
    }
    free(r->cbuf);
    free(r->out);
    free(r->first_head);
    free(r);
  }
  tg_handle_closed(te);
}

static void on_poll(uv_poll_t *h, int status, int events);
static void local_fail(tg_relay *r, int err);

static bool answer_begun(tg_relay *r);

static void update_polls(tg_relay *r) {
  for (int side = 0; side < 2; side++) {
    int d_in = side, d_out = 1 - side;
    int ev = 0;
    if (!r->rd_eof[d_in] && !r->in_full[d_in] && r->inpipe[d_in] < PIPE_CAP &&
        !(d_in == CLIENT && r->frame != NULL &&
          (r->wr_blocked[CLIENT] || r->handing_over ||
           (r->awaiting && r->budget == 0 && r->out == NULL && !answer_begun(r)))))
      ev |= UV_READABLE;
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
  set_linger0(r->fd[1 - side]);
  finish(r, side == CLIENT ? TG_OUTCOME_CLIENT_ERROR : TG_OUTCOME_UPSTREAM_ERROR,
         tg_errno_name(err));
}

static void local_fail(tg_relay *r, int err) {
  finish(r, TG_OUTCOME_RELAY_ERROR, tg_errno_name(err));
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
static bool pump_framed(tg_relay *r);
static int peek_status(tg_relay *r);
static bool arm_timer(tg_relay *r);
static void on_timer(uv_timer_t *t);

static bool pump(tg_relay *r, int d) {
  const int src = d, dst = 1 - d;
  if (d == CLIENT && r->frame != NULL) return pump_framed(r);
  if (d == UPSTREAM && !r->status_known) {
    int known = peek_status(r);
    if (known <= 0) return known == 0; /* not yet (looked at again when readable), or finished */
  }
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
      if (d == UPSTREAM) r->last_down = r->last_active;
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
    finish(r, TG_OUTCOME_OK, "");
    return false;
  }
  return true;
}

/* ---- framed client direction (plain HTTP) ------------------------------------ */

/* The most a framer may ask to see at one boundary: a request head (64 KiB,
 * src/sniff/http.ts) and what came with it. */
#define FRAME_MAX (80 * 1024)

/* How long upstream must have sent nothing before a hand-over leaves (see hand_over_if_quiet). */
#define HANDOVER_GRACE_MS 250

/* Writes buf[*off..len) upstream: 1 when all is out, 0 when the socket is
 * full (wr_blocked: POLLOUT is awaited), -1 when the relay failed. */
static int write_up(tg_relay *r, const char *buf, size_t len, size_t *off) {
  while (*off < len) {
    ssize_t n = send(r->fd[UPSTREAM], buf + *off, len - *off, MSG_NOSIGNAL);
    if (n > 0) {
      *off += (size_t)n;
      r->bytes[CLIENT] += (uint64_t)n;
      r->last_active = uv_now(r->poll[0].loop);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      r->wr_blocked[CLIENT] = true;
      return 0;
    }
    fail(r, UPSTREAM, n < 0 ? errno : EPIPE);
    return -1;
  }
  return 1;
}

static void cbuf_drop(tg_relay *r, size_t n) {
  if (n > r->cbuf_len) n = r->cbuf_len;
  memmove(r->cbuf, r->cbuf + n, r->cbuf_len - n);
  r->cbuf_len -= n;
}

/* Reads what the client sent into cbuf. 1: bytes came, 0: none yet or EOF
 * (rd_eof), -1: the relay failed. */
static int read_client(tg_relay *r) {
  if (r->cbuf_len >= r->cbuf_cap) {
    size_t want = r->cbuf_cap == 0 ? 4096 : r->cbuf_cap * 2;
    if (want > FRAME_MAX) want = FRAME_MAX;
    if (want <= r->cbuf_len) {
      /* The framer kept asking for more than a head can be: a bug on its side. */
      set_linger0(r->fd[CLIENT]);
      finish(r, TG_OUTCOME_INTERNAL_ERROR, "");
      return -1;
    }
    char *p = realloc(r->cbuf, want);
    if (p == NULL) {
      local_fail(r, ENOMEM);
      return -1;
    }
    r->cbuf = p;
    r->cbuf_cap = want;
  }
  ssize_t n;
  do n = recv(r->fd[CLIENT], r->cbuf + r->cbuf_len, r->cbuf_cap - r->cbuf_len, 0);
  while (n < 0 && errno == EINTR);
  if (n > 0) {
    r->cbuf_len += (size_t)n;
    r->last_active = uv_now(r->poll[0].loop);
    return 1;
  }
  if (n == 0) {
    r->rd_eof[CLIENT] = true;
    return 0;
  }
  if (errno == EAGAIN) return 0;
  fail(r, CLIENT, errno);
  return -1;
}

/* Upstream has nothing on its way to the client that the relay can see: no
 * bytes in the pipe, none waiting in the socket. A client that sends its
 * next request after reading the last response (every client that does not
 * pipeline) finds it so at once. */
static bool upstream_quiet(tg_relay *r) {
  if (r->inpipe[UPSTREAM] > 0) return false;
  if (r->rd_eof[UPSTREAM]) return true;
  int n = 0;
  return ioctl(r->fd[UPSTREAM], FIONREAD, &n) != 0 || n == 0;
}

/* A handed-over connection leaves once upstream is quiet: the client socket
 * and the bytes read go to done(). Quiet means nothing waiting and nothing
 * for HANDOVER_GRACE_MS: the answer to a pipelined request may still be
 * under way, and squid writes a head and its body apart, so nothing waiting
 * for an instant was not its end (the body was lost behind a hand-over).
 * Answers are not parsed, so a pause longer than this still ends one early:
 * only a pipelining client that changes routes meets it. False when the
 * relay finished. */
static bool hand_over_if_quiet(tg_relay *r) {
  if (!r->handing_over || !upstream_quiet(r)) return true;
  if (!r->rd_eof[UPSTREAM] && uv_now(r->poll[0].loop) - r->last_down < HANDOVER_GRACE_MS)
    return arm_timer(r);
  r->keep_client = true;
  finish(r, TG_OUTCOME_HANDED_OVER, "");
  return false;
}

static bool answer_begun(tg_relay *r) {
  return r->bytes[UPSTREAM] + r->inpipe[UPSTREAM] > r->down_mark;
}

static void await_answer(tg_relay *r) {
  r->awaiting = true;
  r->down_mark = r->bytes[UPSTREAM] + r->inpipe[UPSTREAM];
}

/* The client direction of a framed relay: the pipe first, then the
 * framer's bytes, then `budget` bytes verbatim (from cbuf, then spliced),
 * then the framer again. Same contract as pump(). */
static bool pump_framed(tg_relay *r) {
  const int d = CLIENT;
  for (;;) {
    if (r->inpipe[d] > 0) {
      if (!r->wr_blocked[d] && !drain(r, d)) return false;
      if (r->inpipe[d] > 0) break;
    }
    if (r->wr_blocked[d]) break;
    if (r->out != NULL) {
      int w = write_up(r, r->out, r->out_len, &r->out_off);
      if (w < 0) return false;
      if (w == 0) break;
      free(r->out);
      r->out = NULL;
      r->out_len = r->out_off = 0;
    }
    if (r->budget > 0 && r->cbuf_len > 0) {
      size_t n = r->cbuf_len < r->budget ? r->cbuf_len : (size_t)r->budget, off = 0;
      int w = write_up(r, r->cbuf, n, &off);
      cbuf_drop(r, off);
      r->budget -= off;
      if (w < 0) return false;
      if (w == 0) break;
      continue;
    }
    if (r->budget > 0) {
      if (r->rd_eof[d] || r->in_full[d]) break;
      if (r->pipe_r[d] < 0 && pipe_get(r->te, &r->pipe_r[d], &r->pipe_w[d]) != 0) {
        local_fail(r, errno);
        return false;
      }
      size_t want = PIPE_CAP - r->inpipe[d];
      if (want > r->budget) want = (size_t)r->budget;
      ssize_t n =
          splice(r->fd[d], NULL, r->pipe_w[d], NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
      if (n > 0) {
        r->inpipe[d] += (size_t)n;
        r->budget -= (uint64_t)n;
        r->last_active = uv_now(r->poll[0].loop);
        if ((size_t)n == want) continue;
        if (!r->wr_blocked[d] && !drain(r, d)) return false;
        break;
      }
      if (n == 0) {
        r->rd_eof[d] = true;
        break;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN) {
        fail(r, d, errno);
        return false;
      }
      if (r->inpipe[d] > 0) r->in_full[d] = true;
      break;
    }
    /* A boundary: the framer decides on what the client sent next. */
    if (r->handing_over || (r->awaiting && !answer_begun(r))) break;
    r->awaiting = false;
    if (r->cbuf_len == 0 || r->want_more) {
      if (r->rd_eof[d]) {
        /* The client finished sending mid-head: nothing of it can go on. */
        r->cbuf_len = 0;
        break;
      }
      int got = read_client(r);
      if (got < 0) return false;
      if (got == 0 && !r->rd_eof[d]) break;
      if (got == 0 && r->cbuf_len == 0) break;
      /* Whatever the framer waits for (a head, a chunk line, trailers) ends
       * with a LF: until one comes it would say read-on again, and a client
       * sending its head a byte at a time would cost a call into JS (and a
       * copy of cbuf) per byte. A full cbuf and the client's EOF are told. */
      if (r->want_more && !r->rd_eof[d] && r->cbuf_len < r->cbuf_cap &&
          memchr(r->cbuf + r->seen, '\n', r->cbuf_len - r->seen) == NULL) {
        r->seen = r->cbuf_len;
        continue;
      }
      r->want_more = false;
    }
    tg_frame_step step = {.action = -1};
    r->frame(r->user, r->cbuf, r->cbuf_len, r->rd_eof[d], &step);
    if (r->finished) {
      free(step.out);
      return false;
    }
    switch (step.action) {
    case TG_NEXT_FORWARD:
      if (step.consumed == 0 && step.out_len == 0 && step.budget == 0) {
        /* Nothing changes: the framer would be asked the same again, forever, in this callback. */
        free(step.out);
        set_linger0(r->fd[CLIENT]);
        finish(r, TG_OUTCOME_INTERNAL_ERROR, "");
        return false;
      }
      r->head_since = 0;
      cbuf_drop(r, step.consumed);
      r->out = step.out;
      r->out_len = step.out_len;
      r->out_off = 0;
      if (r->out != NULL && r->out_len == 0) free(r->out), r->out = NULL;
      r->budget = step.budget;
      if (step.head) await_answer(r);
      continue;
    case TG_NEXT_READ_ON:
      if (r->head_since == 0 && r->head_ms > 0) {
        r->head_since = uv_now(r->poll[0].loop);
        if (!arm_timer(r)) return false;
      }
      r->want_more = true;
      r->seen = r->cbuf_len;
      continue;
    case TG_NEXT_HANDOVER:
      r->handing_over = true;
      return hand_over_if_quiet(r);
    case TG_NEXT_CLOSE:
      set_linger0(r->fd[CLIENT]);
      finish(r, TG_OUTCOME_REFUSED, "");
      return false;
    default:
      free(step.out);
      set_linger0(r->fd[CLIENT]);
      finish(r, TG_OUTCOME_INTERNAL_ERROR, "");
      return false;
    }
  }
  if (r->inpipe[d] == 0 && r->pipe_r[d] >= 0) {
    pipe_put(r->te, r->pipe_r[d], r->pipe_w[d], true);
    r->pipe_r[d] = r->pipe_w[d] = -1;
    r->in_full[d] = false;
  }
  /* The client is done: after the last of its bytes, upstream is half-closed as in pump(). */
  if (r->rd_eof[d] && r->inpipe[d] == 0 && r->out == NULL && (r->budget == 0 || r->cbuf_len == 0) &&
      !(r->awaiting && r->cbuf_len > 0) && !r->shut[d]) {
    r->shut[d] = true;
    if (shutdown(r->fd[UPSTREAM], SHUT_WR) != 0 && errno != ENOTCONN) {
      fail(r, UPSTREAM, errno);
      return false;
    }
  }
  if (r->shut[0] && r->shut[1]) {
    finish(r, TG_OUTCOME_OK, "");
    return false;
  }
  return true;
}

/* A header line `name:` in a response head (case-insensitive name). */
static bool has_field(const char *head, size_t len, const char *name) {
  size_t n = strlen(name);
  for (size_t i = 0; i + 2 + n <= len; i++) {
    if (head[i] == '\n' && strncasecmp(head + i + 1, name, n) == 0) return true;
  }
  return false;
}

/* The first response's head, looked at (MSG_PEEK) before its first byte
 * reaches the client. A 407 there means the proxy wants credentials the
 * gateway does not have, and a 5xx the proxy made itself (X-Squid-Error,
 * Proxy-Status, RFC 9209) means it could not fetch: then the client gets
 * the gateway's own answer saying what to do or what failed, as on the
 * Node path, instead of a challenge it cannot answer or a proxy's page.
 * The relay stops, keeping the client socket and the head for done().
 * Any other response passes untouched. 1: looked at (known or not), 0:
 * nothing to look at yet, -1: the relay finished. */
static int peek_status(tg_relay *r) {
  char b[4096];
  ssize_t n;
  do n = recv(r->fd[UPSTREAM], b, sizeof b - 1, MSG_PEEK | MSG_DONTWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno == EAGAIN) return 0;
  r->status_known = true;
  /* "HTTP/1.1 407 ": a shorter first segment is rare; the status is then left unknown. */
  if (n < 13 || memcmp(b, "HTTP/", 5) != 0 || b[8] != ' ' || b[12] != ' ') return 1;
  int status = 0;
  for (int i = 9; i < 12; i++) {
    if (b[i] < '0' || b[i] > '9') return 1;
    status = status * 10 + (b[i] - '0');
  }
  r->first_status = status;
  if (r->frame == NULL) return 1;
  b[n] = 0;
  const char *end = strstr(b, "\r\n\r\n");
  size_t head_len = end != NULL ? (size_t)(end - b) + 4 : (size_t)n;
  bool own = status >= 500 && end != NULL &&
             (has_field(b, head_len, "x-squid-error:") || has_field(b, head_len, "proxy-status:"));
  if (status != 407 && !own) return 1;
  if ((r->first_head = malloc(head_len + 1)) != NULL) {
    memcpy(r->first_head, b, head_len);
    r->first_head[head_len] = 0;
  }
  r->keep_client = true;
  finish(r, TG_OUTCOME_ANSWER_STATUS, "");
  return -1;
}

/* The timer for the nearer of the idle deadline and a partial frame's
 * (rechecked a little later while an answer still flows). False when the
 * relay finished. */
static bool arm_timer(tg_relay *r) {
  uint64_t now = uv_now(r->poll[0].loop), wait = UINT64_MAX;
  if (r->idle_ms > 0) {
    uint64_t at = r->last_active + r->idle_ms;
    wait = at > now ? at - now : 0;
  }
  if (r->head_since > 0) {
    uint64_t at = r->head_since + r->head_ms;
    uint64_t w = at > now ? at - now : 100;
    if (w < wait) wait = w;
  }
  if (r->handing_over) {
    uint64_t at = r->last_down + HANDOVER_GRACE_MS;
    uint64_t w = at > now ? at - now : 1;
    if (w < wait) wait = w;
  }
  if (wait == UINT64_MAX) return true;
  int rc = uv_timer_start(&r->timer, on_timer, wait, 0);
  if (rc != 0) {
    local_fail(r, -rc);
    return false;
  }
  return true;
}

/* After bytes moved, wherever they moved: an answer that began lets the
 * client's next request (perhaps read already) be looked at, and a hand-over
 * waiting for upstream to go quiet may leave. Left out at the start, an
 * answer already waiting when the relay began (a fast origin) was moved
 * there with nobody looking: the pipelined request behind it then waited
 * for the client's next packet, its FIN. False when the relay finished. */
static bool settle(tg_relay *r) {
  if (r->frame != NULL && r->awaiting && answer_begun(r) && !pump(r, CLIENT)) return false;
  return hand_over_if_quiet(r);
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
  if (settle(r)) update_polls(r);
}

static void on_timer(uv_timer_t *t) {
  tg_relay *r = (tg_relay *)t->data;
  uint64_t now = uv_now(t->loop);
  if (r->idle_ms > 0 && now - r->last_active >= r->idle_ms) {
    finish(r, TG_OUTCOME_IDLE_TIMEOUT, "");
    return;
  }
  /* Only while upstream is quiet: an answer still flowing is work done for
   * the client, and the gateway's 408 must not land in the middle of it. */
  if (r->head_since > 0 && now - r->head_since >= r->head_ms && upstream_quiet(r)) {
    r->keep_client = true; /* done() answers 408, as the Node path does */
    finish(r, TG_OUTCOME_HEAD_TIMEOUT, "");
    return;
  }
  if (!hand_over_if_quiet(r)) return;
  (void)arm_timer(r);
}

static void finish(tg_relay *r, int outcome, const char *detail) {
  if (r->finished) return;
  r->finished = true;
  r->outcome = outcome;
  r->detail = detail;
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
  if (r->keep_client) {
    r->kept_fd = r->fd[CLIENT];
    r->fd[CLIENT] = -1;
  }
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
  if (n == 0) {
    free(r->cbuf);
    free(r->out);
    free(r);
  }
  for (int i = 0; i < n; i++) uv_close(h[i], on_handle_closed);
  return rc;
}

int tg_relay_start(tg_env *te, int client_fd, int upstream_fd, uint64_t idle_ms, bool client_eof,
                   bool upstream_eof, const tg_relay_framed *framed, tg_relay_done_fn done,
                   void *user, const char **failed) {
  tg_relay *r = calloc(1, sizeof *r);
  if (r == NULL) {
    if (framed != NULL) free(framed->out);
    *failed = "calloc";
    return -ENOMEM;
  }
  r->kept_fd = -1;
  r->status_known = framed == NULL;
  if (framed != NULL) {
    r->frame = framed->frame;
    r->out = framed->out; /* ours now, freed with r */
    r->out_len = framed->out_len;
    r->budget = framed->budget;
    if (framed->head) await_answer(r);
    r->head_ms = framed->head_ms;
    if (framed->rest_len > 0) {
      size_t cap = framed->rest_len < 4096 ? 4096 : framed->rest_len;
      if ((r->cbuf = malloc(cap)) == NULL) {
        free(r->out);
        free(r);
        *failed = "malloc";
        return -ENOMEM;
      }
      memcpy(r->cbuf, framed->rest, framed->rest_len);
      r->cbuf_len = framed->rest_len;
      r->cbuf_cap = cap;
    }
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
  if (pump(r, CLIENT) && pump(r, UPSTREAM) && settle(r)) update_polls(r);
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

static void js_relay_done(void *user, const tg_relay_end *end) {
  js_done *d = user;
  uint64_t up = end->up, down = end->down;
  napi_env env = d->te->env;
  napi_handle_scope scope;
  if (!d->te->stopping && napi_open_handle_scope(env, &scope) == napi_ok) {
    napi_value argv[4];
    if (napi_create_double(env, (double)up, &argv[0]) == napi_ok &&
        napi_create_double(env, (double)down, &argv[1]) == napi_ok &&
        napi_create_uint32(env, (uint32_t)end->outcome, &argv[2]) == napi_ok &&
        napi_create_string_latin1(env, end->detail, NAPI_AUTO_LENGTH, &argv[3]) == napi_ok)
      tg_call_js(d->te, d->cb, 4, argv);
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
    int rc = tg_relay_start(te, fd[0], fd[1], (uint64_t)idle_d, eof[0], eof[1], NULL, js_relay_done,
                            d, &what);
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
    finish(te->relays, TG_OUTCOME_ABORTED, "");
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
  while (te->relays != NULL) finish(te->relays, TG_OUTCOME_ABORTED, "");
}

napi_status tg_splice_register(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"spliceRelay", NULL, js_splice_relay, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spliceAbortAll", NULL, js_splice_abort_all, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spliceActive", NULL, js_splice_active, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
