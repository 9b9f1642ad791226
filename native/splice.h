/* The zero-copy relay (native/splice.c), registered from the module init in transgate.c. */
#ifndef TRANSGATE_SPLICE_H
#define TRANSGATE_SPLICE_H

#include <stdbool.h>
#include <stdint.h>

#include <node_api.h>
#include <uv.h>

#include "common.h"

/* Called once per relay on the loop thread, after its handles are closed. */
typedef void (*tg_relay_done_fn)(void *user, uint64_t up, uint64_t down, const char *outcome);

/* Relays between two connected non-blocking stream sockets, which it then
 * owns and closes. 0, or a negative libuv error with *failed naming the call
 * (the fds are then still the caller's, and `done` is never called). `done`
 * gets the bytes carried each way and the outcome (see splice.c). */
int tg_relay_start(tg_env *te, int client_fd, int upstream_fd, uint64_t idle_ms, bool client_eof,
                   bool upstream_eof, tg_relay_done_fn done, void *user, const char **failed);

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
