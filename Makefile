# chatd — `make` builds build/chatd; `make run` starts a node; `make test`
# runs every test (unit, integration, ASan+UBSan, TSan). `V=1` shows commands.

CC      ?= cc
PYTHON  := /usr/bin/python3
SAN     ?=
PKGS    := libevent libevent_pthreads libevent_openssl hiredis openssl jansson zlib
LLHTTP_DIR     := /usr/share/llhttp
LLHTTP_INCLUDE := /usr/share/include/llhttp

ifeq ($(SAN),asan)
  BUILD    ?= build/asan
  SANFLAGS := -O1 -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
else ifeq ($(SAN),tsan)
  BUILD    ?= build/tsan
  SANFLAGS := -O1 -fsanitize=thread -fno-omit-frame-pointer
else
  BUILD    ?= build
  SANFLAGS := -O2
endif

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror
CFLAGS   ?=
ALLFLAGS  = -std=c11 -D_GNU_SOURCE -g $(SANFLAGS) $(CFLAGS) -Iinclude -I$(BUILD)/gen -I$(LLHTTP_INCLUDE) \
            $(PKG_CFLAGS)

# The version: `git describe --always --dirty` when this directory is the top
# of a git tree; with no tag to describe, the VERSION file's number comes
# first (0.4.0-0983925-dirty), since a bare commit says nothing about order.
# A tree without git (a tarball) has the VERSION file alone.
VERSION_FILE  := $(shell cat VERSION 2>/dev/null)
GIT_DESCRIBE  := $(shell [ "$$(git rev-parse --show-toplevel 2>/dev/null)" = "$(CURDIR)" ] && \
                   git describe --always --dirty 2>/dev/null)
CHATD_VERSION := $(strip $(if $(GIT_DESCRIBE),$(if $(shell echo '$(GIT_DESCRIBE)' | \
                   grep -E '^[0-9a-f]+(-dirty)?$$'),$(VERSION_FILE)-)$(GIT_DESCRIBE),$(or \
                   $(VERSION_FILE),unknown)))
LDLIBS    = $(PKG_LIBS) -lpthread

