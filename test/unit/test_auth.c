/* Unit tests for auth: HS256 JSON Web Tokens, built here with OpenSSL's
 * HMAC and checked at a fixed time. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth.h"

#define SECRET "s3cret"
#define NOW ((time_t)1700000000)
#define USER_CAP 33 /* names of up to 32 bytes */

#define HS256 "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

/* base64url of p[0..n) without padding into out. */
static void b64url(const void *p, size_t n, char *out) {
    static unsigned char tmp[8192];
    assert_true(n < sizeof tmp / 4 * 3 - 3);
    int len = EVP_EncodeBlock(tmp, p, (int)n);
    int o = 0;
    for (int i = 0; i < len && tmp[i] != '='; i++)
        out[o++] = tmp[i] == '+' ? '-' : tmp[i] == '/' ? '_' : (char)tmp[i];
    out[o] = '\0';
}

static void b64url_str(const char *s, char *out) { b64url(s, strlen(s), out); }

/* Appends the signature over out[0..strlen) with secret, after a dot. */
static void sign(char *out, size_t cap, const char *secret) {
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int mac_len = 0;
    assert_non_null(HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)out,
                         strlen(out), mac, &mac_len));
    assert_int_equal(mac_len, 32);
    size_t n = strlen(out);
    assert_true(n + 2 + 43 < cap);
    out[n] = '.';
    b64url(mac, mac_len, out + n + 1);
}

/* header.payload.signature of the two JSON texts, signed with secret. */
static const char *token_with(const char *header, const char *payload, const char *secret) {
    static char buf[16384];
    b64url_str(header, buf);
    size_t n = strlen(buf);
    buf[n] = '.';
    b64url_str(payload, buf + n + 1);
    sign(buf, sizeof buf, secret);
    return buf;
}

static const char *token(const char *payload) { return token_with(HS256, payload, SECRET); }

static int verify_at(const char *tok, time_t now, char *user, const char **why) {
    *why = NULL;
    strcpy(user, "garbage");
    int rc = auth_verify(SECRET, strlen(SECRET), tok, strlen(tok), now, user, USER_CAP, why);
    if (rc == 0)
        assert_null(*why);
    return rc;
}

static void assert_ok(const char *tok, const char *want_user) {
    char user[USER_CAP];
    const char *why;
    int rc = verify_at(tok, NOW, user, &why);
    if (rc != 0)
        fail_msg("refused %s: %s", tok, why);
    assert_string_equal(user, want_user);
}

/* Refused with a reason containing want; user_out left empty. */
static void assert_refused(const char *tok, const char *want) {
    char user[USER_CAP];
    const char *why;
    assert_int_equal(verify_at(tok, NOW, user, &why), -1);
    assert_non_null(why);
    if (!strstr(why, want))
        fail_msg("%s: reason \"%s\", expected \"%s\"", tok, why, want);
    assert_string_equal(user, "");
}

#define PAYLOAD(sub_json, rest) "{\"sub\":" sub_json ",\"exp\":1700000060" rest "}"

static void test_valid(void **state) {
    (void)state;
    assert_ok(token(PAYLOAD("\"alice\"", "")), "alice");
    /* typ is optional; other claims and header fields are ignored. */
    assert_ok(token_with("{\"alg\":\"HS256\"}", PAYLOAD("\"bob\"", ",\"iat\":1,\"x\":[1]"), SECRET),
              "bob");
    assert_ok(token_with("{\"typ\":\"xyz\",\"alg\":\"HS256\",\"kid\":\"k1\"}",
                         PAYLOAD("\"bob\"", ""), SECRET),
              "bob");
    /* Names as ?username= allows them: spaces, non-Latin, 32 bytes. */
    assert_ok(token(PAYLOAD("\"J\\u00fcrgen Z\"", "")), "J\xc3\xbcrgen Z");
    assert_ok(token(PAYLOAD("\"\xe5\xbc\xa0\xe4\xbc\x9f\"", "")), "\xe5\xbc\xa0\xe4\xbc\x9f");
    assert_ok(token(PAYLOAD("\"abcdefghijklmnopqrstuvwxyz012345\"", "")),
              "abcdefghijklmnopqrstuvwxyz012345");
    /* A NumericDate may have a fraction. */
    assert_ok(token("{\"sub\":\"a\",\"exp\":1700000000.5}"), "a");
    /* nbf in the past or now. */
    assert_ok(token(PAYLOAD("\"a\"", ",\"nbf\":1699999999")), "a");
    assert_ok(token(PAYLOAD("\"a\"", ",\"nbf\":1700000000")), "a");
}

