# tulle: see README.md. Every target that touches the kernel needs root.
export PATH := $(PATH):/usr/local/go/bin
GO      ?= go
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: all build deps demo demo-host-gw demo-udp test test-unit test-kernel test-e2e bench lint clean

all: build

deps:
	@bash .ci/deps

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/tulle ./cmd/tulle-cni ./cmd/tulle-etcd

# The first thing a new user runs: a 3-node VXLAN lab, all-pairs reachability.
demo: deps build
	$(BIN)/tulle demo

demo-host-gw: deps build
	$(BIN)/tulle demo --backend host-gw

demo-udp: deps build
	$(BIN)/tulle demo --backend udp

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt wants to rewrite:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Everything CI runs: lint, unit + kernel tests (race detector on the
# packages with concurrency), then the end-to-end lab tests.
test: deps lint
	$(GO) test -count=1 -race ./internal/...
	$(GO) test -count=1 -timeout 20m ./test/...

test-unit:
	$(GO) test -count=1 -short ./internal/...

bench: build
	$(BIN)/tulle lab bench
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/dataplane/ ./internal/plan/

clean:
	rm -rf $(BIN)
