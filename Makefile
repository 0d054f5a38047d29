# Entry points; each installs what is missing first (scripts/setup.sh).
.PHONY: run test test-host build install uninstall clean

# Where `make install` puts daxmm (DESTDIR is prepended, for staging).
PREFIX ?= /usr/local
DESTDIR ?=

run:
	scripts/run.sh $(ARGS)

test:
	scripts/test.sh

test-host:
	scripts/test.sh --host-only

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
