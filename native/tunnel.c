/*
 * The stream front end: TLS and plain TCP connections from accept to the
 * splice relay without a Node socket. Per connection:
 *
 *   accept4 -> destination (getsockname under TPROXY, SO_ORIGINAL_DST after
 *   REDIRECT) -> [TLS: read the first bytes until JS says the ClientHello is
 *   whole] -> decide (JS: sniff, no_proxy, route) -> connect -> [proxy:
 *   CONNECT request, answer head read with MSG_PEEK so that not one byte
 *   behind it is taken] -> first bytes written upstream -> tg_relay_start.
 *
 * JS runs twice per connection: decide() and done() (plus upstream() for a
 * failover or a handshake). Everything a user sees
 * (names, routes, error texts, the log line) stays in TypeScript
 * (src/relay/native-executor.ts); this file only moves the state machine
 * off Node's sockets, whose per-connection cost (two net.Sockets, promises,
 * timers) was three times redsocks' CPU per connection.
 *
 * decide(id, fd, clientIp, clientPort, dstIp, dstPort, head, final, eof)
 *   head: Buffer of the client's first bytes (TLS) or undefined (TCP).
 *   Returns null while more bytes may help (only when !final), else an array:
 *     [0]                      close the client: JS has logged why
 *     [1, ip, port, request]   connect to ip:port (an IP literal), send
 *                              `request` (the CONNECT head; undefined for a
 *                              direct connection), then relay
 *     [2]                      hand over: JS now owns fd (a net.Socket); the
 *                              bytes read so far are the `head` it was given
 *     [7, ip, port, out]       connect, send out, and show what comes back to
 *                              upstream() (a handshake: auth legs, SOCKS5)
 *     [8]                      pending: JS answers with tunnelResume(id, action)
 *                              within connectMs (a token, a lookup)
 * upstream(id, outcome, detail, bytes, eof), with a listener that has it:
 *   while the upstream connection is set up, either outcome OK with the
 *   bytes of an exchange so far (peeked: what it does not consume stays in
 *   the kernel for the relay), or a failure (connect, answer; a non-2xx
 *   answer with its head as bytes). It answers with the next leg on the same
 *   connection, "established", a redial (the next proxy: failover), a
 *   failure of its own, or pending (enum tg_up, protocol.h). At most
 *   ROUNDS_MAX legs and redials per connection.
 *   The client is not polled while JS runs, so JS may take fd at once.
 * done(id, up, down, outcome, detail, status, reason), once per connection
 *   that decide() sent on: outcome (enum tg_outcome, protocol.h) is a relay
 *   outcome (splice.c) or one of CONNECT, CONNECT_TIMEOUT, ANSWER_TIMEOUT,
 *   ANSWER_CLOSED, ANSWER, ANSWER_PROTOCOL, ANSWER_OVERSIZED, ANSWER_STATUS
 *   (status and reason set), SOCKET, UPSTREAM_ERROR, INTERNAL_ERROR,
 *   ABORTED; detail is the errno name for CONNECT, ANSWER, SOCKET and
 *   UPSTREAM_ERROR, else "".
 * unusable(clientIp, clientPort, errnoName): a connection without an
 *   original destination (REDIRECT mode), or clientIp null for an accept
 *   error (EMFILE: accepting pauses for a moment).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif

#include "common.h"
#include "protocol.h"
#include "splice.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <uv.h>

#define ACCEPT_BATCH 64 /* accepts per readable event, so one busy port cannot starve the loop */
#define ACCEPT_PAUSE_MS 100    /* after EMFILE/ENFILE */
#define ANSWER_MAX (16 * 1024) /* a CONNECT answer head larger than this is refused */
/* Buffers start small and double as needed: a ClientHello is about 0.5-2 KiB
 * and a CONNECT answer under 200 bytes, and thousands of connections may be
 * setting up at once. */
#define HEAD_FIRST 4096
#define ANSWER_FIRST 512

typedef struct tg_front {
  tg_env *te;
  uv_poll_t poll;
  uv_timer_t pause;
  int fd;
  bool sniff;     /* TLS: read the first bytes before deciding */
  bool redirect;  /* destination from SO_ORIGINAL_DST */
  bool speculate; /* ask decide() with no bytes yet, so that it may dial meanwhile */
  bool closed;
  /* SO_MARK for upstream sockets. All 32 bits are marks (a mark kept in an
   * int with -1 for none lost every mark from 0x80000000 up: the gateway's
   * own connections then went out unmarked and were intercepted again). */
  bool has_mark;
  uint32_t mark;
  bool direct_from_client; /* --direct-source client: see bind_client_source */
  uint32_t sniff_max, sniff_ms, connect_ms, idle_ms;
  uint32_t head_ms; /* framed: a later request head's deadline (0: none) */
  int refs;         /* the JS object, each initialised handle, and every live connection */
  napi_env env;
  napi_ref decide, done, unusable;
  napi_ref next_fn;     /* plain HTTP: next() at each request boundary; NULL for other ports */
  napi_ref upstream_fn; /* upstream(): exchanges and failures before the relay; NULL: none */
  struct tg_front *prev, *next; /* te->fronts while not closed */
} tg_front;

/* WAIT: JS answered "pending" and owes tunnelResume(); EXCHANGE: the
 * upstream's bytes go to upstream() until it says the handshake is done. */
enum state { SNIFF, WAIT, CONNECTING, REQUEST, ANSWER, EXCHANGE, HEAD, RELAY, DONE };

/* What a WAIT connection waits for: decide()'s answer, or upstream()'s. */
enum wait_for { WAIT_DECIDE, WAIT_UPSTREAM };

/* Handshake rounds (exchanges, redials, failovers) per connection: a proxy
 * answering 407 forever, or a JS bug, ends the connection instead of looping. */
#define ROUNDS_MAX 16

/* What upstream() is asked about: a failure, or (outcome OK) the bytes of an exchange. */
typedef struct {
  int outcome, status;
  const char *detail; /* a static string: tg_errno_name(), or "" */
  char reason[128];
} up_event;

/* The addresses of a connection as text, for decide(). */
typedef struct {
  char cip[INET6_ADDRSTRLEN], dip[INET6_ADDRSTRLEN];
  uint16_t cport, dport;
} endpoints;

typedef struct tg_conn {
  tg_front *front;
  uint32_t id;
  enum state state;
  int cfd, ufd;
  uv_poll_t *cpoll;        /* the client while sniffing; its own allocation (see close_cpoll) */
  uv_poll_t *upoll;        /* the upstream until the relay takes it; its own allocation */
  uv_timer_t timer;        /* sniff, connect and answer deadlines */
  uint64_t sniff_deadline; /* loop time by which the first bytes must have been decided on */
  bool client_eof;
  /* A connection to the proxy opened while the ClientHello is awaited
   * (decide() answered [3, ip, port]): used if the final answer names the
   * same ip and port, closed otherwise. */
  bool spec, spec_connected;
  char spec_ip[INET6_ADDRSTRLEN];
  uint32_t spec_port;
  endpoints *ep; /* while sniffing */
  char *head;    /* the client's first bytes, written upstream before relaying */
  size_t head_len, head_cap, head_off;
  char *req; /* the CONNECT request (NULL for a direct connection), or an HTTP request head */
  size_t req_len, req_off;
  /* [6, ...]: a plain HTTP connection relayed in frames (tg_relay_framed):
   * req is the first request head as rewritten, head[consumed..] what of
   * the client's bytes comes after it, budget how many of those pass verbatim. */
  bool framed;
  size_t consumed;
  uint64_t budget;
  bool await_answer; /* [6, ..., true]: req is a request head (tg_relay_framed.head) */
  char *answer; /* the CONNECT answer head so far; in an exchange, the bytes upstream() has seen */
  size_t answer_len, answer_cap;
  /* An exchange ([7], or a redial with exchange true): the upstream's bytes
   * are shown to upstream() (peeked: what it does not consume stays in the
   * kernel for the relay); answer[0..answer_len) was taken from the socket
   * already, `peeked` more were shown on top of it. */
  bool exchange;
  size_t peeked;
  enum wait_for wait;
  up_event pending; /* WAIT_UPSTREAM: what upstream() was asked */
  uint32_t rounds;
  int refs; /* the machine, the timer, a JS call in progress, the relay */
  struct tg_conn *prev, *next;
} tg_conn;

/* The live connections and the listeners are per environment: te->conns, te->fronts. */

static void front_release(tg_front *f) {
  if (--f->refs > 0) return;
  napi_delete_reference(f->env, f->decide);
  napi_delete_reference(f->env, f->done);
  napi_delete_reference(f->env, f->unusable);
  if (f->next_fn) napi_delete_reference(f->env, f->next_fn);
  if (f->upstream_fn) napi_delete_reference(f->env, f->upstream_fn);
  free(f);
}

static void front_handle_closed(uv_handle_t *h) {
  tg_front *f = h->data;
  tg_env *te = f->te;
  front_release(f);
  tg_handle_closed(te);
}

