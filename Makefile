# Thin wrapper over CMake (as neovim does). Every target first makes sure the
# Debian packages loam needs are installed (as root, apt-get) and configured.
BUILD ?= build
CMAKE_FLAGS ?=
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: all deps configure build demo test bench install clean asan tsan ubsan valgrind

all: build

deps:
	@sh tools/install-deps.sh

$(BUILD)/CMakeCache.txt:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(BUILD) $(CMAKE_FLAGS)

configure: $(BUILD)/CMakeCache.txt

build: configure
	cmake --build $(BUILD) -j $(JOBS)

demo: build
	@sh tools/demo.sh $(BUILD)

test: build
	ctest --test-dir $(BUILD) --output-on-failure -j $(JOBS)

# Benchmarks measure an optimised build (Release, -O3) in a tree of its own:
# the default RelWithDebInfo (-O2) moves the Lisp example's time against
# Boehm's by a tenth (docs/benchmarks.md), and the tables are Release's.
BENCH_BUILD ?= build-release
bench:
	@$(MAKE) --no-print-directory build BUILD=$(BENCH_BUILD) CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS)"
	@sh tools/install-deps.sh bench
	bash bench/run.sh $(BENCH_BUILD)

install: build
	cmake --install $(BUILD)

# Sanitizer and valgrind runs of the whole suite, each in its own build tree.
asan:
	@$(MAKE) --no-print-directory test BUILD=build-asan CMAKE_FLAGS="-DLOAM_SANITIZE=address -DLOAM_BUILD_BENCH=OFF"
ubsan:
	@$(MAKE) --no-print-directory test BUILD=build-ubsan CMAKE_FLAGS="-DLOAM_SANITIZE=undefined -DLOAM_BUILD_BENCH=OFF"
tsan:
	@$(MAKE) --no-print-directory test BUILD=build-tsan CMAKE_FLAGS="-DLOAM_SANITIZE=thread -DLOAM_BUILD_BENCH=OFF"
valgrind:
	@$(MAKE) --no-print-directory test BUILD=build-valgrind CMAKE_FLAGS="-DLOAM_VALGRIND=ON -DLOAM_BUILD_BENCH=OFF"

clean:
	rm -rf $(BUILD) $(BENCH_BUILD) build-asan build-ubsan build-tsan build-valgrind
