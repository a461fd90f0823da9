/* version — the version of this build: `git describe --always --dirty` of
 * the tree it was built from, or the VERSION file where there is no git
 * (the Makefile decides, see its CHATD_VERSION). Read-only; any thread. */
#ifndef CHATD_VERSION_H
#define CHATD_VERSION_H

extern const char chatd_version[];

#endif
