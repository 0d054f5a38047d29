# Entry points; each installs what is missing first (scripts/setup.sh).
.PHONY: run test test-host build install uninstall clean bench bench-vm bench-check benchmarks

# Where `make install` puts daxmm (DESTDIR is prepended, for staging).
PREFIX ?= /usr/local
DESTDIR ?=

run:
	scripts/run.sh $(ARGS)

test:
	scripts/test.sh

test-host:
	scripts/test.sh --host-only

# daxmm bench, optimised: ARGS (default: all) go to `daxmm bench`, e.g.
# make bench ARGS='fault --device emulated:size=256M,align=2M --plot .build/bench.svg'
bench:
	scripts/bench.sh $(ARGS)

# daxmm bench all on the 4K, 2M and 1G devices of the project's VM, with fio;
# JSON, SVG and tables in .build/bench-results. KERNEL=6.12 for Debian 12's.
bench-vm:
	KERNEL='$(KERNEL)' scripts/bench-vm.sh

build:
	scripts/setup.sh && . scripts/env.sh && swift build

# Release build; the binary, shell completions, man page and the VM scripts
# under $(DESTDIR)$(PREFIX) (scripts/install.sh lists them).
install:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' scripts/install.sh install

uninstall:
	PREFIX='$(PREFIX)' DESTDIR='$(DESTDIR)' scripts/install.sh uninstall

clean:
	rm -rf .build

# The regression check before committing a hot-path change: each port case's
# ratio (port/floor, time/1 GiB, two-thread speedup) against
# Benchmarks/port-ratios.json; ARGS='--update' rewrites the baseline.
bench-check:
	scripts/bench-check.sh $(ARGS)

# The package benchmarks (ordo-one/benchmark, release): every port case with
# its floor ratio and the malloc counter (an allocation on a fault, zap or
# GUP path fails the run). ARGS go to `swift package benchmark`.
benchmarks:
	scripts/setup.sh && . scripts/env.sh && cd Benchmarks && swift package benchmark --target PortBenchmarks --scale --no-progress $(ARGS)