static void test_expired(void **state) {
    (void)state;
    assert_refused(token("{\"sub\":\"a\",\"exp\":1699990000}"), "expired");
    /* No leeway: refused from the exp second on. */
    assert_refused(token("{\"sub\":\"a\",\"exp\":1700000000}"), "expired");
    assert_ok(token("{\"sub\":\"a\",\"exp\":1700000001}"), "a");
    assert_refused(token("{\"sub\":\"a\",\"exp\":-1e300}"), "expired");
    assert_refused(token("{\"sub\":\"a\",\"exp\":0}"), "expired");
}

/* auth_verify_exp: the first whole second at which the token is refused,
 * which a live connection is closed at. */
static int64_t exp_of(const char *payload) {
    char user[USER_CAP];
    const char *why = NULL;
    int64_t exp = -7;
    const char *tok = token(payload);
    assert_int_equal(auth_verify_exp(SECRET, strlen(SECRET), tok, strlen(tok), NOW, user, USER_CAP,
                                     NULL, &exp, &why),
                     0);
    return exp;
}

static void test_exp_out(void **state) {
    (void)state;
    assert_int_equal(exp_of("{\"sub\":\"a\",\"exp\":1700000001}"), 1700000001);
    assert_int_equal(exp_of("{\"sub\":\"a\",\"exp\":1700000000.25}"), 1700000001);
    assert_int_equal(exp_of("{\"sub\":\"a\",\"exp\":1e300}"), INT64_MAX);
}

static void test_wrong_signature(void **state) {
    (void)state;
    assert_refused(token_with(HS256, PAYLOAD("\"a\"", ""), "other"), "signature");
    assert_refused(token_with(HS256, PAYLOAD("\"a\"", ""), "s3cre"), "signature");
    assert_refused(token_with(HS256, PAYLOAD("\"a\"", ""), "s3crett"), "signature");

    /* One character of the signature changed. */
    char t[1024];
    snprintf(t, sizeof t, "%s", token(PAYLOAD("\"a\"", "")));
    char *sig = strrchr(t, '.') + 1;
    sig[3] = sig[3] == 'A' ? 'B' : 'A';
    assert_refused(t, "signature");

    /* Truncated or extended signature. */
    snprintf(t, sizeof t, "%s", token(PAYLOAD("\"a\"", "")));
    t[strlen(t) - 3] = '\0'; /* 40 characters: 30 bytes */
    assert_refused(t, "signature");
    snprintf(t, sizeof t, "%sAAAA", token(PAYLOAD("\"a\"", "")));
    assert_refused(t, "signature");

    /* Empty signature. */
    snprintf(t, sizeof t, "%s", token(PAYLOAD("\"a\"", "")));
    strrchr(t, '.')[1] = '\0';
    assert_refused(t, "signature");

    /* Another user's name with a valid token's signature. */
    char other[1024];
    snprintf(t, sizeof t, "%s", token(PAYLOAD("\"alice\"", "")));
    snprintf(other, sizeof other, "%s", token(PAYLOAD("\"mallory\"", "")));
    snprintf(strrchr(other, '.') + 1, 64, "%s", strrchr(t, '.') + 1);
    assert_refused(other, "signature");
}

