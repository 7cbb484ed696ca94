# The two commands of the README, and their parts. Each installs what is missing first.
.PHONY: demo test chaos build bench stop services clean fuzz image

demo:      ## run the demo: what running needs (deps.sh run), the outboxd target, services, topic, schema, outboxd, messages arriving in Kafka
	scripts/demo.sh

test:      ## run the whole test suite (what CI runs)
	scripts/test.sh

chaos:     ## long form of the e2e delivery harness: every scenario longer, more faults, a table (tests/e2e/README.md)
	scripts/build.sh
	tests/e2e/run.sh -long

build:     ## install the developer's packages (deps.sh dev) and build outboxd, the tests and the examples
	scripts/build.sh

bench:     ## run the benchmarks (see bench/README.md)
	bench/run.sh

services:  ## start the local PostgreSQL and Kafka
	scripts/services.sh start

stop:      ## stop the demo's outboxd and the local services
	scripts/demo.sh stop
	scripts/services.sh stop

clean:     ## remove the build (keeps the downloaded Kafka jars and the database)
	rm -rf build

fuzz:      ## long form of the configuration fuzzer (ASan/UBSan): 50,000 mutants of config/outboxd.toml, a new seed each run (printed; FUZZ_SEED=N replays it)
	scripts/build.sh
	cmake --build build --target config_fuzz
	build/tests/config_fuzz config/outboxd.toml $${FUZZ_COUNT:-50000} $${FUZZ_SEED:-}

image:     ## build the container image with Podman (scripts/image.sh) and run it against the local services
	scripts/deps.sh image
	scripts/services.sh start >/dev/null
	tests/scripts/image_test.sh