static void conn_release(tg_conn *c) {
  if (--c->refs > 0) return;
  tg_front *f = c->front;
  free(c->ep);
  free(c->head);
  free(c->req);
  free(c->answer);
  free(c);
  front_release(f);
}

static void conn_handle_closed(uv_handle_t *h) {
  tg_conn *c = h->data;
  tg_env *te = c->front->te;
  conn_release(c);
  tg_handle_closed(te);
}

/* For cpoll and upoll, whose data is the environment once they close: the
 * connection may be freed before their close callbacks run. */
static void free_handle(uv_handle_t *h) {
  tg_env *te = h->data;
  free(h);
  tg_handle_closed(te);
}

static void set_linger0(int fd) {
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

/* uv_close stops the poll at once (epoll_ctl DEL inside), so the fd can
 * be closed or given to another handle right after. */
static void close_cpoll(tg_conn *c) {
  if (c->cpoll == NULL) return;
  c->cpoll->data = c->front->te;
  uv_close((uv_handle_t *)c->cpoll, free_handle);
  c->cpoll = NULL;
}

static void close_upoll(tg_conn *c) {
  if (c->upoll == NULL) return;
  c->upoll->data = c->front->te;
  uv_close((uv_handle_t *)c->upoll, free_handle);
  c->upoll = NULL;
}

static void unlink_conn(tg_conn *c) {
  tg_env *te = c->front->te;
  if (c->prev)
    c->prev->next = c->next;
  else
    te->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  c->prev = c->next = NULL;
  te->conn_count--;
}

/* done(id, up, down, outcome, detail, status, reason, fd, rest) in JS. fd >= 0 is
 * a client socket JS now owns (a plain HTTP connection that ends before a
 * response reached it gets the gateway's own answer; a handed-over one goes
 * to the Node path), rest the client bytes read and not yet passed on. */
static void tell_done_fd(tg_conn *c, uint64_t up, uint64_t down, int outcome, const char *detail,
                         int status, const char *reason, int fd, const char *rest,
                         size_t rest_len) {
  napi_env env = c->front->env;
  napi_handle_scope scope;
  if (c->front->te->stopping || napi_open_handle_scope(env, &scope) != napi_ok) {
    if (fd >= 0) close(fd);
    return;
  }
  napi_value argv[9];
  void *data;
  bool ok =
      napi_create_uint32(env, c->id, &argv[0]) == napi_ok &&
      napi_create_double(env, (double)up, &argv[1]) == napi_ok &&
      napi_create_double(env, (double)down, &argv[2]) == napi_ok &&
      napi_create_uint32(env, (uint32_t)outcome, &argv[3]) == napi_ok &&
      napi_create_string_latin1(env, detail, NAPI_AUTO_LENGTH, &argv[4]) == napi_ok &&
      napi_create_uint32(env, (uint32_t)status, &argv[5]) == napi_ok &&
      napi_create_string_latin1(env, reason ? reason : "", NAPI_AUTO_LENGTH, &argv[6]) == napi_ok &&
      napi_create_int32(env, fd, &argv[7]) == napi_ok &&
      (rest_len > 0 ? napi_create_buffer_copy(env, rest_len, rest, &data, &argv[8])
                    : napi_get_undefined(env, &argv[8])) == napi_ok;
  if (ok)
    tg_call_js(c->front->te, c->front->done, 9, argv);
  else if (fd >= 0)
    close(fd);
  napi_close_handle_scope(env, scope);
}

/* unusable(clientIp | null, clientPort, errnoName) in JS. */
static void tell_unusable(tg_front *f, const char *cip, uint16_t cport, int err) {
  napi_handle_scope scope;
  if (f->te->stopping || napi_open_handle_scope(f->env, &scope) != napi_ok) return;
  napi_value argv[3];
  napi_status st = cip != NULL ? napi_create_string_latin1(f->env, cip, NAPI_AUTO_LENGTH, &argv[0])
                               : napi_get_null(f->env, &argv[0]);
  if (st == napi_ok && napi_create_uint32(f->env, cport, &argv[1]) == napi_ok &&
      napi_create_string_utf8(f->env, tg_errno_name(err), NAPI_AUTO_LENGTH, &argv[2]) == napi_ok)
    tg_call_js(f->te, f->unusable, 3, argv);
  napi_close_handle_scope(f->env, scope);
}

/* Ends a connection before the relay: handles closed, sockets closed (the
 * client with a reset, as the Node path did: its destination failed), and
 * JS told once. `tell` is false for connections JS closed or took itself. */
static void conn_end(tg_conn *c, int outcome, const char *detail, int status, const char *reason,
                     bool tell, bool close_client) {
  if (c->state == DONE) return;
  c->state = DONE;
  unlink_conn(c);
  close_cpoll(c);
  close_upoll(c);
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  if (c->ufd >= 0) close(c->ufd);
  /* A plain HTTP client whose request could not be carried gets the gateway's own answer from
   * JS; one ended by a shutdown (tunnelAbortAll) is reset like any other. */
  int kept = -1;
  if (close_client && tell && c->framed && c->cfd >= 0 && outcome != TG_OUTCOME_ABORTED) {
    kept = c->cfd;
  } else if (close_client && c->cfd >= 0) {
    set_linger0(c->cfd);
    close(c->cfd);
  }
  c->cfd = c->ufd = -1;
  if (tell) tell_done_fd(c, c->head_off, 0, outcome, detail, status, reason, kept, NULL, 0);
  conn_release(c); /* the machine's own reference */
}

static void conn_fail_errno(tg_conn *c, int outcome, int err) {
  conn_end(c, outcome, tg_errno_name(err), 0, NULL, true, true);
}

/* ---- relay ------------------------------------------------------------------ */

static void relay_done(void *user, const tg_relay_end *end) {
  tg_conn *c = user;
  tell_done_fd(c, c->head_off + end->up, end->down, end->outcome, end->detail, end->first_status,
               end->first_head, end->kept_fd, end->rest, end->rest_len);
  conn_release(c);
}

static void frame_next(void *user, const char *buf, size_t len, bool eof, tg_frame_step *step);

static void start_relay(tg_conn *c) {
  const char *failed;
  c->state = RELAY;
  unlink_conn(c);
  /* The relay polls both fds with handles of its own: ours go first. */
  close_cpoll(c);
  close_upoll(c);
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  free(c->ep), c->ep = NULL;
  tg_relay_framed framed = {.frame = frame_next,
                            .budget = c->budget,
                            .head = c->await_answer,
                            .head_ms = c->front->head_ms};
  if (c->framed) {
    framed.out = c->req; /* the relay's from the call */
    framed.out_len = c->req_len;
    framed.rest = c->head + c->consumed;
    framed.rest_len = c->head_len - c->consumed;
    c->req = NULL;
  }
  c->refs++; /* the relay's, released by relay_done */
  int rc = tg_relay_start(c->front->te, c->cfd, c->ufd, c->front->idle_ms, c->client_eof, false,
                          c->framed ? &framed : NULL, relay_done, c, &failed);
  free(c->head), c->head = NULL;
  free(c->req), c->req = NULL;
  free(c->answer), c->answer = NULL;
  if (rc != 0) {
    set_linger0(c->cfd);
    close(c->cfd);
    close(c->ufd);
    c->state = DONE;
    tg_relay_end end = {
        .outcome = TG_OUTCOME_RELAY_ERROR, .detail = tg_errno_name(-rc), .kept_fd = -1};
    relay_done(c, &end);
  }
  c->cfd = c->ufd = -1; /* the relay's now, or closed */
  conn_release(c);      /* the machine's reference */
}

/* ---- upstream ---------------------------------------------------------------- */

static void on_upstream(uv_poll_t *h, int status, int events);
static void on_timeout(uv_timer_t *t);
static void drop_spec(tg_conn *c);
static void up_failed(tg_conn *c, int outcome, const char *detail, int status, const char *reason);
static void read_exchange(tg_conn *c);
static void up_failed_errno(tg_conn *c, int outcome, int err) {
  up_failed(c, outcome, tg_errno_name(err), 0, NULL);
}

static bool upoll_want(tg_conn *c, int events) {
  int rc = uv_poll_start(c->upoll, events, on_upstream);
  if (rc != 0) {
    conn_fail_errno(c, TG_OUTCOME_SOCKET, -rc);
    return false;
  }
  return true;
}

/* (Re)arms the connection's one deadline; a failure ends the connection. */
static bool timer_want(tg_conn *c, uint64_t ms) {
  int rc = uv_timer_start(&c->timer, on_timeout, ms, 0);
  if (rc != 0) {
    conn_fail_errno(c, TG_OUTCOME_SOCKET, -rc);
    return false;
  }
  return true;
}

/* Writes buf[*off..len) to fd. True when all of it is out; false with
 * errno EAGAIN when the socket is full, or another errno on failure. */
static bool write_some(int fd, const char *buf, size_t len, size_t *off) {
  while (*off < len) {
    ssize_t n = send(fd, buf + *off, len - *off, MSG_NOSIGNAL);
    if (n > 0) {
      *off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) errno = EPIPE;
    return false;
  }
  return true;
}

/* The sniffed bytes go upstream, then the relay starts. */
static void send_head(tg_conn *c) {
  c->state = HEAD;
  if (c->head_len > 0 && !write_some(c->ufd, c->head, c->head_len, &c->head_off)) {
    if (errno == EAGAIN) {
      if (timer_want(c, c->front->connect_ms)) upoll_want(c, UV_WRITABLE);
      return;
    }
    conn_fail_errno(c, TG_OUTCOME_UPSTREAM_ERROR, errno);
    return;
  }
  start_relay(c);
}

static void send_request(tg_conn *c) {
  c->state = REQUEST;
  if (!write_some(c->ufd, c->req, c->req_len, &c->req_off)) {
    if (errno == EAGAIN)
      upoll_want(c, UV_WRITABLE);
    else
      up_failed_errno(c, TG_OUTCOME_ANSWER, errno);
    return;
  }
  c->state = c->exchange ? EXCHANGE : ANSWER;
  upoll_want(c, UV_READABLE);
}

/* "HTTP/1.1 200 Connection established": the status, or -1. */
static int status_of(const char *line, size_t len, const char **reason, size_t *reason_len) {
  if (len < 12 || memcmp(line, "HTTP/", 5) != 0 || line[5] < '0' || line[5] > '9' ||
      line[6] != '.' || line[7] < '0' || line[7] > '9' || line[8] != ' ')
    return -1;
  int status = 0;
  for (int i = 9; i < 12; i++) {
    if (line[i] < '0' || line[i] > '9') return -1;
    status = status * 10 + (line[i] - '0');
  }
  if (len > 12 && line[12] != ' ') return -1;
  *reason = len > 13 ? line + 13 : line + len;
  *reason_len = len > 13 ? len - 13 : 0;
  return status;
}

/* Room for more bytes in a buffer that doubles up to max; false when out of memory. */
static bool grow(char **buf, size_t len, size_t *cap, size_t first, size_t max) {
  if (len < *cap) return true;
  size_t want = *cap == 0 ? first : *cap * 2;
  if (want > max) want = max;
  char *p = realloc(*buf, want);
  if (p == NULL) return false;
  *buf = p;
  *cap = want;
  return true;
}

/* Peeks what the upstream sent after answer[0..answer_len): the count
 * (0 at its end), or -1 when there is nothing yet or c was ended. */
static ssize_t peek_upstream(tg_conn *c) {
  if (!grow(&c->answer, c->answer_len, &c->answer_cap, ANSWER_FIRST, ANSWER_MAX)) {
    conn_fail_errno(c, TG_OUTCOME_SOCKET, ENOMEM);
    return -1;
  }
  ssize_t n;
  do n = recv(c->ufd, c->answer + c->answer_len, c->answer_cap - c->answer_len, MSG_PEEK);
  while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN) up_failed_errno(c, TG_OUTCOME_ANSWER, errno);
  return n;
}