/* The signature is over the bytes of header.payload as received: the same
 * JSON encoded differently, or the same bytes in another base64 spelling,
 * does not carry it over. */
static void test_signature_over_exact_bytes(void **state) {
    (void)state;
    char t[1024], h[256], p[256];
    snprintf(t, sizeof t, "%s", token(PAYLOAD("\"alice\"", "")));
    const char *sig = strrchr(t, '.') + 1;

    char other[1024];
    b64url_str("{\"alg\":\"HS256\", \"typ\":\"JWT\"}", h); /* a space more */
    snprintf(other, sizeof other, "%s.%.*s", h, (int)(sig - 1 - (strchr(t, '.') + 1)),
             strchr(t, '.') + 1);
    snprintf(other + strlen(other), sizeof other - strlen(other), ".%s", sig);
    assert_refused(other, "signature");

    b64url_str(PAYLOAD("\"alice\"", " "), p); /* a space more */
    snprintf(other, sizeof other, "%.*s.%s.%s", (int)(strchr(t, '.') - t), t, p, sig);
    assert_refused(other, "signature");

    /* Signed with a header of a space more: valid on its own. */
    assert_ok(token_with("{\"alg\":\"HS256\", \"typ\":\"JWT\"}", PAYLOAD("\"alice\"", ""), SECRET),
              "alice");

    /* Same bytes, the payload's last character in a non-canonical spelling
     * (unused low bits set): refused as not base64url. */
    b64url_str("{\"sub\":\"a\",\"exp\":1700000060}", p); /* 28 bytes: 38 chars, 4 bits unused */
    assert_int_equal(strlen(p) % 4, 2);
    snprintf(t, sizeof t, "%s", token("{\"sub\":\"a\",\"exp\":1700000060}"));
    char *pp = strchr(t, '.') + 1;
    char *last = pp + strlen(p) - 1;
    assert_int_equal(*last, 'Q'); /* '}' = 0x7D: its low 2 bits, then 4 zero bits */
    *last = 'R';
    assert_refused(t, "base64url");
}

static void test_alg_none(void **state) {
    (void)state;
    char t[1024], h[128], p[128];
    b64url_str("{\"alg\":\"none\",\"typ\":\"JWT\"}", h);
    b64url_str(PAYLOAD("\"alice\"", ""), p);
    /* Unsigned, as RFC 7519 6.1 writes it: an empty third part. */
    snprintf(t, sizeof t, "%s.%s.", h, p);
    assert_refused(t, "alg must be HS256");
    /* Even with a signature that would be valid for HS256. */
    assert_refused(token_with("{\"alg\":\"none\"}", PAYLOAD("\"alice\"", ""), SECRET),
                   "alg must be HS256");
    /* Without the third part at all. */
    snprintf(t, sizeof t, "%s.%s", h, p);
    assert_refused(t, "three parts");
}

static void test_other_algs(void **state) {
    (void)state;
    static const char *const headers[] = {
        "{\"alg\":\"HS512\"}", "{\"alg\":\"HS384\"}",  "{\"alg\":\"RS256\"}",
        "{\"alg\":\"hs256\"}", "{\"alg\":\"HS256 \"}", "{\"alg\":\"HS256\\u0000\"}",
        "{\"typ\":\"JWT\"}",   "{\"alg\":null}",       "{\"alg\":256}",
        "{\"alg\":[\"HS256\"]}",
    };
    for (size_t i = 0; i < sizeof headers / sizeof headers[0]; i++) {
        print_message("  %s\n", headers[i]);
        char user[USER_CAP];
        const char *why;
        assert_int_equal(verify_at(token_with(headers[i], PAYLOAD("\"a\"", ""), SECRET), NOW, user,
                                   &why),
                         -1);
        assert_string_equal(user, "");
    }
    assert_refused(token_with("{\"alg\":\"HS512\"}", PAYLOAD("\"a\"", ""), SECRET),
                   "alg must be HS256");
    assert_refused(token_with("{\"typ\":\"JWT\"}", PAYLOAD("\"a\"", ""), SECRET),
                   "alg must be HS256");
    /* crit names extensions we would have to understand. */
    assert_refused(token_with("{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", PAYLOAD("\"a\"", ""), SECRET),
                   "crit");
    /* A header that says alg twice. */
    assert_refused(token_with("{\"alg\":\"none\",\"alg\":\"HS256\"}", PAYLOAD("\"a\"", ""), SECRET),
                   "header is not a JSON object");
}

