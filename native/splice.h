/* The zero-copy relay (native/splice.c), registered from the module init in transgate.c. */
#ifndef TRANSGATE_SPLICE_H
#define TRANSGATE_SPLICE_H

#include <node_api.h>

/* Adds spliceRelay, spliceAbortAll and spliceActive to exports. */
napi_status tg_splice_register(napi_env env, napi_value exports);

#endif
