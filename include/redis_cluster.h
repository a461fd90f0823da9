/* redis_cluster — Redis Cluster and Sentinel routing, pure.
 *
 * Debian's hiredis 0.14 knows nothing of clusters, so the routing is ours:
 * key slots (CRC16 with hash tags, as the cluster spec defines them), the
 * hash tags of the shard streams, the slot map read from CLUSTER SLOTS and
 * patched by MOVED, and the replies that Sentinel and ROLE give. No
 * sockets, no logging, no state outside the caller's structs: any thread
 * may call any function here on its own data.
 */
#ifndef CHATD_REDIS_CLUSTER_H
#define CHATD_REDIS_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define CLUSTER_SLOTS 16384
#define CLUSTER_MAX_NODES 128
#define SHARDS_MAX 64
#define REDIS_MAX_SEEDS 16       /* redis_cluster, redis_sentinel addresses */

typedef struct redis_addr {
    char host[256];
    int port;
} redis_addr;

/* CRC16 as Redis Cluster uses it (XMODEM: poly 0x1021, init 0). */
uint16_t cluster_crc16(const void *buf, size_t len);
/* The slot of a key, with the hash tag rule: if the key has a '{' and a '}'
 * after it with at least one byte between, only that part is hashed. */
int cluster_keyslot(const char *key, size_t len);

/* The hash tag of shard k of n (1 <= n <= SHARDS_MAX, 0 <= k < n) into out
 * (no braces; the caller writes "<stream>:{<tag>}"). Deterministic: every
 * node computes the same. Chosen so that its slot lies in
 * [k * 16384 / n, (k + 1) * 16384 / n): the tag is "<k>-<j>" for the
 * smallest j >= 0 that lands there, so a cluster made with even slot ranges
 * (redis-cli --cluster create) gets shards spread evenly over its masters.
 * Returns the slot, or -1 if out is too small (or k, n out of bounds). */
int cluster_shard_tag(int k, int n, char *out, size_t cap);

/* The shard of a room: a stable hash of its name (FNV-1a 32-bit) mod n;
 * 0 when n < 1. */
int cluster_room_shard(const char *room, size_t len, int n);

/* Parses a redirect error, "MOVED 3999 127.0.0.1:6381" or
 * "ASK 3999 127.0.0.1:6381"; the address may be IPv6 ("::1:6381": the port
 * is after the last ':') and its host may be empty (":6381": Redis does that
 * when it does not know its own address: the caller then uses the host it
 * asked). Returns 0 and fills *ask (1 for ASK), *slot, *to (host "" when
 * empty); -1 for anything else (a different error, a bad number, a slot out
 * of range, a port outside 1..65535, a host too long). */
int cluster_redirect_parse(const char *err, int *ask, int *slot, redis_addr *to);

/* Parses "host:port, host:port, [v6]:port" (blanks or commas between, at
 * least one) into out; a missing port is default_port. Returns how many, or
 * -1 with err ("bad address 'x': ...") for an empty list, a bad port, a
 * host longer than 255 bytes, more than max entries, or an unclosed '['.
 * An IPv6 address must be in brackets ("::1:7000" is refused: is 7000 the
 * port or part of the address?), and a host may not be empty. */
int redis_addr_list_parse(const char *s, int default_port, redis_addr *out, int max,
                          char *err, size_t errlen);

/* The address as "host:port", or "[host]:port" when host has a ':', for
 * logs and error messages. */
void redis_addr_format(const redis_addr *a, char *out, size_t outlen);

/* The slot map: which master serves each slot. A zeroed struct is an empty
 * map. About 50 KB: keep it in a struct that lives long, not on a stack. */
typedef struct cluster_map {
    int nnodes;
    redis_addr node[CLUSTER_MAX_NODES]; /* masters */
    uint8_t owner[CLUSTER_SLOTS];       /* index into node + 1; 0: no master */
} cluster_map;

/* Fills m from a CLUSTER SLOTS reply (an array of [start, end, [host, port,
 * id, ...], [replica...]...]). A master whose host is "", "?" or nil is
 * `asked` (the node that answered). 0, or -1 with err for a reply that is
 * not such an array or has a range out of bounds, a bad port, too many
 * masters, ...; m is then left as it was (parse into a copy). Slots no range
 * covers stay 0. Never crashes on any redisReply shape (wrong types,
 * missing elements, NULL elements). Replicas are not read. */
int cluster_map_parse_slots(cluster_map *m, const redisReply *r, const char *asked, char *err,
                            size_t errlen);
/* The master serving slot: 0 and *out, or -1 when none. */
int cluster_map_owner(const cluster_map *m, int slot, redis_addr *out);
/* A MOVED redirect tells the new owner of one slot: record it (adding the
 * node if new). 0, or -1 if the node table is full (or slot is out of
 * range): the caller then reads CLUSTER SLOTS again, which starts afresh. */
int cluster_map_move(cluster_map *m, int slot, const redis_addr *to);
/* 1 if every slot has a master. */
int cluster_map_complete(const cluster_map *m);

/* Sentinel: the reply to SENTINEL GET-MASTER-ADDR-BY-NAME (an array of two
 * strings, host and port; nil when the name is unknown). 0 and *out, or -1. */
int sentinel_parse_master(const redisReply *r, redis_addr *out);
/* The reply to ROLE: 1 if it says "master", 0 otherwise (replica, sentinel,
 * an error, anything else). */
int redis_role_is_master(const redisReply *r);

#endif