static void test_malformed_base64(void **state) {
    (void)state;
    char good[1024], t[1100];
    snprintf(good, sizeof good, "%s", token(PAYLOAD("\"a\"", "")));
    char *d1 = strchr(good, '.');

    /* Standard base64 characters, padding, blanks, in each part. */
    static const char bad[] = {'+', '/', '=', ' ', '*', '%', '\n'};
    for (size_t i = 0; i < sizeof bad; i++) {
        snprintf(t, sizeof t, "%s", good);
        t[2] = bad[i];
        assert_refused(t, "base64url");
        snprintf(t, sizeof t, "%s", good);
        t[(size_t)(d1 - good) + 3] = bad[i];
        assert_refused(t, "base64url");
        snprintf(t, sizeof t, "%s", good);
        t[strlen(t) - 2] = bad[i];
        assert_refused(t, "base64url");
    }
    /* Padding appended. */
    snprintf(t, sizeof t, "%s=", good);
    assert_refused(t, "base64url");
    /* A part of 4k+1 characters cannot be base64. */
    snprintf(t, sizeof t, "%.*sA%s", (int)(d1 - good), good, d1);
    if ((d1 - good) % 4 == 0)
        assert_refused(t, "base64url");
    snprintf(t, sizeof t, "A.%s", d1 + 1);
    assert_refused(t, "base64url");
    /* Empty header: decodes to nothing, which is not JSON. */
    snprintf(t, sizeof t, "%s", d1);
    assert_refused(t, "header is not a JSON object");
}

static void test_parts(void **state) {
    (void)state;
    char good[1024], t[1100];
    snprintf(good, sizeof good, "%s", token(PAYLOAD("\"a\"", "")));
    /* Two parts. */
    snprintf(t, sizeof t, "%.*s", (int)(strrchr(good, '.') - good), good);
    assert_refused(t, "three parts");
    /* Four parts. */
    snprintf(t, sizeof t, "%s.", good);
    assert_refused(t, "three parts");
    snprintf(t, sizeof t, "%s.AAAA", good);
    assert_refused(t, "three parts");
    snprintf(t, sizeof t, "e30.%s", good);
    assert_refused(t, "three parts");
    /* One part, nothing, only dots. */
    assert_refused("eyJhbGciOiJIUzI1NiJ9", "three parts");
    assert_refused("", "three parts");
    assert_refused("..", "header is not a JSON object");
    assert_refused("...", "three parts");
    /* Too long. */
    static char longtok[AUTH_TOKEN_MAX + 100];
    memset(longtok, 'A', sizeof longtok - 1);
    longtok[10] = '.';
    longtok[20] = '.';
    assert_refused(longtok, "too long");
}

static void test_not_json(void **state) {
    (void)state;
    assert_refused(token("not json"), "payload is not a JSON object");
    assert_refused(token("{\"sub\":\"a\",\"exp\":1700000060"), "payload is not a JSON object");
    assert_refused(token("[\"a\"]"), "payload is not a JSON object");
    assert_refused(token("\"a\""), "payload is not a JSON object");
    assert_refused(token("{\"sub\":\"a\",\"exp\":1700000060} x"), "payload is not a JSON object");
    assert_refused(token(""), "payload is not a JSON object");
    assert_refused(token("{\"sub\":\"a\",\"sub\":\"b\",\"exp\":1700000060}"),
                   "payload is not a JSON object");
    /* Invalid UTF-8 inside a JSON string. */
    assert_refused(token("{\"sub\":\"a\xc3\",\"exp\":1700000060}"), "payload is not a JSON object");
    assert_refused(token_with("not json", PAYLOAD("\"a\"", ""), SECRET),
                   "header is not a JSON object");
    assert_refused(token_with("[]", PAYLOAD("\"a\"", ""), SECRET), "header is not a JSON object");
}

