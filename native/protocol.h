/*
 * What the addon and TypeScript say to each other about a connection, in
 * one place: src/native/index.ts mirrors these numbers (TunnelActions,
 * NextActions, Outcomes, ABI_VERSION) and test/unit/native-protocol.test.ts
 * reads this file to check that it still does. TG_ABI_VERSION changes with any change here;
 * the TypeScript side refuses an addon built with another one (a stale
 * build/ after a pull would otherwise misread every answer).
 */
#ifndef TRANSGATE_PROTOCOL_H
#define TRANSGATE_PROTOCOL_H

#define TG_ABI_VERSION 5

/* decide()'s answer, as the first element of the array it returns. */
enum tg_action {
  TG_ACTION_CLOSE = 0,     /* [0]: close the client (JS logged it) */
  TG_ACTION_CONNECT = 1,   /* [1, ip, port, request?]: connect, send request, relay */
  TG_ACTION_TAKEN = 2,     /* [2]: JS took the client fd */
  TG_ACTION_SPECULATE = 3, /* [3, ip, port]: before the first bytes: connect meanwhile, ask again */
  TG_ACTION_READ_ON = 4,   /* null before the final call: read on (never sent as a number) */
  TG_ACTION_RESET = 5,     /* [5]: reset the client (JS logged it) */
  TG_ACTION_HTTP = 6, /* [6, ip, port, out, consumed, budget, head?]: connect, relay in frames */
  TG_ACTION_EXCHANGE =
      7, /* [7, ip, port, out]: connect, send out, then upstream() reads the answer */
  TG_ACTION_PENDING = 8, /* [8]: JS answers later, with tunnelResume(id, action) */
};

/* upstream()'s answer, while the connection to the upstream is set up: to
 * the bytes of an exchange (outcome OK), or to a failure before the relay
 * (connect, answer; ANSWER_STATUS with the answer head as the bytes). */
enum tg_up {
  TG_UP_CONTINUE = 0,    /* [0, out, consumed]: drop consumed bytes, send out, read on (exchange) */
  TG_UP_ESTABLISHED = 1, /* [1, consumed, out?]: drop consumed bytes; relay (framed: out first) */
  TG_UP_REDIAL = 2,      /* [2, ip, port, out, exchange]: a new upstream connection */
  TG_UP_FAIL = 3,        /* [3, outcome, detail, status, reason]: end with that outcome */
  TG_UP_PENDING = 4,     /* [4]: JS answers later, with tunnelResume(id, answer) */
  TG_UP_READ_ON = 5,     /* null to bytes: read more (never sent as a number) */
};

/* next()'s answer at a boundary of a framed (HTTP) connection. */
enum tg_next {
  TG_NEXT_FORWARD = 0,  /* [0, out, consumed, budget, head?]: write out, drop consumed, pass on */
  TG_NEXT_HANDOVER = 1, /* [1]: once upstream is quiet, JS takes the client with the bytes read */
  TG_NEXT_CLOSE = 2,    /* [2]: reset the client (JS logged why) */
  TG_NEXT_READ_ON = 3,  /* null: read more before deciding (never sent as a number) */
};

/* How a connection ended: done() in tunnel.c, the relay's callback in
 * splice.c. A detail string goes beside it: the errno name for the ones
 * marked (errno), else "". TypeScript turns the pair into the log's words
 * (outcomeText: "client ECONNRESET", "idle-timeout") and, for failures
 * before any answer reached the client, into an error (outbound/failures.ts). */
enum tg_outcome {
  TG_OUTCOME_OK = 0,                /* both directions ended (the relay) */
  TG_OUTCOME_HANDED_OVER = 1,       /* framed: JS takes the client fd and the bytes read */
  TG_OUTCOME_ABORTED = 2,           /* tunnelAbortAll, spliceAbortAll, teardown */
  TG_OUTCOME_IDLE_TIMEOUT = 3,      /* no bytes either way for idleMs */
  TG_OUTCOME_REFUSED = 4,           /* next() said TG_NEXT_CLOSE (JS logged why) */
  TG_OUTCOME_REJECTED = 5,          /* decide() said close (JS logged why; JS not told) */
  TG_OUTCOME_UNUSABLE = 6,          /* no original destination (unusable() told instead) */
  TG_OUTCOME_INTERNAL_ERROR = 7,    /* decide() or next() threw or answered nonsense */
  TG_OUTCOME_CONNECT = 8,           /* (errno) connect() to the proxy or destination failed */
  TG_OUTCOME_SOCKET = 9,            /* (errno) the upstream socket could not be made */
  TG_OUTCOME_CONNECT_TIMEOUT = 10,  /* connect() did not complete within connectMs */
  TG_OUTCOME_ANSWER = 11,           /* (errno) reading the proxy's answer to CONNECT */
  TG_OUTCOME_ANSWER_TIMEOUT = 12,   /* no whole answer to CONNECT within connectMs */
  TG_OUTCOME_ANSWER_CLOSED = 13,    /* the proxy closed before answering CONNECT */
  TG_OUTCOME_ANSWER_PROTOCOL = 14,  /* the answer is not HTTP */
  TG_OUTCOME_ANSWER_OVERSIZED = 15, /* the answer head is too long */
  TG_OUTCOME_ANSWER_STATUS = 16,    /* refused CONNECT, or a framed proxy error: status, reason */
  TG_OUTCOME_CLIENT_ERROR = 17,     /* (errno) the client side failed; the upstream was reset */
  TG_OUTCOME_UPSTREAM_ERROR = 18,   /* (errno) the upstream side failed; the client was reset */
  TG_OUTCOME_RELAY_ERROR = 19,      /* (errno) a local failure: pipe2 out of fds, a failed poll */
  TG_OUTCOME_HEAD_TIMEOUT = 20,    /* framed: a later request's head did not come whole in headMs */
  TG_OUTCOME_PENDING_TIMEOUT = 21, /* JS did not resume a pending answer within connectMs */
  TG_OUTCOME_HANDSHAKE = 22,       /* the upstream handshake took more rounds than allowed */
};

#endif