/* Reads the proxy's answer. MSG_PEEK first, then only the head is taken
 * from the socket: what the server sends right behind the 200 (an SSH
 * greeting) stays in the kernel for the relay. */
static void read_answer(tg_conn *c) {
  ssize_t n = peek_upstream(c);
  if (n < 0) return;
  if (n == 0) {
    up_failed(c, TG_OUTCOME_ANSWER_CLOSED, "", 0, NULL);
    return;
  }
  size_t have = c->answer_len + (size_t)n;
  size_t from = c->answer_len > 3 ? c->answer_len - 3 : 0;
  size_t end = 0;
  for (size_t i = from; i + 4 <= have; i++) {
    if (memcmp(c->answer + i, "\r\n\r\n", 4) == 0) {
      end = i + 4;
      break;
    }
  }
  /* Take the peeked bytes: all of them, or up to the end of the head. */
  size_t take = end > 0 ? end - c->answer_len : (size_t)n;
  char sink[ANSWER_MAX];
  ssize_t got;
  do got = recv(c->ufd, sink, take, 0);
  while (got < 0 && errno == EINTR);
  if (got != (ssize_t)take) {
    up_failed_errno(c, TG_OUTCOME_ANSWER, got < 0 ? errno : EIO);
    return;
  }
  c->answer_len += take;
  if (end == 0) {
    if (c->answer_len >= ANSWER_MAX) up_failed(c, TG_OUTCOME_ANSWER_OVERSIZED, "", 0, NULL);
    return; /* more to come; the poll stays */
  }
  (void)uv_timer_stop(&c->timer);
  const char *eol = memchr(c->answer, '\r', c->answer_len);
  size_t line_len = (size_t)(eol - c->answer);
  const char *reason;
  size_t reason_len;
  int status = status_of(c->answer, line_len, &reason, &reason_len);
  if (status < 0) {
    up_failed(c, TG_OUTCOME_ANSWER_PROTOCOL, "", 0, NULL);
    return;
  }
  if (status < 200 || status > 299) {
    char text[128];
    size_t l = reason_len < sizeof text - 1 ? reason_len : sizeof text - 1;
    memcpy(text, reason, l);
    text[l] = 0;
    up_failed(c, TG_OUTCOME_ANSWER_STATUS, "", status, text); /* upstream() sees the head */
    return;
  }
  send_head(c); /* the relay's own polls replace upoll, or upoll waits for POLLOUT */
}

static void drop_spec(tg_conn *c) {
  close_upoll(c);
  if (c->ufd >= 0) close(c->ufd);
  c->ufd = -1;
  c->spec = c->spec_connected = false;
}

/* A connected speculative connection is no longer polled: the proxy may
 * have closed it meanwhile (its idle timeout). Then it is dialled anew. */
static bool spec_alive(tg_conn *c) {
  char b;
  ssize_t n = recv(c->ufd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* The upstream connection is up: the CONNECT request goes out, or for a
 * direct connection the client's first bytes. */
static void upstream_connected(tg_conn *c) {
  (void)uv_timer_stop(&c->timer);
  if (c->framed && !c->exchange) {
    start_relay(c); /* the relay writes the request head, then frames the rest */
  } else if (c->req != NULL) {
    /* One deadline for the whole answer, as for the connect. */
    if (timer_want(c, c->front->connect_ms)) send_request(c);
  } else {
    send_head(c);
  }
}

/* The speculative connection finished connecting while the client is still read. */
static void spec_connected(tg_conn *c, int status) {
  if (tg_socket_error(c->ufd, status) != 0) {
    drop_spec(c);
    return;
  }
  c->spec_connected = true;
  (void)uv_poll_stop(c->upoll); /* writable from now on: nothing to wait for until the request */
}

static void on_upstream(uv_poll_t *h, int status, int events) {
  tg_conn *c = h->data;
  if (c->state == DONE) return;
  if (c->state == SNIFF) {
    spec_connected(c, status);
    return;
  }
  if (status < 0 && c->state != CONNECTING) {
    if (c->state == HEAD)
      conn_fail_errno(c, TG_OUTCOME_UPSTREAM_ERROR, tg_socket_error(c->ufd, status));
    else
      up_failed_errno(c, TG_OUTCOME_ANSWER, tg_socket_error(c->ufd, status));
    return;
  }
  switch (c->state) {
  case CONNECTING: {
    int err = tg_socket_error(c->ufd, status);
    if (err != 0)
      up_failed_errno(c, TG_OUTCOME_CONNECT, err);
    else
      upstream_connected(c);
    return;
  }
  case REQUEST:
    if (events & UV_WRITABLE) send_request(c);
    return;
  case ANSWER:
    if (events & UV_READABLE) read_answer(c);
    return;
  case EXCHANGE:
    if (events & UV_READABLE) read_exchange(c);
    return;
  case HEAD:
    if (events & UV_WRITABLE) send_head(c);
    return;
  default:
    return;
  }
}

/* --direct-source client: a direct connection leaves from the client's own
 * address, so that the server sees (and logs) who is really connecting.
 * IP_TRANSPARENT lets the socket bind an address that is not this host's;
 * port 0 with IP_BIND_ADDRESS_NO_PORT leaves the port to connect(). A client
 * of another family than the target (none, for a direct connection to the
 * client's own destination) keeps the gateway's address. 0 or an errno. */
static int bind_client_source(tg_conn *c, int fd, int family) {
  struct sockaddr_storage peer, src;
  socklen_t len = sizeof peer;
  char ip[INET6_ADDRSTRLEN];
  uint16_t port;
  if (getpeername(c->cfd, (struct sockaddr *)&peer, &len) != 0) return errno;
  /* Text and back: a v4-mapped client of a dual-stack listener becomes plain IPv4. */
  if (tg_format_addr(&peer, ip, &port) == 0 || !tg_sockaddr(ip, 0, &src, &len)) return EAFNOSUPPORT;
  if (src.ss_family != family) return 0;
  int one = 1;
  if ((family == AF_INET6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
                          : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one)) != 0)
    return errno;
#ifdef IP_BIND_ADDRESS_NO_PORT
  (void)setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one); /* a saving only */
#endif
  return bind(fd, (struct sockaddr *)&src, len) == 0 ? 0 : errno;
}