static void test_sub(void **state) {
    (void)state;
    assert_refused(token("{\"exp\":1700000060}"), "sub must be a string");
    assert_refused(token(PAYLOAD("42", "")), "sub must be a string");
    assert_refused(token(PAYLOAD("null", "")), "sub must be a string");
    assert_refused(token(PAYLOAD("[\"a\"]", "")), "sub must be a string");
    assert_refused(token(PAYLOAD("{\"name\":\"a\"}", "")), "sub must be a string");
    assert_refused(token(PAYLOAD("true", "")), "sub must be a string");
}

/* The rules of ?username=: 1..max bytes of UTF-8 without controls. */
static void test_sub_not_a_username(void **state) {
    (void)state;
    assert_refused(token(PAYLOAD("\"\"", "")), "not a valid username");
    assert_refused(token(PAYLOAD("\"a\\nb\"", "")), "not a valid username");
    assert_refused(token(PAYLOAD("\"a\\tb\"", "")), "not a valid username");
    assert_refused(token(PAYLOAD("\"a\\u0001\"", "")), "not a valid username");
    assert_refused(token(PAYLOAD("\"a\\u007f\"", "")), "not a valid username");
    assert_refused(token(PAYLOAD("\"\\u001b[31mred\"", "")), "not a valid username");
    /* NUL would cut the name: the JSON parser refuses it. */
    assert_refused(token(PAYLOAD("\"a\\u0000b\"", "")), "payload is not a JSON object");
    /* A lone surrogate is not UTF-8. */
    assert_refused(token(PAYLOAD("\"\\ud800\"", "")), "payload is not a JSON object");
    /* 33 bytes, one more than USER_CAP allows; and in two-byte characters. */
    assert_refused(token(PAYLOAD("\"abcdefghijklmnopqrstuvwxyz0123456\"", "")),
                   "not a valid username");
    assert_refused(token(PAYLOAD("\"\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc"
                                 "\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\\u00fc\"",
                                 "")),
                   "not a valid username");

    /* user_cap is the caller's limit. */
    char user[4];
    const char *why;
    const char *t = token(PAYLOAD("\"abc\"", ""));
    assert_int_equal(auth_verify(SECRET, strlen(SECRET), t, strlen(t), NOW, user, 4, &why), 0);
    assert_string_equal(user, "abc");
    t = token(PAYLOAD("\"abcd\"", ""));
    assert_int_equal(auth_verify(SECRET, strlen(SECRET), t, strlen(t), NOW, user, 4, &why), -1);
    assert_string_equal(user, "");
}

static void test_exp(void **state) {
    (void)state;
    assert_refused(token("{\"sub\":\"a\"}"), "exp must be a number");
    assert_refused(token("{\"sub\":\"a\",\"exp\":\"1700000060\"}"), "exp must be a number");
    assert_refused(token("{\"sub\":\"a\",\"exp\":null}"), "exp must be a number");
    assert_refused(token("{\"sub\":\"a\",\"exp\":true}"), "exp must be a number");
    assert_refused(token("{\"sub\":\"a\",\"exp\":[1700000060]}"), "exp must be a number");
}

static void test_nbf(void **state) {
    (void)state;
    assert_refused(token(PAYLOAD("\"a\"", ",\"nbf\":1700000001")), "not valid yet");
    assert_refused(token(PAYLOAD("\"a\"", ",\"nbf\":1700000030")), "not valid yet");
    assert_refused(token(PAYLOAD("\"a\"", ",\"nbf\":\"0\"")), "nbf must be a number");
    assert_refused(token(PAYLOAD("\"a\"", ",\"nbf\":null")), "nbf must be a number");
}

