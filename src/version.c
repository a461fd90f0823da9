/* version — see version.h. The string comes from a header the build
 * writes (BUILD/gen/version_gen.h), rewritten only when it changes, so
 * that a new commit relinks the binary and nothing else rebuilds. */
#include "version.h"

#include "version_gen.h"

const char chatd_version[] = CHATD_VERSION;
