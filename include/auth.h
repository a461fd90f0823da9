/* auth — verification of the HS256 JSON Web Token a client presents as
 * ?token= when auth_secret is set (RFC 7519, RFC 7515 compact form), pure.
 *
 * No sockets, no logging, no clock: the caller passes the time. Used by the
 * handshake in the acceptor thread; any thread may call it.
 */
#ifndef CHATD_AUTH_H
#define CHATD_AUTH_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define AUTH_TOKEN_MAX 4096 /* longest token accepted, in bytes */

/* Checks token[0..len) against secret[0..secret_len) at time now:
 *   three base64url parts (no padding, canonical), header.payload.signature;
 *   header a JSON object with "alg": "HS256" exactly ("typ" is not looked
 *   at; a "crit" header is refused: we understand no extension);
 *   signature HMAC-SHA256(secret, header "." payload) over the exact bytes
 *   received, compared in constant time;
 *   payload a JSON object whose "sub" is a string, the user name, and whose
 *   "exp" is a number > now; "nbf", if present, a number <= now. No leeway:
 *   a token is refused from its exp second on.
 * The user name follows the rules of ?username=: 1 to user_cap - 1 bytes of
 * UTF-8 without control characters (nothing below U+0020, no U+007F).
 * Duplicate keys in either JSON object are refused.
 *
 * Returns 0 and writes the NUL-terminated name into user_out, or -1 with
 * *why set to a short static reason (user_out is then the empty string). */
int auth_verify(const char *secret, size_t secret_len, const char *token, size_t len, time_t now,
                char *user_out, size_t user_cap, const char **why);

#define AUTH_ROOMS_MAX 2048 /* bytes of a token's rooms claim, as kept */

/* The rooms a token's holder may join: the claim "rooms", a list of room
 * names (1..256 bytes of UTF-8 without control characters), a trailing
 * '*' matching any rest. Kept NUL-separated, ending with an empty one. */
typedef struct auth_rooms {
    int present;                /* 0: no claim, any room */
    char list[AUTH_ROOMS_MAX];
} auth_rooms;

/* auth_verify that also reads the rooms claim into *rooms (not a list of
 * valid names, or longer than AUTH_ROOMS_MAX: the token is refused). */
int auth_verify_rooms(const char *secret, size_t secret_len, const char *token, size_t len,
                      time_t now, char *user_out, size_t user_cap, auth_rooms *rooms,
                      const char **why);

/* auth_verify_rooms that also gives the token's exp as *exp (when not
 * NULL): the first whole second at which the token is refused. */
int auth_verify_exp(const char *secret, size_t secret_len, const char *token, size_t len,
                    time_t now, char *user_out, size_t user_cap, auth_rooms *rooms, int64_t *exp,
                    const char **why);

/* auth_verify_exp with two NUL-terminated secrets, for rotating keys: a
 * token signed with either is accepted (previous: NULL or "" for none).
 * A refusal names the reason of the secret that signed the token. */
int auth_verify_either(const char *secret, const char *previous, const char *token, size_t len,
                       time_t now, char *user_out, size_t user_cap, auth_rooms *rooms,
                       int64_t *exp, const char **why);

/* 1 if a rooms claim's list (auth_rooms.list; NULL: no claim) lets its
 * holder into room[0..len). */
int auth_rooms_allow(const char *list, const char *room, size_t len);

#endif