/* Opens the upstream connection to ip:port; `speculative` while the
 * client is still being read (no deadline of its own then). */
static void dial(tg_conn *c, const char *ip, uint32_t port, bool speculative) {
  struct sockaddr_storage ss;
  socklen_t len;
  if (!tg_sockaddr(ip, (uint16_t)port, &ss, &len)) {
    if (speculative) return; /* nothing to open early; the final answer is checked again */
    conn_fail_errno(c, TG_OUTCOME_SOCKET, EINVAL);
    return;
  }
  int err = 0;
  int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = errno;
    goto fail;
  }
  c->ufd = fd;
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    err = errno;
    goto fail;
  }
  /* Before connect: the mark must be on the SYN so netfilter skips it. */
  if (c->front->has_mark && tg_set_mark(fd, c->front->mark) != 0) {
    err = errno;
    goto fail;
  }
  /* Only direct connections (no CONNECT request; plain HTTP: to the original destination itself);
   * a speculative one goes to the proxy. */
  bool direct = c->framed ? c->ep != NULL && port == c->ep->dport && strcmp(ip, c->ep->dip) == 0
                          : c->req == NULL;
  if (!speculative && direct && c->front->direct_from_client &&
      (err = bind_client_source(c, fd, ss.ss_family)) != 0)
    goto fail;
  if ((c->upoll = malloc(sizeof *c->upoll)) == NULL) {
    err = ENOMEM;
    goto fail;
  }
  int rc = tg_poll_init(c->front->te, c->upoll, fd);
  if (rc != 0) {
    free(c->upoll);
    c->upoll = NULL;
    err = -rc;
    goto fail;
  }
  c->upoll->data = c;
  if (speculative) {
    c->spec = true;
    snprintf(c->spec_ip, sizeof c->spec_ip, "%s", ip);
    c->spec_port = port;
  } else {
    c->state = CONNECTING;
  }
  if (connect(fd, (struct sockaddr *)&ss, len) != 0 && errno != EINPROGRESS) {
    if (speculative) {
      /* Dialled again, and reported, once the connection is decided. */
      drop_spec(c);
      return;
    }
    up_failed_errno(c, TG_OUTCOME_CONNECT, errno);
    return;
  }
  if (!speculative && !timer_want(c, c->front->connect_ms)) return;
  upoll_want(c, UV_WRITABLE);
  return;

fail:
  if (speculative)
    drop_spec(c); /* dialled again, and reported, once the connection is decided */
  else
    conn_fail_errno(c, TG_OUTCOME_SOCKET, err);
}

/* ---- client ----------------------------------------------------------------- */

static void on_client(uv_poll_t *h, int status, int events);

/* Reads decide()'s answer: 0, 1 (ip, port and *req filled), 2, 3 (ip and
 * port filled: dial meanwhile, read on), 4 (read on), 5 (reset), or -1 for nonsense. */