SRC     := $(wildcard src/*.c)
ASM     := $(wildcard src/*.S)
OBJ     := $(SRC:src/%.c=$(BUILD)/obj/%.o) $(ASM:src/%.S=$(BUILD)/obj/%.o)
LIBOBJ  := $(filter-out $(BUILD)/obj/main.o,$(OBJ))
LLHTTP_OBJ := $(patsubst $(LLHTTP_DIR)/%.c,$(BUILD)/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
UNIT_SRC := $(wildcard test/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:test/unit/%.c=$(BUILD)/unit/%)

ifeq ($(V),1)
  Q :=
  say =
else
  Q := @
  say = @printf '  %-6s %s\n' $(1) $(2);
endif

.PHONY: all chatd unit run test deps deps-run deps-cluster clean check-unit cluster version \
        install FORCE
all: chatd
chatd: $(BUILD)/chatd

$(BUILD)/chatd: $(OBJ) $(LLHTTP_OBJ)
	$(call say,LINK,$@)
	$(Q)$(CC) $(ALLFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/obj/%.o: src/%.c | $(BUILD)/obj
	$(call say,CC,$<)
	$(Q)$(CC) $(ALLFLAGS) $(WARN) -MMD -MP -c -o $@ $<

# Rewritten only when the version changes: a commit relinks, nothing more.
$(BUILD)/gen/version_gen.h: FORCE
	$(Q)mkdir -p $(@D)
	$(Q)echo '#define CHATD_VERSION "$(CHATD_VERSION)"' > $@.tmp; \
	    if cmp -s $@.tmp $@; then rm -f $@.tmp; else mv $@.tmp $@; fi
$(BUILD)/obj/version.o: $(BUILD)/gen/version_gen.h

version:
	@echo $(CHATD_VERSION)

# The web page's files go into the binary with .incbin (src/web_assets.S),
# which the compiler's dependency output does not see: name them here.
WEB_FILES := $(wildcard web/*)
$(BUILD)/obj/%.o: src/%.S | $(BUILD)/obj
	$(call say,AS,$<)
	$(Q)$(CC) $(ALLFLAGS) -MMD -MP -c -o $@ $<
$(BUILD)/obj/web_assets.o: $(WEB_FILES)

# llhttp has no library package: compile Debian's node-llhttp sources from
# where the package installs them (see third_party/README.md).
$(BUILD)/llhttp/%.o: $(LLHTTP_DIR)/%.c | $(BUILD)/llhttp
	$(call say,CC,$<)
	$(Q)$(CC) $(ALLFLAGS) -w -c -o $@ $<

# Each unit test links only the modules it tests (UNIT_DEPS_<test>).
UNIT_DEPS_test_ws        := ws
UNIT_DEPS_test_utf8      := ws
UNIT_DEPS_test_config    := config log proxy redis_cluster
UNIT_DEPS_test_handshake := handshake auth config log ws proto names web web_assets proxy redis_cluster
UNIT_DEPS_test_web       := web web_assets handshake auth config log ws proto names proxy redis_cluster
UNIT_DEPS_test_auth      := auth ws
UNIT_DEPS_test_ring      := ring
UNIT_DEPS_test_net       := net
UNIT_DEPS_test_redis_link := redis_link redis_cluster
UNIT_DEPS_test_names     := names ws
UNIT_DEPS_test_proto     := proto names ws
UNIT_DEPS_test_room      := room msg pmd proto names ws redis_cluster
UNIT_DEPS_test_proxy     := proxy
UNIT_DEPS_test_redis_cluster := redis_cluster
UNIT_DEPS_test_pmd       := pmd
UNIT_DEPS_test_msg       := msg pmd proto names ws redis_cluster
UNIT_DEPS_test_tlsrec    := tlsrec tls config log proxy redis_cluster

.SECONDEXPANSION:
$(BUILD)/unit/%: test/unit/%.c $$(addprefix $(BUILD)/obj/,$$(addsuffix .o,$$(UNIT_DEPS_$$*))) $(LLHTTP_OBJ) | $(BUILD)/unit
	$(call say,LINK,$@)
	$(Q)$(CC) $(ALLFLAGS) $(WARN) -Wno-missing-prototypes -o $@ $^ $(LDLIBS) -lcmocka

$(BUILD)/obj $(BUILD)/llhttp $(BUILD)/unit:
	$(Q)mkdir -p $@

unit: $(UNIT_BIN)

# Runs every unit test binary of this build; stops at the first failure.
check-unit: unit
	$(Q)set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# chatbench, the load generator of issue 5: `make bench-tool`.
BENCH_SRC  := $(wildcard test/bench/*.c)
BENCH_PKGS := libevent libevent_openssl libevent_pthreads openssl zlib
.PHONY: bench-tool
bench-tool: $(BUILD)/chatbench $(BUILD)/tlsprobe
# tlsprobe (issue 16): a wss connection's bytes by OpenSSL call site and its
# server CPU, in the TLS context chatd's own tls.c builds.
TLSPROBE_DEPS := tls tlsrec config log proxy redis_cluster
$(BUILD)/tlsprobe: test/bench/tlsprobe/tlsprobe.c $(TLSPROBE_DEPS:%=$(BUILD)/obj/%.o)
	$(call say,LINK,$@)
	$(Q)$(CC) $(ALLFLAGS) $(WARN) -o $@ $^ $(LDLIBS)
$(BUILD)/chatbench: $(BENCH_SRC) $(wildcard test/bench/*.h)
	$(call say,LINK,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(CC) -std=c11 -D_GNU_SOURCE -g $(SANFLAGS) $(CFLAGS) $(WARN) \
	    $(shell pkg-config --cflags $(BENCH_PKGS)) -o $@ $(BENCH_SRC) \
	    $(shell pkg-config --libs $(BENCH_PKGS))

# The benchmark of issue 5 against the Node.js and nginx + nchan peers; appends
# to BENCHMARKS.md.
# BENCH_ARGS="--quick" for a scaled-down run, "--scenarios 2 --servers chatd" etc.
.PHONY: bench
bench: deps
	$(Q)./third_party/install-deps.sh bench
	$(Q)$(MAKE) --no-print-directory -j2 chatd bench-tool
	$(Q)cd test/bench/peer && npm ci --no-audit --no-fund --silent
	$(PYTHON) test/bench/bench.py $(BENCH_ARGS)

# The soak test of issue 6 (about 10 minutes; SOAK_SECONDS=90 for a short run):
# two ASan+UBSan nodes, Redis, churn, slow readers, floods, bad input, Redis kills.
.PHONY: soak
soak: deps
	$(Q)$(MAKE) --no-print-directory -j2 SAN=asan chatd
	$(PYTHON) test/soak/soak.py

# The chaos run of issue 11 (CHAOS_SECONDS, default 300): two nodes, Redis and
# the fault proxy under the delivery checker, random Redis and node faults.
.PHONY: chaos
chaos: deps
	$(Q)$(MAKE) --no-print-directory -j2 chatd
	$(PYTHON) test/chaos/chaos.py

# libFuzzer targets of issue 6 (test/fuzz/fuzz_<target>.c), built with clang
# under ASan+UBSan as build/fuzz/fuzz_<target>. `make fuzz` runs each for
# FUZZ_SECONDS on build/fuzz/corpus-<target>, a copy of its seeds in
# test/fuzz/corpus/<target> (new inputs never go into the repository); a crash
# fails the run and leaves its input in build/fuzz/artifacts-<target>/.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_DIR     := build/fuzz
FUZZ_TARGETS := ws utf8 handshake config auth proto proxy pmd
FUZZ_PKGS    := openssl jansson
FUZZ_FLAGS   := -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined \
                -fno-sanitize-recover=all -fno-omit-frame-pointer -Iinclude -I$(LLHTTP_INCLUDE) \
                $(shell pkg-config --cflags $(FUZZ_PKGS) 2>/dev/null)
FUZZ_LLHTTP  := $(patsubst $(LLHTTP_DIR)/%.c,$(FUZZ_DIR)/llhttp/%.o,$(wildcard $(LLHTTP_DIR)/*.c))
# What each target links besides its own file.
FUZZ_SRC_ws        := src/ws.c
FUZZ_SRC_utf8      := src/ws.c
FUZZ_SRC_handshake  = src/handshake.c src/config.c src/log.c src/ws.c src/auth.c src/proto.c src/names.c \
                      src/web.c src/web_assets.S src/proxy.c src/redis_cluster.c $(FUZZ_LLHTTP)
FUZZ_SRC_config     = $(FUZZ_SRC_handshake)
FUZZ_SRC_auth      := src/auth.c src/ws.c
FUZZ_SRC_proto     := src/proto.c src/names.c src/ws.c
FUZZ_SRC_proxy     := src/proxy.c
FUZZ_SRC_pmd       := src/pmd.c
FUZZ_LIBS_handshake = $(shell pkg-config --libs $(FUZZ_PKGS) 2>/dev/null)
FUZZ_LIBS_config    = $(FUZZ_LIBS_handshake)
FUZZ_LIBS_auth      = $(FUZZ_LIBS_handshake)
FUZZ_LIBS_proto     = $(FUZZ_LIBS_handshake)
FUZZ_LIBS_pmd       = $(shell pkg-config --libs zlib 2>/dev/null)

.PHONY: fuzz fuzz-build
fuzz-build: $(FUZZ_TARGETS:%=$(FUZZ_DIR)/fuzz_%)

$(FUZZ_DIR)/fuzz_%: test/fuzz/fuzz_%.c test/fuzz/fuzz.h $$(FUZZ_SRC_$$*) $(wildcard include/*.h) \
                    $(WEB_FILES)
	$(call say,FUZZ,$@)
	$(Q)mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -o $@ $(filter %.c %.S %.o,$^) $(FUZZ_LIBS_$*)

.SECONDARY: $(FUZZ_LLHTTP)
$(FUZZ_DIR)/llhttp/%.o: $(LLHTTP_DIR)/%.c
	$(call say,CC,$<)
	$(Q)mkdir -p $(@D)
	$(Q)$(FUZZ_CC) $(FUZZ_FLAGS) -w -c -o $@ $<

fuzz: deps
	$(Q)$(MAKE) --no-print-directory -j2 fuzz-build
	$(Q)rc=0; for t in $(FUZZ_TARGETS); do \
	    c=$(FUZZ_DIR)/corpus-$$t; a=$(FUZZ_DIR)/artifacts-$$t; log=$(FUZZ_DIR)/fuzz_$$t.log; \
	    mkdir -p $$c $$a && cp test/fuzz/corpus/$$t/* $$c/ || exit 1; \
	    dict=; [ -f test/fuzz/$$t.dict ] && dict=-dict=test/fuzz/$$t.dict; \
	    printf '  %-6s %-10s %ss ... ' FUZZ $$t $(FUZZ_SECONDS); \
	    if $(FUZZ_DIR)/fuzz_$$t $$c $$dict -max_total_time=$(FUZZ_SECONDS) -timeout=5 \
	        -rss_limit_mb=2048 -artifact_prefix=$$a/ -print_final_stats=1 >$$log 2>&1; then \
	        awk '$$2 == "DONE" { sub("#", "", $$1); r = "ok: " $$1 " runs, " $$3 " " $$4 ", " \
	            $$5 " " $$6 ", corpus " $$8 ", " $$11 " " $$12 } END { print r }' $$log; \
	    else \
	        rc=1; echo "FAILED (input in $$a/, log $$log)"; tail -n 40 $$log; \
	    fi; \
	done; exit $$rc

# What is missing for: running a node (deps-run), the two-node demo
# (deps-cluster: adds redis-server), every test (deps).
deps:
	$(Q)./third_party/install-deps.sh test
deps-run:
	$(Q)./third_party/install-deps.sh run
deps-cluster:
	$(Q)./third_party/install-deps.sh cluster

run: deps-run
	$(Q)$(MAKE) --no-print-directory -j2 chatd
	./build/chatd -c conf/chatd.conf

test: deps
	$(Q)./test/run-tests.sh

# Two nodes and a Redis on this machine: the distributed demo.
cluster: deps-cluster
	$(Q)$(MAKE) --no-print-directory -j2 chatd
	./test/cluster.sh

# make install [PREFIX=/usr/local] [DESTDIR=] [SYSCONFDIR=$(PREFIX)/etc]:
# the binary goes to sbin, as nginx's does: a daemon that an administrator
# or the service manager starts, not a command for users, hence chatd(8);
# then the config (an existing one is kept), the man page, and the systemd
# unit with the installed paths written into it.
PREFIX     ?= /usr/local
SYSCONFDIR ?= $(PREFIX)/etc
SBINDIR    ?= $(PREFIX)/sbin
MANDIR     ?= $(PREFIX)/share/man
UNITDIR    ?= $(PREFIX)/lib/systemd/system
install: $(BUILD)/chatd
	$(Q)install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(SYSCONFDIR)/chatd $(DESTDIR)$(MANDIR)/man8 \
	    $(DESTDIR)$(UNITDIR)
	$(Q)install -m 755 $(BUILD)/chatd $(DESTDIR)$(SBINDIR)/chatd
	$(Q)if [ -e $(DESTDIR)$(SYSCONFDIR)/chatd/chatd.conf ]; then \
	    echo "install: kept $(DESTDIR)$(SYSCONFDIR)/chatd/chatd.conf (the new one is conf/chatd.conf)"; \
	else install -m 644 conf/chatd.conf $(DESTDIR)$(SYSCONFDIR)/chatd/chatd.conf; fi
	$(Q)install -m 644 doc/chatd.8 $(DESTDIR)$(MANDIR)/man8/chatd.8
	$(Q)sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' doc/chatd.service.in \
	    > $(DESTDIR)$(UNITDIR)/chatd.service
	$(Q)chmod 644 $(DESTDIR)$(UNITDIR)/chatd.service
	@echo "installed chatd $(CHATD_VERSION) in $(DESTDIR)$(PREFIX)"

clean:
	rm -rf build

-include $(OBJ:.o=.d)
