/* The zero-copy relay (native/splice.c), registered from the module init in transgate.c. */
#ifndef TRANSGATE_SPLICE_H
#define TRANSGATE_SPLICE_H

#include <stdbool.h>
#include <stdint.h>

#include <node_api.h>
#include <uv.h>

#include "common.h"

/* How a relay ended, for its done callback. kept_fd is the client socket
 * when the relay let go of it rather than closing it (a framed relay handed
 * the connection over, or stopped before the first response reached the
 * client: see tg_relay_framed), with `rest` the client bytes it had read and
 * not passed on; else -1. first_status is the status of the first response
 * head from upstream (framed relays; 0 when not known). */
typedef struct tg_relay_end {
  uint64_t up, down;
  int outcome;        /* enum tg_outcome (protocol.h) */
  const char *detail; /* the errno name for the outcomes that carry one, else "" (static) */
  int kept_fd;
  const char *rest;
  size_t rest_len;
  int first_status;
  const char *
      first_head; /* the first response's head when the relay stopped for it (see peek_status), else NULL */
} tg_relay_end;

/* Called once per relay on the loop thread, after its handles are closed.
 * A kept_fd is the callee's to close. */
typedef void (*tg_relay_done_fn)(void *user, const tg_relay_end *end);

/* What a framer says about the client bytes at a boundary (see tg_relay_framed). */
typedef struct tg_frame_step {
  int action; /* enum tg_next (protocol.h) */
  char *out;  /* TG_NEXT_FORWARD: bytes to write upstream first (malloc'd; the relay frees them) */
  size_t out_len;
  size_t consumed; /* client bytes the step replaces (dropped from the buffer) */
  uint64_t budget; /* client bytes after those that pass verbatim before the next boundary */
  bool head;       /* the step forwards a request head: its response is awaited (see awaiting) */
} tg_frame_step;

/* A framer: called with the client bytes read at a boundary (eof: the
 * client has finished sending). Fills *step. */
typedef void (*tg_frame_fn)(void *user, const char *buf, size_t len, bool eof, tg_frame_step *step);

/* The client direction of a relay in frames (plain HTTP): `out` goes
 * upstream first, then `rest` (client bytes already read) and the client's
 * socket pass verbatim for `budget` bytes; at every boundary after that
 * the framer decides on what the client sent next. The upstream direction
 * stays spliced. Set before tg_relay_start's first pump: pass it there. */
typedef struct tg_relay_framed {
  tg_frame_fn frame;
  char *out; /* malloc'd; the relay owns it from the call */
  size_t out_len;
  const char *rest; /* copied */
  size_t rest_len;
  uint64_t budget;
  bool head;        /* out is a request head: the next one is not read until its answer begins */
  uint64_t head_ms; /* a partial frame must come whole within this (0: no limit) */
} tg_relay_framed;

/* Relays between two connected non-blocking stream sockets, which it then
 * owns and closes. 0, or a negative libuv error with *failed naming the call
 * (the fds are then still the caller's, and `done` is never called). `done`
 * gets the bytes carried each way and the outcome (see splice.c). */
int tg_relay_start(tg_env *te, int client_fd, int upstream_fd, uint64_t idle_ms, bool client_eof,
                   bool upstream_eof, const tg_relay_framed *framed, tg_relay_done_fn done,
                   void *user, const char **failed);

/* Calls a JS function held by `fn` from a libuv callback (inside a handle
 * scope the caller opened), as Node calls its own callbacks (nextTicks and
 * microtasks run before it returns): an exception goes to process
 * 'uncaughtException'. Returns the function's result, NULL on failure. */
napi_value tg_call_js(tg_env *te, napi_ref fn, size_t argc, const napi_value *argv);

/* native/tunnel.c: adds tunnelListen, tunnelClose, tunnelAbortAll and tunnelPending. */
napi_status tg_tunnel_register(napi_env env, napi_value exports);

/* Adds spliceRelay, spliceAbortAll and spliceActive to exports. */
napi_status tg_splice_register(napi_env env, napi_value exports);

#endif