/* A latin1 string element of an array as malloc'd bytes. */
static bool get_bytes(napi_env env, napi_value array, uint32_t i, char **out, size_t *len) {
  napi_value v;
  napi_valuetype t;
  size_t l = 0;
  if (napi_get_element(env, array, i, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok ||
      t != napi_string || napi_get_value_string_latin1(env, v, NULL, 0, &l) != napi_ok ||
      (*out = malloc(l + 1)) == NULL)
    return false;
  if (napi_get_value_string_latin1(env, v, *out, l + 1, len) != napi_ok) {
    free(*out);
    *out = NULL;
    return false;
  }
  return true;
}

/* A whole number in [0, max] at array[i]. */
static bool get_count(napi_env env, napi_value array, uint32_t i, double max, double *out) {
  napi_value v;
  return napi_get_element(env, array, i, &v) == napi_ok &&
         napi_get_value_double(env, v, out) == napi_ok && *out >= 0 && *out <= max &&
         *out == (double)(uint64_t)*out;
}

static int parse_action(tg_conn *c, napi_env env, napi_value result, bool final, char *ip,
                        size_t ip_size, uint32_t *port, char **req, size_t *req_len) {
  napi_valuetype t;
  bool is_array = false;
  napi_value v;
  double d;
  size_t l = 0;
  if (napi_typeof(env, result, &t) != napi_ok) return -1;
  if (t == napi_null || t == napi_undefined) return final ? -1 : TG_ACTION_READ_ON;
  if (napi_is_array(env, result, &is_array) != napi_ok || !is_array) return -1;
  if (napi_get_element(env, result, 0, &v) != napi_ok ||
      napi_get_value_double(env, v, &d) != napi_ok)
    return -1;
  if (!(d >= TG_ACTION_CLOSE && d <= TG_ACTION_PENDING) || d != (int)d || d == TG_ACTION_READ_ON)
    return -1;
  int action = (int)d;
  if (action == TG_ACTION_CLOSE || action == TG_ACTION_TAKEN || action == TG_ACTION_RESET)
    return action;
  /* Pending: only once nothing more is read (the client is not polled while JS owes the answer). */
  if (action == TG_ACTION_PENDING) return final ? action : -1;
  if (action == TG_ACTION_HTTP && c->front->next_fn == NULL) return -1;
  if (action == TG_ACTION_EXCHANGE && c->front->upstream_fn == NULL) return -1;
  if (action != TG_ACTION_CONNECT && action != TG_ACTION_HTTP && action != TG_ACTION_EXCHANGE &&
      !(action == TG_ACTION_SPECULATE && !final))
    return -1;
  if (napi_get_element(env, result, 1, &v) != napi_ok ||
      napi_get_value_string_latin1(env, v, ip, ip_size, &l) != napi_ok || l == 0 ||
      l >= ip_size - 1 || napi_get_element(env, result, 2, &v) != napi_ok ||
      napi_get_value_uint32(env, v, port) != napi_ok || *port == 0 || *port > 65535)
    return -1;
  if (action == TG_ACTION_SPECULATE) return TG_ACTION_SPECULATE;
  if (action == TG_ACTION_HTTP) {
    double consumed, budget;
    if (!get_count(env, result, 4, (double)c->head_len, &consumed) ||
        !get_count(env, result, 5, 9007199254740991.0, &budget) ||
        !get_bytes(env, result, 3, req, req_len))
      return -1;
    c->consumed = (size_t)consumed;
    c->budget = (uint64_t)budget;
    napi_value h;
    bool is_head = false;
    if (napi_get_element(env, result, 6, &h) == napi_ok &&
        napi_get_value_bool(env, h, &is_head) == napi_ok)
      c->await_answer = is_head;
    /* [..., true]: out is a handshake's first leg; upstream() gives the request head to relay. */
    bool exchange = false;
    if (napi_get_element(env, result, 7, &h) == napi_ok &&
        napi_get_value_bool(env, h, &exchange) == napi_ok && exchange &&
        c->front->upstream_fn == NULL)
      return -1;
    c->exchange = exchange;
    return TG_ACTION_HTTP;
  }
  if (napi_get_element(env, result, 3, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok)
    return -1;
  if (t != napi_string) return t == napi_undefined && action == TG_ACTION_CONNECT ? action : -1;
  if (!get_bytes(env, result, 3, req, req_len)) return -1;
  return action;
}

/* next(id, bytes, eof) in JS at a request boundary of a plain HTTP connection. */
static void frame_next(void *user, const char *buf, size_t len, bool eof, tg_frame_step *step) {
  tg_conn *c = user;
  tg_front *f = c->front;
  napi_env env = f->env;
  napi_handle_scope scope;
  step->action = -1;
  if (f->te->stopping || napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value argv[3], result = NULL, v;
  void *data;
  if (napi_create_uint32(env, c->id, &argv[0]) == napi_ok &&
      napi_create_buffer_copy(env, len, len ? buf : "", &data, &argv[1]) == napi_ok &&
      napi_get_boolean(env, eof, &argv[2]) == napi_ok)
    result = tg_call_js(f->te, f->next_fn, 3, argv);
  napi_valuetype t;
  bool is_array = false;
  double d, consumed, budget;
  if (result == NULL || napi_typeof(env, result, &t) != napi_ok) goto out;
  if (t == napi_null || t == napi_undefined) {
    step->action = TG_NEXT_READ_ON;
    goto out;
  }
  if (napi_is_array(env, result, &is_array) != napi_ok || !is_array ||
      napi_get_element(env, result, 0, &v) != napi_ok ||
      napi_get_value_double(env, v, &d) != napi_ok)
    goto out;
  if (d == TG_NEXT_HANDOVER || d == TG_NEXT_CLOSE) {
    step->action = (int)d;
  } else if (d == TG_NEXT_FORWARD && get_count(env, result, 2, (double)len, &consumed) &&
             get_count(env, result, 3, 9007199254740991.0, &budget) &&
             get_bytes(env, result, 1, &step->out, &step->out_len)) {
    step->action = TG_NEXT_FORWARD;
    step->consumed = (size_t)consumed;
    step->budget = (uint64_t)budget;
    /* [0, out, consumed, budget, true]: out is a request head (its answer is awaited). */
    napi_value h;
    bool is_head = false;
    if (napi_get_element(env, result, 4, &h) == napi_ok &&
        napi_get_value_bool(env, h, &is_head) == napi_ok)
      step->head = is_head;
  }
out:
  napi_close_handle_scope(env, scope);
}

/* ---- upstream(): exchanges and failures before the relay ------------------- */

/* What upstream() answered, read out of its array while the handle scope is open. */
typedef struct {
  int action; /* enum tg_up, or -1 for nonsense */
  char ip[INET6_ADDRSTRLEN + 1];
  uint32_t port;
  char *out; /* malloc'd, or NULL */
  size_t out_len;
  size_t consumed;
  bool exchange;
  int outcome, status;
  char detail[64], reason[128];
} up_answer;

/* A latin1 string element into a fixed buffer ("" when absent). */
static bool get_text(napi_env env, napi_value array, uint32_t i, char *buf, size_t size) {
  napi_value v;
  napi_valuetype t;
  size_t l = 0;
  buf[0] = 0;
  if (napi_get_element(env, array, i, &v) != napi_ok || napi_typeof(env, v, &t) != napi_ok)
    return false;
  if (t == napi_undefined) return true;
  return t == napi_string && napi_get_value_string_latin1(env, v, buf, size, &l) == napi_ok;
}

/* `shown`: how many bytes upstream() was given (consumed may not pass them). */
static void parse_up(napi_env env, napi_value result, size_t shown, up_answer *a) {
  napi_valuetype t;
  bool is_array = false;
  napi_value v;
  double d, n;
  a->action = -1;
  if (result == NULL || napi_typeof(env, result, &t) != napi_ok) return;
  if (t == napi_null || t == napi_undefined) {
    a->action = TG_UP_READ_ON;
    return;
  }
  if (napi_is_array(env, result, &is_array) != napi_ok || !is_array ||
      napi_get_element(env, result, 0, &v) != napi_ok ||
      napi_get_value_double(env, v, &d) != napi_ok || d != (int)d)
    return;
  switch ((int)d) {
  case TG_UP_CONTINUE:
    if (!get_bytes(env, result, 1, &a->out, &a->out_len) ||
        !get_count(env, result, 2, (double)shown, &n))
      return;
    a->consumed = (size_t)n;
    break;
  case TG_UP_ESTABLISHED: {
    if (!get_count(env, result, 1, (double)shown, &n)) return;
    a->consumed = (size_t)n;
    napi_value o;
    if (napi_get_element(env, result, 2, &o) != napi_ok || napi_typeof(env, o, &t) != napi_ok)
      return;
    if (t == napi_string && !get_bytes(env, result, 2, &a->out, &a->out_len)) return;
    break;
  }
  case TG_UP_REDIAL: {
    size_t l = 0;
    napi_value b;
    if (napi_get_element(env, result, 1, &v) != napi_ok ||
        napi_get_value_string_latin1(env, v, a->ip, sizeof a->ip, &l) != napi_ok || l == 0 ||
        l >= sizeof a->ip - 1 || napi_get_element(env, result, 2, &v) != napi_ok ||
        napi_get_value_uint32(env, v, &a->port) != napi_ok || a->port == 0 || a->port > 65535 ||
        !get_bytes(env, result, 3, &a->out, &a->out_len) ||
        napi_get_element(env, result, 4, &b) != napi_ok ||
        napi_get_value_bool(env, b, &a->exchange) != napi_ok)
      return;
    break;
  }
  case TG_UP_FAIL:
    if (!get_count(env, result, 1, TG_OUTCOME_HANDSHAKE, &n) || n == TG_OUTCOME_OK) return;
    a->outcome = (int)n;
    if (!get_text(env, result, 2, a->detail, sizeof a->detail) ||
        !get_count(env, result, 3, 999, &n) ||
        !get_text(env, result, 4, a->reason, sizeof a->reason))
      return;
    a->status = (int)n;
    break;
  case TG_UP_PENDING:
    break;
  default:
    return;
  }
  a->action = (int)d;
}

/* upstream(id, outcome, detail, bytes, eof): outcome OK with the bytes of an
 * exchange so far, or a failure (ANSWER_STATUS with the answer head). */
static void call_upstream(tg_conn *c, int outcome, const char *detail, const char *bytes,
                          size_t len, bool eof, up_answer *a) {
  tg_front *f = c->front;
  napi_env env = f->env;
  napi_handle_scope scope;
  a->action = -1;
  if (f->te->stopping || napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value argv[5], result = NULL;
  void *data;
  if (napi_create_uint32(env, c->id, &argv[0]) == napi_ok &&
      napi_create_uint32(env, (uint32_t)outcome, &argv[1]) == napi_ok &&
      napi_create_string_latin1(env, detail, NAPI_AUTO_LENGTH, &argv[2]) == napi_ok &&
      napi_create_buffer_copy(env, len, len ? bytes : "", &data, &argv[3]) == napi_ok &&
      napi_get_boolean(env, eof, &argv[4]) == napi_ok)
    result = tg_call_js(f->te, f->upstream_fn, 5, argv);
  if (c->state != DONE) parse_up(env, result, len, a);
  napi_close_handle_scope(env, scope);
}

/* Takes `n` bytes the exchange has consumed from the socket (they were peeked). */
static bool take(tg_conn *c, size_t n) {
  char sink[ANSWER_MAX];
  while (n > 0) {
    ssize_t got = recv(c->ufd, sink, n < sizeof sink ? n : sizeof sink, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      up_failed_errno(c, TG_OUTCOME_ANSWER, got < 0 ? errno : EIO);
      return false;
    }
    n -= (size_t)got;
  }
  return true;
}

static void act_up(tg_conn *c, up_answer *a, const up_event *ev);

/* Whether upstream() is shown bytes for `ev` (those of the exchange, or the refusing answer's head), and how many. */
static bool shows_bytes(const up_event *ev) {
  return ev->outcome == TG_OUTCOME_OK || ev->outcome == TG_OUTCOME_ANSWER_STATUS;
}
static size_t shown_for(const tg_conn *c, const up_event *ev) {
  return shows_bytes(ev) ? c->answer_len + c->peeked : 0;
}

/* Calls upstream() and acts on its answer. `ev` is the failure (or OK for the
 * bytes answer[0 .. answer_len + peeked)). */
static void ask_upstream(tg_conn *c, const up_event *ev, bool eof) {
  up_answer a = {0};
  c->refs++; /* JS may end this connection (tunnelAbortAll) while it runs */
  call_upstream(c, ev->outcome, ev->detail, c->answer, shown_for(c, ev), eof, &a);
  if (c->state == DONE) {
    free(a.out);
    conn_release(c);
    return;
  }
  c->refs--;
  act_up(c, &a, ev);
}

/* Closes the upstream connection, for a redial. */
static void drop_upstream(tg_conn *c) {
  close_upoll(c);
  if (c->ufd >= 0) close(c->ufd);
  c->ufd = -1;
  c->answer_len = c->peeked = 0;
}

static void act_up(tg_conn *c, up_answer *a, const up_event *ev) {
  bool bytes = shows_bytes(ev);
  switch (a->action) {
  case TG_UP_READ_ON:
    if (ev->outcome != TG_OUTCOME_OK) {
      conn_end(c, ev->outcome, ev->detail, ev->status, ev->reason, true, true);
      return;
    }
    if (c->peeked == 0) { /* end of stream (or nothing new): nothing more will come */
      conn_end(c, TG_OUTCOME_ANSWER_CLOSED, "", 0, NULL, true, true);
      return;
    }
    /* The peeked bytes are part of what JS waits to see whole: taken, so that the poll rests. */
    if (!take(c, c->peeked)) return;
    c->answer_len += c->peeked;
    c->peeked = 0;
    if (c->answer_len >= ANSWER_MAX) {
      conn_end(c, TG_OUTCOME_ANSWER_OVERSIZED, "", 0, NULL, true, true);
      return;
    }
    c->state = EXCHANGE;
    upoll_want(c, UV_READABLE);
    return;
  case TG_UP_CONTINUE:
  case TG_UP_ESTABLISHED:
    /* What JS saw whole was taken already: it may not give part of it back. */
    if (!bytes || a->consumed < c->answer_len ||
        (a->action == TG_UP_ESTABLISHED && c->framed && a->out == NULL))
      break;
    if (!take(c, a->consumed - c->answer_len)) {
      free(a->out);
      return;
    }
    c->answer_len = c->peeked = 0;
    if (a->action == TG_UP_ESTABLISHED) {
      (void)uv_timer_stop(&c->timer);
      if (c->framed) {
        free(c->req);
        c->req = a->out, c->req_len = a->out_len;
        start_relay(c); /* the relay writes the request head, then frames the rest */
      } else {
        free(a->out);
        send_head(c);
      }
      return;
    }
    if (++c->rounds > ROUNDS_MAX) break;
    c->exchange = true;
    free(c->req);
    c->req = a->out, c->req_len = a->out_len, c->req_off = 0;
    if (timer_want(c, c->front->connect_ms)) send_request(c); /* each leg its own deadline */
    return;
  case TG_UP_REDIAL:
    if (++c->rounds > ROUNDS_MAX) break;
    drop_upstream(c);
    free(c->req);
    c->req = a->out, c->req_len = a->out_len, c->req_off = 0;
    c->exchange = a->exchange;
    (void)uv_timer_stop(&c->timer);
    dial(c, a->ip, a->port, false);
    return;
  case TG_UP_FAIL:
    conn_end(c, a->outcome, a->detail, a->status, a->reason, true, true);
    return;
  case TG_UP_PENDING:
    c->state = WAIT;
    c->wait = WAIT_UPSTREAM;
    c->pending = *ev; /* its detail is a static string (tg_errno_name, or "") */
    if (c->upoll != NULL) (void)uv_poll_stop(c->upoll);
    timer_want(c, c->front->connect_ms); /* or c is ended */
    return;
  default:
    break;
  }
  free(a->out);
  /* Too many rounds, or nonsense (a bug on the JS side): the client gets a reset. */
  conn_end(c, c->rounds > ROUNDS_MAX ? TG_OUTCOME_HANDSHAKE : TG_OUTCOME_INTERNAL_ERROR, "", 0,
           NULL, true, true);
}

/* Reads in an exchange: the new bytes are peeked and shown to upstream() with
 * those it has seen, so that nothing behind the handshake is taken. */
static void read_exchange(tg_conn *c) {
  ssize_t n = peek_upstream(c);
  if (n < 0) return;
  c->peeked = (size_t)n;
  up_event ev = {.outcome = TG_OUTCOME_OK, .detail = ""};
  ask_upstream(c, &ev, n == 0);
}

/* A failure while the upstream connection is set up: upstream() may answer it
 * with another way (the next proxy, a new connection for the next handshake
 * leg) before the connection ends with it. */
static void up_failed(tg_conn *c, int outcome, const char *detail, int status, const char *reason) {
  if (c->front->upstream_fn == NULL) {
    conn_end(c, outcome, detail, status, reason, true, true);
    return;
  }
  up_event ev = {.outcome = outcome, .status = status, .detail = detail};
  snprintf(ev.reason, sizeof ev.reason, "%s", reason ? reason : "");
  if (outcome != TG_OUTCOME_ANSWER_STATUS) c->answer_len = c->peeked = 0;
  ask_upstream(c, &ev, false);
}

/* Polls the client for (more of) its first bytes until the sniff deadline.
 * 0, or the errno that kept it from watching (the caller ends c). */
static int watch_client(tg_conn *c) {
  if ((c->cpoll = malloc(sizeof *c->cpoll)) == NULL) return ENOMEM;
  int rc = tg_poll_init(c->front->te, c->cpoll, c->cfd);
  if (rc != 0) {
    free(c->cpoll);
    c->cpoll = NULL;
    return -rc;
  }
  c->cpoll->data = c;
  if ((rc = uv_poll_start(c->cpoll, UV_READABLE, on_client)) != 0) {
    close_cpoll(c);
    return -rc;
  }
  /* One deadline for all the first bytes, not one per chunk: a client
   * dripping a byte at a time is decided on when it runs out. */
  uint64_t now = uv_now(c->timer.loop);
  rc = uv_timer_start(&c->timer, on_timeout, c->sniff_deadline > now ? c->sniff_deadline - now : 0,
                      0);
  if (rc != 0) {
    close_cpoll(c);
    return -rc;
  }
  return 0;
}

static void act(tg_conn *c, int action, const char *ip, uint32_t port);

/* Calls decide() and acts on its answer. */
static void decide(tg_conn *c, const char *cip, uint16_t cport, const char *dip, uint16_t dport,
                   bool final) {
  tg_front *f = c->front;
  napi_env env = f->env;
  /* No poll on the client while JS runs: it may take the fd. */
  close_cpoll(c);
  (void)uv_timer_stop(&c->timer);
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) {
    conn_fail_errno(c, TG_OUTCOME_SOCKET, ENOMEM);
    return;
  }
  napi_value argv[9], result = NULL;
  bool ok = napi_create_uint32(env, c->id, &argv[0]) == napi_ok &&
            napi_create_int32(env, c->cfd, &argv[1]) == napi_ok &&
            napi_create_string_latin1(env, cip, NAPI_AUTO_LENGTH, &argv[2]) == napi_ok &&
            napi_create_uint32(env, cport, &argv[3]) == napi_ok &&
            napi_create_string_latin1(env, dip, NAPI_AUTO_LENGTH, &argv[4]) == napi_ok &&
            napi_create_uint32(env, dport, &argv[5]) == napi_ok &&
            napi_get_boolean(env, final, &argv[7]) == napi_ok &&
            napi_get_boolean(env, c->client_eof, &argv[8]) == napi_ok;
  if (ok) {
    if (f->sniff) {
      void *data;
      ok = napi_create_buffer_copy(env, c->head_len, c->head_len ? c->head : "", &data, &argv[6]) ==
           napi_ok;
    } else {
      ok = napi_get_undefined(env, &argv[6]) == napi_ok;
    }
  }
  c->refs++; /* JS may end this connection (tunnelAbortAll) while it runs */
  if (ok) result = tg_call_js(f->te, f->decide, 9, argv);
  int action = -1;
  char ip[INET6_ADDRSTRLEN + 1];
  uint32_t port = 0;
  if (c->state != DONE && result != NULL) {
    action = parse_action(c, env, result, final, ip, sizeof ip, &port, &c->req, &c->req_len);
  }
  napi_close_handle_scope(env, scope);
  if (c->state == DONE) {
    conn_release(c);
    return;
  }
  c->refs--;
  act(c, action, ip, port);
}

/* Acts on decide()'s answer (or on the one tunnelResume() brings). */
static void act(tg_conn *c, int action, const char *ip, uint32_t port) {
  if (action == TG_ACTION_SPECULATE && !c->spec) {
    dial(c, ip, port, true);
    if (c->state == DONE) return;
  }
  if (action == TG_ACTION_SPECULATE || action == TG_ACTION_READ_ON) {
    /* The ClientHello is not whole yet: read on. */
    int err = watch_client(c);
    if (err != 0) conn_fail_errno(c, TG_OUTCOME_SOCKET, err);
    return;
  }
  switch (action) {
  case TG_ACTION_CLOSE: /* closed by JS's decision; logged there */
    close(c->cfd);
    c->cfd = -1;
    conn_end(c, TG_OUTCOME_REJECTED, "", 0, NULL, false, false);
    return;
  case TG_ACTION_RESET: /* refused by JS (logged there): a reset, so that the client stops at once */
    conn_end(c, TG_OUTCOME_REFUSED, "", 0, NULL, false, true);
    return;
  case TG_ACTION_TAKEN: /* JS took the fd */
    c->cfd = -1;
    conn_end(c, TG_OUTCOME_HANDED_OVER, "", 0, NULL, false, false);
    return;
  case TG_ACTION_PENDING:
    /* JS looks something up (a token, a name): tunnelResume() brings the answer. The
     * speculative connection, if any, stays for it. */
    c->state = WAIT;
    c->wait = WAIT_DECIDE;
    timer_want(c, c->front->connect_ms); /* or c is ended */
    return;
  case TG_ACTION_HTTP:
    c->framed = true;
    if (c->spec) drop_spec(c);
    dial(c, ip, port, false);
    return;
  case TG_ACTION_EXCHANGE:
  case TG_ACTION_CONNECT:
    c->exchange = action == TG_ACTION_EXCHANGE;
    if (c->spec && c->spec_connected && !spec_alive(c)) drop_spec(c);
    if (c->spec && strcmp(ip, c->spec_ip) == 0 && port == c->spec_port) {
      /* The connection opened meanwhile goes there already. */
      c->spec = false;
      if (c->spec_connected) {
        upstream_connected(c);
      } else {
        c->state = CONNECTING;
        timer_want(c, c->front->connect_ms); /* or c is ended */
      }
      return;
    }
    if (c->spec) drop_spec(c);
    dial(c, ip, port, false);
    return;
  default: {
    /* A decide() that threw or answered nonsense: a bug, reported through
     * 'uncaughtException' above or here; the client gets a reset. */
    conn_end(c, TG_OUTCOME_INTERNAL_ERROR, "", 0, NULL, true, true);
    return;
  }
  }
}

static bool endpoints_of(tg_conn *c, const struct sockaddr_storage *peer, endpoints *e) {
  struct sockaddr_storage local;
  socklen_t len = sizeof local;
  if (c->front->redirect) {
    const char *failed;
    if (tg_original_dst(c->cfd, &local, &failed) != 0) return false;
  } else if (getsockname(c->cfd, (struct sockaddr *)&local, &len) != 0) {
    return false;
  }
  return tg_format_addr(peer, e->cip, &e->cport) != 0 &&
         tg_format_addr(&local, e->dip, &e->dport) != 0;
}

static void decide_now(tg_conn *c, bool final) {
  decide(c, c->ep->cip, c->ep->cport, c->ep->dip, c->ep->dport, final);
}

/* Reads what the client sent so far and decides when that is enough.
 * False when nothing was there yet (EAGAIN). */
static bool read_client(tg_conn *c) {
  if (!grow(&c->head, c->head_len, &c->head_cap, HEAD_FIRST, c->front->sniff_max)) {
    conn_fail_errno(c, TG_OUTCOME_SOCKET, ENOMEM);
    return true;
  }
  ssize_t n;
  do n = recv(c->cfd, c->head + c->head_len, c->head_cap - c->head_len, 0);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN) return false;
    c->client_eof = true;
    decide_now(c, true);
    return true;
  }
  if (n == 0) c->client_eof = true;
  size_t before = c->head_len;
  c->head_len += (size_t)n;
  bool final = c->client_eof || c->head_len >= c->front->sniff_max;
  /* An HTTP head ends with a LF: until one comes decide() would say read on,
   * and a head sent a byte at a time would cost a call into JS per byte (as
   * in the framed relay, splice.c). The sniff deadline still decides. */
  if (!final && before > 0 && c->front->next_fn != NULL &&
      memchr(c->head + before, '\n', (size_t)n) == NULL)
    return true;
  decide_now(c, final);
  return true;
}

static void on_client(uv_poll_t *h, int status, int events) {
  tg_conn *c = h->data;
  (void)events;
  if (c->state != SNIFF) return;
  if (status < 0) {
    c->client_eof = true; /* a reset: decide() hears of an empty, closed client */
    decide_now(c, true);
    return;
  }
  read_client(c);
}

static void on_timeout(uv_timer_t *t) {
  tg_conn *c = t->data;
  switch (c->state) {
  case SNIFF:
    /* A client that waits for the server to speak first: decide without a name. */
    decide_now(c, true);
    return;
  case WAIT:
    conn_end(c, TG_OUTCOME_PENDING_TIMEOUT, "", 0, NULL, true, true);
    return;
  case CONNECTING:
    up_failed(c, TG_OUTCOME_CONNECT_TIMEOUT, "", 0, NULL);
    return;
  case REQUEST:
  case ANSWER:
  case EXCHANGE:
    up_failed(c, TG_OUTCOME_ANSWER_TIMEOUT, "", 0, NULL);
    return;
  case HEAD:
    conn_end(c, TG_OUTCOME_UPSTREAM_ERROR, tg_errno_name(ETIMEDOUT), 0, NULL, true, true);
    return;
  default:
    return;
  }
}

/* A connection that could not even be set up: reset, and said as an accept
 * error (JS does not know it yet; unusable(null, 0, errno) is logged, rate-limited). */
static void refuse_accepted(tg_front *f, int fd, int err) {
  set_linger0(fd);
  close(fd);
  tell_unusable(f, NULL, 0, err);
}

static void start_conn(tg_front *f, int fd, const struct sockaddr_storage *peer) {
  tg_env *te = f->te;
  tg_conn *c = calloc(1, sizeof *c);
  if (c == NULL) {
    refuse_accepted(f, fd, ENOMEM);
    return;
  }
  int rc = tg_timer_init(te, &c->timer);
  if (rc != 0) {
    free(c);
    refuse_accepted(f, fd, -rc);
    return;
  }
  c->front = f;
  f->refs++;
  c->id = ++te->next_conn_id;
  c->cfd = fd;
  c->ufd = -1;
  c->refs = 2; /* the machine and the timer */
  c->state = SNIFF;
  c->sniff_deadline = uv_now(te->loop) + f->sniff_ms;
  c->timer.data = c;
  c->next = te->conns;
  if (te->conns) te->conns->prev = c;
  te->conns = c;
  te->conn_count++;
  /* From here on every failure ends c through conn_end. */
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
    int err = errno;
    conn_end(c, TG_OUTCOME_UNUSABLE, "", 0, NULL, false, true);
    tell_unusable(f, NULL, 0, err); /* f is still held by c's timer */
    return;
  }

  endpoints e;
  if (!endpoints_of(c, peer, &e)) {
    int err = errno;
    char cip[INET6_ADDRSTRLEN];
    uint16_t cport = 0;
    if (tg_format_addr(peer, cip, &cport) != 0) tell_unusable(f, cip, cport, err);
    conn_end(c, TG_OUTCOME_UNUSABLE, "", 0, NULL, false, true);
    return;
  }
  if (!f->sniff) {
    decide(c, e.cip, e.cport, e.dip, e.dport, true);
    return;
  }
  if ((c->ep = malloc(sizeof *c->ep)) == NULL) {
    conn_end(c, TG_OUTCOME_UNUSABLE, "", 0, NULL, false, true);
    tell_unusable(f, NULL, 0, ENOMEM);
    return;
  }
  *c->ep = e;
  /* The ClientHello often arrives with the handshake's last ACK: then no
   * poll (and no loop turn) is needed for it. */
  if (read_client(c)) return;
  if (f->speculate) {
    /* decide() may open the proxy connection while the ClientHello is on its way. */
    decide(c, e.cip, e.cport, e.dip, e.dport, false);
    return;
  }
  int err = watch_client(c);
  if (err != 0) {
    conn_end(c, TG_OUTCOME_UNUSABLE, "", 0, NULL, false, true);
    tell_unusable(f, NULL, 0, err);
  }
}

