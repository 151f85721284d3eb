# halfway — two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go

# Debian packages the tests, the demo and the benchmarks use.
APT_PACKAGES := iproute2 curl iputils-ping procps python3 nftables iptables iperf3 clang-14 llvm-14 libbpf-dev linux-libc-dev
# Commands (and a header) that tell whether they are installed.
APT_COMMANDS := ip curl ping ps python3 nft iptables iperf3 clang-14 llvm-strip-14
APT_FILES := /usr/include/bpf/bpf_helpers.h /usr/include/x86_64-linux-gnu/asm/types.h

# The BPF programs (datapath/bpf/sockmap.c, sockopt/bpf/subflow.c) are
# committed compiled, so `go build` needs no clang; `make test` compiles
# them again and fails if a committed object differs. Paths are mapped so
# the objects do not depend on where the tree is.
BPF_CC := clang-14
BPF_STRIP := llvm-strip-14
BPF_CFLAGS := -O2 -g -Wall -Werror -target bpfel -I/usr/include/x86_64-linux-gnu
# package-directory:program pairs: DIR/bpf/PROG.c compiles to DIR/PROG_bpfel.o.
BPF_PROGS := datapath:sockmap sockopt:subflow

.PHONY: all build deps test check bpf check-bpf demo bench-lab bench-accel bench-mptcp bench-peers clean

all: build

# A static, stripped binary: no dynamic loader at exec, and fewer pages of
# the binary mapped into every relay (see results/footprint.md).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags="-s -w" -o bin/halfway ./cmd/halfway

# deps installs what is missing, and only that: apt-get needs the network.
deps:
	@missing=""; for c in $(APT_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	for f in $(APT_FILES); do [ -e $$f ] || missing="$$missing $$f"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	$(GO) mod download

# check is the static part of test: formatting and vet.
check:
	@bad=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$bad" ]; then echo "gofmt would change:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...

# bpf compiles the BPF programs into the objects that are committed.
bpf:
	@for p in $(BPF_PROGS); do d=$${p%%:*}; n=$${p#*:}; \
	(cd $$d && $(BPF_CC) $(BPF_CFLAGS) -fdebug-prefix-map=$$PWD=. -c bpf/$$n.c -o $${n}_bpfel.o && $(BPF_STRIP) -g $${n}_bpfel.o) || exit 1; \
	echo "$$d/$${n}_bpfel.o"; done

# check-bpf compiles them again and compares with the committed objects.
check-bpf:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	for p in $(BPF_PROGS); do d=$${p%%:*}; n=$${p#*:}; o=$$d/$${n}_bpfel.o; \
	(cd $$d && $(BPF_CC) $(BPF_CFLAGS) -fdebug-prefix-map=$$PWD=. -c bpf/$$n.c -o "$$tmp/$$n.o") && \
	$(BPF_STRIP) -g "$$tmp/$$n.o" || exit 1; \
	if cmp -s "$$tmp/$$n.o" $$o; then echo "$$o is $$d/bpf/$$n.c compiled"; \
	else echo "$$o differs from $$d/bpf/$$n.c compiled: run make bpf and commit it"; exit 1; fi; done

# test runs every test; the lab tests need root and skip without it.
test: deps check check-bpf
	$(GO) test -race -count=1 -timeout 12m ./...

demo: deps build
	./scripts/demo.sh

bench-lab: build
	./bin/halfway bench lab --out results

# bench-accel reproduces Miniproxy Figs. 4-5 and KTCP Figs. 3-4 (about 20
# minutes); HAProxy is the baseline operators use today.
bench-accel: deps build
	@command -v haproxy >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null; }
	./bin/halfway bench accel --out results

# bench-mptcp reproduces MiMBox §4.4 (about 15 minutes).
bench-mptcp: build
	./bin/halfway bench mptcp --out results

# bench-peers compares with HAProxy, nginx stream and socat, which it
# installs with apt-get (about 8 minutes).
bench-peers: build
	./bin/halfway bench peers --out results

clean:
	rm -rf bin
