/*
 * The addon's own epoll set for the sockets of connections it carries
 * (tunnel.c, splice.c), watched by a single uv_poll on Node's loop.
 *
 * A uv_poll per socket costs three syscalls to set up (libuv checks the fd
 * with an epoll ADD and DEL, then sets O_NONBLOCK again), a DEL and an ADD
 * for every change of interest and a DEL to close: about 18 epoll_ctl per
 * relayed connection, a fifth of them failing with ENOENT. Here a socket is
 * added once, changes interest with one MOD and leaves with one DEL.
 *
 * A connection that goes on to carry bulk moves to a uv_poll of its own
 * (tg_watch_own): a wake-up through the set costs one epoll_wait more.
 *
 * Level-triggered, as uv_poll is: the state machines above were written for
 * it. Dispatch is by pointer, never by fd number, so an fd closed and reused
 * within one batch cannot reach the wrong connection; the memory behind a
 * stopped watch stays valid until the loop's next turn (see reactor.h).
 * Loop-thread only, like the rest of the addon.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include "reactor.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/epoll.h>

#define BATCH 64 /* events per dispatch; more wait for the next loop turn (level-triggered) */

static int ep_fd = -1;
static uv_poll_t ep_poll;
static uint32_t ep_count; /* fds in the set: while there are any, they keep the loop alive */

static void count(int delta) {
  if (delta > 0 && ep_count++ == 0) uv_ref((uv_handle_t *)&ep_poll);
  if (delta < 0 && --ep_count == 0) uv_unref((uv_handle_t *)&ep_poll);
}

/* An event for a watch that asked for nothing (a hang-up or error while its
 * owner waits elsewhere) would repeat every turn: the fd leaves the set and
 * rejoins with the next tg_watch_set. */
static void disarm(tg_watch *w) {
  epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->fd, NULL);
  w->added = w->moved = false;
  count(-1);
}

static void dispatch(uv_poll_t *h, int status, int events) {
  (void)h, (void)status, (void)events;
  struct epoll_event ev[BATCH];
  int n;
  do n = epoll_wait(ep_fd, ev, BATCH, 0);
  while (n < 0 && errno == EINTR);
  for (int i = 0; i < n; i++) {
    tg_watch *w = ev[i].data.ptr;
    if (w->cb == NULL || !w->added) continue;
    uint32_t e = ev[i].events;
    unsigned got = 0;
    if (e & EPOLLERR) got |= TG_ERROR;
    if (e & EPOLLIN) got |= TG_READABLE;
    if (e & EPOLLOUT) got |= TG_WRITABLE;
    /* A hang-up alone: let the reads and writes asked for find out (as libuv does). */
    if (e & EPOLLHUP) got |= w->interest;
    got &= w->interest | TG_ERROR;
    if (w->interest == 0) disarm(w);
    if (got != 0) w->cb(w, got);
  }
}

static int open_set(uv_loop_t *loop) {
  if (ep_fd >= 0) return 0;
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = uv_poll_init(loop, &ep_poll, fd);
  if (rc == 0) rc = uv_poll_start(&ep_poll, UV_READABLE, dispatch);
  if (rc != 0) {
    /* An initialised handle is libuv's until closed; the set is not used then. */
    close(fd);
    return rc;
  }
  uv_unref((uv_handle_t *)&ep_poll);
  ep_fd = fd;
  return 0;
}

void tg_watch_init(tg_watch *w, int fd, tg_watch_cb cb, void *data) {
  w->own = NULL;
  w->fd = fd;
  w->interest = 0;
  w->added = w->moved = false;
  w->cb = cb;
  w->data = data;
}

static void on_own(uv_poll_t *h, int status, int events) {
  tg_watch *w = h->data;
  unsigned got = 0;
  if (status < 0) got |= TG_ERROR;
  if (events & UV_READABLE) got |= TG_READABLE;
  if (events & UV_WRITABLE) got |= TG_WRITABLE;
  if (w->cb != NULL) w->cb(w, got);
}

static int own_set(tg_watch *w, unsigned interest) {
  if (interest == w->interest) return 0;
  int rc = 0;
  if (interest == 0) uv_poll_stop(w->own);
  else rc = uv_poll_start(w->own, (interest & TG_READABLE ? UV_READABLE : 0) | (interest & TG_WRITABLE ? UV_WRITABLE : 0), on_own);
  if (rc == 0) w->interest = interest;
  return rc;
}

static void free_own(uv_handle_t *h) { free(h); }

int tg_watch_own(uv_loop_t *loop, tg_watch *w) {
  if (w->own != NULL) return 0;
  uv_poll_t *p = malloc(sizeof *p);
  if (p == NULL) return -ENOMEM;
  int rc = uv_poll_init_socket(loop, p, w->fd);
  if (rc != 0) {
    free(p);
    return rc;
  }
  p->data = w;
  unsigned interest = w->interest;
  if (w->added) {
    epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->fd, NULL);
    count(-1);
  }
  w->added = w->moved = false;
  w->own = p;
  w->interest = 0;
  rc = own_set(w, interest);
  return rc;
}

int tg_watch_set(uv_loop_t *loop, tg_watch *w, unsigned interest) {
  interest &= TG_READABLE | TG_WRITABLE;
  if (w->own != NULL) return own_set(w, interest);
  if (!w->added && interest == 0) {
    w->interest = 0;
    return 0;
  }
  if (w->added && !w->moved && interest == w->interest) return 0;
  int rc = open_set(loop);
  if (rc != 0) return rc;
  struct epoll_event ev = {.events = 0, .data.ptr = w};
  if (interest & TG_READABLE) ev.events |= EPOLLIN;
  if (interest & TG_WRITABLE) ev.events |= EPOLLOUT;
  if (epoll_ctl(ep_fd, w->added ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, w->fd, &ev) != 0) return -errno;
  if (!w->added) count(1);
  w->added = true;
  w->moved = false;
  w->interest = interest;
  return 0;
}

void tg_watch_take(tg_watch *to, tg_watch *from, tg_watch_cb cb, void *data) {
  tg_watch_init(to, from->fd, cb, data);
  to->interest = from->interest;
  to->added = to->moved = from->added;
  to->own = from->own;
  if (to->own != NULL) to->own->data = to;
  from->added = false;
  from->own = NULL;
  from->cb = NULL;
}

void tg_watch_stop(tg_watch *w) {
  if (w->own != NULL) {
    uv_close((uv_handle_t *)w->own, free_own);
    w->own = NULL;
  }
  if (w->added) {
    epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->fd, NULL);
    count(-1);
  }
  w->added = w->moved = false;
  w->cb = NULL;
}
