# Entry points; each installs what is missing first (scripts/setup.sh).
.PHONY: run test test-host build clean

run:
	scripts/run.sh $(ARGS)

test:
	scripts/test.sh

test-host:
	scripts/test.sh --host-only

build:
	scripts/setup.sh && . scripts/env.sh && swift build

clean:
	rm -rf .build
