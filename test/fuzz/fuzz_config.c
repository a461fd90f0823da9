/* libFuzzer target for the config file parser (config.h).
 *
 * Input: the text of a config file. config_parse must either accept it,
 * leaving a config that config_check can judge and whose strings are all
 * terminated, or refuse it with a message that starts with the file name,
 * whatever the size of the error buffer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fuzz.h"

#define NAME "fuzz.conf"

#define TERMINATED(f) CHECK(memchr((f), '\0', sizeof(f)) != NULL)

static void check_strings(const config *cfg)
{
    TERMINATED(cfg->bind);
    TERMINATED(cfg->tls_bind);
    TERMINATED(cfg->tls_cert);
    TERMINATED(cfg->tls_key);
    TERMINATED(cfg->tls_ciphers);
    TERMINATED(cfg->auth_secret);
    TERMINATED(cfg->default_room);
    TERMINATED(cfg->redis_url);
    TERMINATED(cfg->stream);
    CHECK(cfg->n_origins >= 0 && cfg->n_origins <= CONFIG_MAX_ORIGINS);
    for (int i = 0; i < cfg->n_origins; i++)
        TERMINATED(cfg->allowed_origins[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* config_parse takes a C string: the file up to its first NUL. */
    char *text = malloc(size + 1);
    CHECK(text);
    memcpy(text, data, size);
    text[size] = '\0';

    static config cfg; /* big: keep it off the stack */
    char err[1024];
    memset(err, 0x55, sizeof err);
    config_defaults(&cfg);
    int rc = config_parse(&cfg, NAME, text, err, sizeof err);
    CHECK(rc == 0 || rc == -1);
    if (rc == 0) {
        check_strings(&cfg);
        char why[512];
        memset(why, 0x55, sizeof why);
        int ok = config_check(&cfg, why, sizeof why);
        CHECK(ok == 0 || (ok == -1 && memchr(why, '\0', sizeof why) != NULL && why[0] != '\0'));
    } else {
        CHECK(memchr(err, '\0', sizeof err) != NULL);
        CHECK(strncmp(err, NAME ":", strlen(NAME ":")) == 0);
    }

    /* Same text, an error buffer too small for the message: cut, terminated,
     * same verdict, nothing written past it. */
    char small[24];
    size_t errlen = 1 + size % 16;
    memset(small, 0x55, sizeof small);
    config_defaults(&cfg);
    CHECK(config_parse(&cfg, NAME, text, small, errlen) == rc);
    for (size_t i = errlen; i < sizeof small; i++)
        CHECK(small[i] == 0x55);
    if (rc != 0) {
        CHECK(memchr(small, '\0', errlen) != NULL);
        size_t n = strlen(small) < strlen(NAME ":") ? strlen(small) : strlen(NAME ":");
        CHECK(strncmp(small, NAME ":", n) == 0);
        CHECK(strncmp(small, err, strlen(small)) == 0); /* a cut of the same message */
    }
    free(text);
    return 0;
}