/* ---- listener ---------------------------------------------------------------- */

static void on_accept(uv_poll_t *h, int status, int events);

/* Stops accepting for good: tunnelClose, teardown, or a listener that can
 * neither poll nor pause. The listening fd is closed unless it is still
 * the caller's (close_fd false: tunnelListen failed). */
static void front_stop(tg_front *f, bool close_fd) {
  if (f->closed) return;
  f->closed = true;
  if (f->prev)
    f->prev->next = f->next;
  else
    f->te->fronts = f->next;
  if (f->next) f->next->prev = f->prev;
  f->prev = f->next = NULL;
  uv_close((uv_handle_t *)&f->poll, front_handle_closed);
  uv_close((uv_handle_t *)&f->pause, front_handle_closed);
  if (close_fd) close(f->fd);
  f->fd = -1;
}

static void accept_failed(tg_front *f, int err);

static void on_pause_end(uv_timer_t *t) {
  tg_front *f = t->data;
  if (f->closed) return;
  int rc = uv_poll_start(&f->poll, UV_READABLE, on_accept);
  if (rc != 0) accept_failed(f, -rc); /* said, and tried again after a pause */
}

/* EMFILE and the like. Level-triggered: polling on would spin. Pause, say so, retry. */
static void accept_failed(tg_front *f, int err) {
  (void)uv_poll_stop(&f->poll);
  int rc = uv_timer_start(&f->pause, on_pause_end, ACCEPT_PAUSE_MS, 0);
  tell_unusable(f, NULL, 0, err);
  if (rc != 0) {
    /* Nothing would ever poll again: the listener ends, and says why. */
    tell_unusable(f, NULL, 0, -rc);
    front_stop(f, true);
  }
}

