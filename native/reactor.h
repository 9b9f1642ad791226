/* The addon's own epoll set for connection sockets (native/reactor.c). */
#ifndef TRANSGATE_REACTOR_H
#define TRANSGATE_REACTOR_H

#include <stdbool.h>
#include <stdint.h>

#include <uv.h>

#define TG_READABLE 1u
#define TG_WRITABLE 2u
/* Set with the others when the socket has a pending error (EPOLLERR). */
#define TG_ERROR 4u

typedef struct tg_watch tg_watch;
typedef void (*tg_watch_cb)(tg_watch *w, unsigned events);

/* One socket in the set. Embed it in the connection's state; that memory
 * must stay valid until the loop's next turn after tg_watch_stop (a batch of
 * events being dispatched may still name it): free it from a uv_close
 * callback, as tunnel.c and splice.c do. */
struct tg_watch {
  int fd;
  unsigned interest; /* TG_READABLE | TG_WRITABLE asked for now */
  bool added;        /* fd is in the epoll set */
  bool moved;        /* added, but the set still points at the watch it was taken from */
  tg_watch_cb cb;    /* NULL once stopped: late events are dropped */
  void *data;
  uv_poll_t *own;    /* after tg_watch_own: a uv_poll of its own instead of the set */
};

/* No syscall: the fd joins the set with the first tg_watch_set. */
void tg_watch_init(tg_watch *w, int fd, tg_watch_cb cb, void *data);

/* Waits for `interest` (0: nothing). 0, or a negative errno (ENOMEM,
 * ENOSPC: fs.epoll.max_user_watches). Errors and hang-ups are always
 * reported while the fd is in the set. */
int tg_watch_set(uv_loop_t *loop, tg_watch *w, unsigned interest);

/* Moves `from`'s place in the set to `to` (same fd, no syscall until the
 * next tg_watch_set on `to`, which must follow before the loop turns):
 * `from` gets no more events. */
void tg_watch_take(tg_watch *to, tg_watch *from, tg_watch_cb cb, void *data);

/* Moves the fd from the shared set to a uv_poll of its own, for a
 * connection that carries bulk: each wake-up through the set costs one
 * epoll_wait more than a uv_poll's, which only pays off for connections
 * that are set up and torn down often. 0 or a negative errno (the watch is
 * then unchanged). */
int tg_watch_own(uv_loop_t *loop, tg_watch *w);

/* Leaves the set, or closes the own uv_poll (before the fd is closed or given
 * away: a copy of the fd in a forked child would otherwise keep the
 * registration alive). */
void tg_watch_stop(tg_watch *w);

#endif