/* The key is bytes: a secret with a NUL inside is used whole. */
static void test_secret_bytes(void **state) {
    (void)state;
    char t[1024], user[USER_CAP];
    const char *why;
    b64url_str(HS256, t);
    size_t n = strlen(t);
    t[n] = '.';
    b64url_str(PAYLOAD("\"a\"", ""), t + n + 1);
    unsigned char mac[32];
    unsigned int mac_len;
    HMAC(EVP_sha256(), "ab\0cd", 5, (unsigned char *)t, strlen(t), mac, &mac_len);
    n = strlen(t);
    t[n] = '.';
    b64url(mac, 32, t + n + 1);
    assert_int_equal(auth_verify("ab\0cd", 5, t, strlen(t), NOW, user, USER_CAP, &why), 0);
    assert_int_equal(auth_verify("ab\0ce", 5, t, strlen(t), NOW, user, USER_CAP, &why), -1);
    assert_int_equal(auth_verify("ab", 2, t, strlen(t), NOW, user, USER_CAP, &why), -1);
}

static void test_rotation(void **state) {
    (void)state;
    char user[USER_CAP];
    const char *why;
    char by_new[2048], by_old[2048], old_expired[2048];
    snprintf(by_new, sizeof by_new, "%s", token_with(HS256, PAYLOAD("\"alice\"", ""), "new"));
    snprintf(by_old, sizeof by_old, "%s", token_with(HS256, PAYLOAD("\"bob\"", ""), "old"));
    snprintf(old_expired, sizeof old_expired, "%s",
             token_with(HS256, "{\"sub\":\"carol\",\"exp\":1699999999}", "old"));
    /* Either secret signs a good token. */
    assert_int_equal(auth_verify_either("new", "old", by_new, strlen(by_new), NOW, user, USER_CAP,
                                        NULL, NULL, &why), 0);
    assert_string_equal(user, "alice");
    assert_int_equal(auth_verify_either("new", "old", by_old, strlen(by_old), NOW, user, USER_CAP,
                                        NULL, NULL, &why), 0);
    assert_string_equal(user, "bob");
    /* A token the previous secret signed keeps its own reason. */
    assert_int_equal(auth_verify_either("new", "old", old_expired, strlen(old_expired), NOW, user,
                                        USER_CAP, NULL, NULL, &why), -1);
    assert_string_equal(why, "token has expired");
    /* Without a previous secret (NULL or empty) the old tokens are refused. */
    assert_int_equal(auth_verify_either("new", "", by_old, strlen(by_old), NOW, user, USER_CAP,
                                        NULL, NULL, &why), -1);
    assert_string_equal(why, "token signature is wrong");
    assert_int_equal(auth_verify_either("new", NULL, by_old, strlen(by_old), NOW, user, USER_CAP,
                                        NULL, NULL, &why), -1);
    assert_int_equal(auth_verify_either("other", "another", by_old, strlen(by_old), NOW, user,
                                        USER_CAP, NULL, NULL, &why), -1);
    assert_string_equal(why, "token signature is wrong");
    assert_string_equal(user, "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),
        cmocka_unit_test(test_expired),
        cmocka_unit_test(test_exp_out),
        cmocka_unit_test(test_wrong_signature),
        cmocka_unit_test(test_signature_over_exact_bytes),
        cmocka_unit_test(test_alg_none),
        cmocka_unit_test(test_other_algs),
        cmocka_unit_test(test_malformed_base64),
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_not_json),
        cmocka_unit_test(test_sub),
        cmocka_unit_test(test_sub_not_a_username),
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_nbf),
        cmocka_unit_test(test_secret_bytes),
        cmocka_unit_test(test_rotation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