static void on_accept(uv_poll_t *h, int status, int events) {
  tg_front *f = h->data;
  (void)events;
  if (f->closed) return;
  if (status < 0) {
    accept_failed(f, -status);
    return;
  }
  for (int i = 0; i < ACCEPT_BATCH && !f->closed; i++) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    int fd = accept4(f->fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      start_conn(f, fd, &peer);
      continue;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) accept_failed(f, errno);
    return;
  }
}

static void front_finalize(napi_env env, void *data, void *hint) {
  (void)env, (void)hint;
  front_release(data);
}

/* Tells tunnelListen handles apart from other externals (udpListen's). */
static const napi_type_tag FRONT_TAG = {0x7472616e73676174ULL, 0x652074756e6e656cULL};

static bool get_fn(napi_env env, napi_value v, const char *name, napi_ref *out) {
  napi_valuetype t;
  char msg[64];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_function) {
    snprintf(msg, sizeof msg, "%s must be a function", name);
    tg_throw_arg(env, msg);
    return false;
  }
  return napi_create_reference(env, v, 1, out) == napi_ok;
}

/* tunnelListen(fd, sniff, redirect, mark | undefined, sniffMaxBytes, sniffMs, connectMs, idleMs,
 *              decide, done, unusable, speculate, next | undefined, directFromClient, headMs,
 *              upstream | undefined)
 *   -> handle */
