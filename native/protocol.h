/*
 * What the addon and TypeScript say to each other about a connection, in
 * one place: src/native/index.ts mirrors these numbers (TunnelActions,
 * ABI_VERSION) and test/unit/native-protocol.test.ts reads this file to
 * check that it still does. TG_ABI_VERSION changes with any change here;
 * the TypeScript side refuses an addon built with another one (a stale
 * build/ after a pull would otherwise misread every answer).
 */
#ifndef TRANSGATE_PROTOCOL_H
#define TRANSGATE_PROTOCOL_H

#define TG_ABI_VERSION 3

/* decide()'s answer, as the first element of the array it returns. */
enum tg_action {
  TG_ACTION_CLOSE = 0,     /* [0]: close the client (JS logged it) */
  TG_ACTION_CONNECT = 1,   /* [1, ip, port, request?]: connect, send request, relay */
  TG_ACTION_TAKEN = 2,     /* [2]: JS took the client fd */
  TG_ACTION_SPECULATE = 3, /* [3, ip, port]: before the first bytes: connect meanwhile, ask again */
  TG_ACTION_READ_ON = 4,   /* null before the final call: read on (never sent as a number) */
  TG_ACTION_RESET = 5,     /* [5]: reset the client (JS logged it) */
  TG_ACTION_HTTP = 6, /* [6, ip, port, out, consumed, budget, head?]: connect, relay in frames */
};

/* next()'s answer at a boundary of a framed (HTTP) connection. */
enum tg_next {
  TG_NEXT_FORWARD = 0,  /* [0, out, consumed, budget, head?]: write out, drop consumed, pass on */
  TG_NEXT_HANDOVER = 1, /* [1]: once upstream is quiet, JS takes the client with the bytes read */
  TG_NEXT_CLOSE = 2,    /* [2]: reset the client (JS logged why) */
  TG_NEXT_READ_ON = 3,  /* null: read more before deciding (never sent as a number) */
};

#endif
