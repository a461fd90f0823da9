/* What every libFuzzer target here shares: the entry point libFuzzer calls,
 * and CHECK, which turns a broken contract into a crash the fuzzer keeps
 * (assert would vanish under NDEBUG). */
#ifndef CHATD_FUZZ_H
#define CHATD_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c) \
    do { \
        if (!(c)) \
            __builtin_trap(); \
    } while (0)

#endif