static napi_value js_tunnel_listen(napi_env env, napi_callback_info info) {
  napi_value argv[16];
  napi_valuetype t;
  int fd;
  bool sniff, redirect, speculate, has_mark, direct_from_client;
  double mark = 0, sniff_max, sniff_ms, connect_ms, idle_ms, head_ms;
  if (!tg_get_args(env, info, 16, argv) || !tg_get_fd(env, argv[0], &fd) ||
      !tg_get_bool(env, argv[11], "speculate", &speculate) ||
      !tg_get_bool(env, argv[13], "directFromClient", &direct_from_client) ||
      !tg_get_bool(env, argv[1], "sniff", &sniff) ||
      !tg_get_bool(env, argv[2], "redirect", &redirect))
    return NULL;
  if (napi_typeof(env, argv[3], &t) != napi_ok)
    return tg_throw_arg(env, "mark must be an integer or undefined");
  has_mark = t != napi_undefined;
  if ((has_mark && !tg_get_int(env, argv[3], "mark", 0, UINT32_MAX, &mark)) ||
      !tg_get_int(env, argv[4], "sniffMaxBytes", 1, 1 << 20, &sniff_max) ||
      !tg_get_int(env, argv[5], "sniffMs", 1, 2147483647.0, &sniff_ms) ||
      !tg_get_int(env, argv[6], "connectMs", 1, 2147483647.0, &connect_ms) ||
      !tg_get_int(env, argv[7], "idleMs", 0, 2147483647.0, &idle_ms) ||
      !tg_get_int(env, argv[14], "headMs", 0, 2147483647.0, &head_ms))
    return NULL;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  tg_front *f = calloc(1, sizeof *f);
  if (f == NULL) return tg_throw_errno(env, "calloc", ENOMEM);
  f->te = te;
  f->env = env;
  napi_valuetype next_t, up_t;
  bool fns = get_fn(env, argv[8], "decide", &f->decide) && get_fn(env, argv[9], "done", &f->done) &&
             get_fn(env, argv[10], "unusable", &f->unusable) &&
             napi_typeof(env, argv[12], &next_t) == napi_ok &&
             (next_t == napi_undefined || get_fn(env, argv[12], "next", &f->next_fn)) &&
             napi_typeof(env, argv[15], &up_t) == napi_ok &&
             (up_t == napi_undefined || get_fn(env, argv[15], "upstream", &f->upstream_fn));
  if (!fns) {
    if (f->decide) napi_delete_reference(env, f->decide);
    if (f->done) napi_delete_reference(env, f->done);
    if (f->unusable) napi_delete_reference(env, f->unusable);
    if (f->next_fn) napi_delete_reference(env, f->next_fn);
    bool pending = false;
    if (napi_is_exception_pending(env, &pending) != napi_ok || !pending)
      tg_throw_arg(env, "next and upstream must be functions or undefined");
    free(f);
    return NULL;
  }
  f->fd = fd;
  f->sniff = sniff;
  f->redirect = redirect;
  f->speculate = sniff && speculate;
  f->has_mark = has_mark;
  f->mark = (uint32_t)mark;
  f->direct_from_client = direct_from_client;
  f->sniff_max = (uint32_t)sniff_max;
  f->sniff_ms = (uint32_t)sniff_ms;
  f->connect_ms = (uint32_t)connect_ms;
  f->idle_ms = (uint32_t)idle_ms;
  f->head_ms = (uint32_t)head_ms;
  /* One reference: this function's own, until the JS handle exists (or not). */
  f->refs = 1;
  int rc = tg_poll_init(te, &f->poll, fd);
  if (rc != 0) {
    front_release(f);
    return tg_throw_errno(env, "uv_poll_init_socket", -rc);
  }
  f->poll.data = f;
  f->refs++; /* the poll handle's */
  rc = tg_timer_init(te, &f->pause);
  if (rc != 0) {
    /* The poll handle is libuv's until its close callback: f goes with it. */
    f->closed = true;
    uv_close((uv_handle_t *)&f->poll, front_handle_closed);
    front_release(f);
    return tg_throw_errno(env, "uv_timer_init", -rc);
  }
  f->pause.data = f;
  f->refs++; /* the pause timer's */
  f->next = te->fronts;
  if (te->fronts) te->fronts->prev = f;
  te->fronts = f;
  napi_value handle;
  const char *failed = "napi_create_external";
  if (napi_create_external(env, f, front_finalize, NULL, &handle) == napi_ok) {
    /* Ours becomes the JS object's: released by front_finalize. */
    if (napi_type_tag_object(env, handle, &FRONT_TAG) != napi_ok) {
      failed = "napi_type_tag_object";
      rc = -ENOMEM;
    } else if ((rc = uv_poll_start(&f->poll, UV_READABLE, on_accept)) == 0) {
      return handle;
    } else {
      failed = "uv_poll_start";
    }
  } else {
    front_release(f); /* no JS object holds f */
    rc = -ENOMEM;
  }
  /* The fd stays the caller's, as for any failed tunnelListen. */
  front_stop(f, false);
  return tg_throw_errno(env, failed, -rc);
}

/* tunnelClose(handle): stops accepting and closes the listening fd. Live connections go on. */
static napi_value js_tunnel_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  napi_valuetype t;
  bool tagged = false;
  void *data = NULL;
  if (!tg_get_args(env, info, 1, argv)) return NULL;
  if (napi_typeof(env, argv[0], &t) != napi_ok || t != napi_external ||
      napi_check_object_type_tag(env, argv[0], &FRONT_TAG, &tagged) != napi_ok || !tagged ||
      napi_get_value_external(env, argv[0], &data) != napi_ok || data == NULL)
    return tg_throw_arg(env, "handle must come from tunnelListen");
  front_stop(data, true);
  napi_value undef;
  napi_get_undefined(env, &undef);
  return undef;
}

/* tunnelAbortAll() -> how many connections (not yet relaying) were ended; each gets done(ABORTED). */
static napi_value js_tunnel_abort_all(napi_env env, napi_callback_info info) {
  (void)info;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  uint32_t n = 0;
  while (te->conns != NULL) {
    conn_end(te->conns, TG_OUTCOME_ABORTED, "", 0, NULL, true, true);
    n++;
  }
  return tg_u32(env, n);
}

/* tunnelResume(id, answer) -> true when connection id was waiting for it (decide()'s or
 * upstream()'s "pending"), false when it is gone (ended meanwhile: a timeout, the client). */
static napi_value js_tunnel_resume(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double id;
  if (!tg_get_args(env, info, 2, argv) || !tg_get_int(env, argv[0], "id", 0, UINT32_MAX, &id))
    return NULL;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  tg_conn *c = te->conns;
  /* Only connections being set up are listed: a short walk. */
  while (c != NULL && c->id != (uint32_t)id) c = c->next;
  napi_value yes;
  if (c == NULL || c->state != WAIT) {
    napi_get_boolean(env, false, &yes);
    return yes;
  }
  (void)uv_timer_stop(&c->timer);
  c->refs++; /* acting may end it */
  if (c->wait == WAIT_DECIDE) {
    char ip[INET6_ADDRSTRLEN + 1];
    uint32_t port = 0;
    int action = parse_action(c, env, argv[1], true, ip, sizeof ip, &port, &c->req, &c->req_len);
    if (action == TG_ACTION_PENDING) action = -1; /* pending twice: nonsense */
    act(c, action, ip, port);
  } else {
    up_answer a = {0};
    up_event ev = c->pending;
    parse_up(env, argv[1], shown_for(c, &ev), &a);
    if (a.action == TG_UP_PENDING) a.action = -1;
    act_up(c, &a, &ev);
  }
  conn_release(c);
  napi_get_boolean(env, true, &yes);
  return yes;
}

/* tunnelPending() -> connections of this environment not yet relaying. */
static napi_value js_tunnel_pending(napi_env env, napi_callback_info info) {
  (void)info;
  tg_env *te = tg_env_of(env);
  if (te == NULL) return NULL;
  return tg_u32(env, te->conn_count);
}

void tg_tunnel_teardown(tg_env *te) {
  while (te->conns != NULL) conn_end(te->conns, TG_OUTCOME_ABORTED, "", 0, NULL, false, true);
  while (te->fronts != NULL) front_stop(te->fronts, true);
}

napi_status tg_tunnel_register(napi_env env, napi_value exports) {
  const napi_property_descriptor props[] = {
      {"tunnelListen", NULL, js_tunnel_listen, NULL, NULL, NULL, napi_enumerable, NULL},
      {"tunnelClose", NULL, js_tunnel_close, NULL, NULL, NULL, napi_enumerable, NULL},
      {"tunnelAbortAll", NULL, js_tunnel_abort_all, NULL, NULL, NULL, napi_enumerable, NULL},
      {"tunnelPending", NULL, js_tunnel_pending, NULL, NULL, NULL, napi_enumerable, NULL},
      {"tunnelResume", NULL, js_tunnel_resume, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  return napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
