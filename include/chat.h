/* chat — what clients' requests do on their worker, and what the worker
 * does with what the broker fans out.
 *
 * Requests: joining and leaving rooms (with presence), sending (acked once
 * stored), scroll-back, typing; for text clients only sending to their one
 * room. Deliveries: every message and presence change of every room, in
 * the shared order: kept as history, appended to the room's log for its
 * members, acknowledged to its sender.
 *
 * A join is exact at the seam: the worker notes the newest id it has seen
 * (`upto`) when the membership is made. Whatever it replays (from its own
 * history, or read from Redis) stops at upto; everything after upto reaches
 * the membership through the room's log, which it follows from that moment.
 * A chatd.v1 join waits for the broker's member list (taken at some id J in
 * the order): nothing of the room is written before `joined`, and presence
 * changes up to J are not told again.
 *
 * Worker thread only.
 */
#ifndef CHATD_CHAT_H
#define CHATD_CHAT_H

#include <stddef.h>
#include <stdint.h>

#include "msg.h"

struct worker;
struct conn;
struct handoff;

/* The broker's answer to a join or a history read. The references in hist
 * pass to the callee. */
typedef struct join_answer {
    int failed;                 /* could not be had: the client may retry */
    uint64_t at_ms, at_seq;     /* the member list is as of this id */
    uint64_t epoch;             /* of the stored history; 0: the worker's */
    uint32_t count;             /* members in the room, on every node */
    const char *members;        /* a JSON array of up to presence_max names */
    size_t members_len;
    int found;                  /* HIST_SINCE: the id is kept; hist follows
                                   it. Otherwise hist holds the latest */
    int more;                   /* HIST_BEFORE: older ones are kept */
    msg **hist;                 /* oldest first */
    uint32_t nhist;
} join_answer;

int chat_init(struct worker *w);
void chat_free(struct worker *w);

/* A new connection: joins the URL's room. -1 when out of memory. */
int chat_open(struct conn *c, struct handoff *h);
/* A connection closes: leaves its rooms, forgets what it waited for. */
void chat_close(struct conn *c);
/* A complete text message from the client. Returns 0. */
int chat_on_message(struct conn *c, const uint8_t *data, size_t len);

/* A msg from the inbox (the caller's reference passes). */
void chat_deliver(struct worker *w, msg *m);
/* 0 when nobody waits for this answer any more (the connection closed, the
 * room was left): the broker may answer it failed at once. */
int chat_wait_alive(void *wait);
/* Answers from the broker, on the worker's thread. */
void chat_join_answer(struct worker *w, void *wait, join_answer *a);
void chat_history_answer(struct worker *w, void *wait, join_answer *a);

/* Publishes a join for every user this worker holds in every room (the
 * broker's record of it may have been swept). */
void chat_presence_reassert(struct worker *w);

/* The epoch as it goes on the wire: 16 hex digits. */
void chat_epoch_str(uint64_t epoch, char out[17]);

#endif
