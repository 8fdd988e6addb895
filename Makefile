# dedupx: one entry point for people and CI. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
# The process `make run` scans: PID=N, else the largest one dedupx may read.
PID ?=
APT_PACKAGES := gcc util-linux procps qemu-system-x86 busybox-static cpio chromium

.PHONY: help setup build run test test-rs test-py lint bench fmt agent fuzz fuzz-smoke churn kill9

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

setup: ## install system packages and build+install dedupx with its test tools
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
	rustup component add rustfmt clippy >/dev/null 2>&1 || true
	$(PYTHON) -m pip install -q --upgrade pip >/dev/null 2>&1 || true
	$(PYTHON) -m pip install -q ".[test]"
	$(PYTHON) -c 'from dedupx.report.html import warm_bundle_cache; warm_bundle_cache()'

run: setup ## build, install and scan the largest process on this host (or PID=N)
	dedupx scan $(if $(PID),--pid $(PID))

test: setup test-rs test-py lint fuzz-smoke ## everything: Rust tests, Python tests against real processes, lints

test-rs: ## Rust unit tests of the core (parsers, hashing, /proc readers, file formats)
	cargo test -p dedupx-core --quiet

test-py: ## pytest against real processes (needs root)
	$(PYTHON) -m pytest tests

lint: ## cargo fmt, clippy -D warnings, ruff, mypy, stubtest of the binding's .pyi
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --quiet -- -D warnings
	$(PYTHON) -m ruff check python tests bench fuzz/python
	$(PYTHON) -m ruff format --check python tests bench fuzz/python
	$(PYTHON) -m mypy python/dedupx
	$(PYTHON) -m mypy.stubtest dedupx._dedupx

fmt: ## format Rust and Python sources
	cargo fmt --all
	$(PYTHON) -m ruff format python tests bench fuzz/python
	$(PYTHON) -m ruff check --fix python tests bench fuzz/python

bench: setup ## GB/s and peak memory of a scan, an image, a host snapshot and a 2 GiB guest
	cd bench && $(PYTHON) scan_throughput.py && $(PYTHON) image_throughput.py && $(PYTHON) snapshot_throughput.py && $(PYTHON) vm_scan.py && $(PYTHON) report_time.py

churn: ## 1,000 scans, 100 snapshots under churn: outcome counts (CHURN_ONLY=1: snapshot the churn alone)
	cd bench && $(PYTHON) churn.py --scans $(or $(SCANS),1000) --snapshots $(or $(SNAPSHOTS),100) $(if $(CHURN_ONLY),--churn-only)

kill9: ## 100 host snapshots killed with SIGKILL at random moments: counts of each outcome
	cd bench && $(PYTHON) kill9.py --kills $(or $(KILLS),100)

agent: ## build dedupx-agent, static, to copy into a guest (target/x86_64-unknown-linux-gnu/release/)
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p dedupx-agent --target x86_64-unknown-linux-gnu

# Fuzzing. cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP lets the stable toolchain accept
# them. The committed seeds in fuzz/corpus/TARGET are read; new inputs go to
# fuzz/corpus-run/TARGET (git-ignored; copy only small, telling ones into the seeds), crashes
# to fuzz/artifacts/TARGET. `make fuzz` runs long (FUZZ_SECONDS per target); `make
# fuzz-smoke`, part of `make test`, runs every target briefly (FUZZ_SMOKE_SECONDS).
FUZZ_TARGETS ?= elf_core lime image iomem agent_file smaps
FUZZ_SECONDS ?= 600
FUZZ_SMOKE_SECONDS ?= 10
define fuzz_all
	command -v cargo-fuzz >/dev/null || cargo install -q --locked cargo-fuzz
	cd fuzz && for t in $(FUZZ_TARGETS); do \
		mkdir -p corpus-run/$$t && \
		RUSTC_BOOTSTRAP=1 cargo fuzz run -O $$t corpus-run/$$t corpus/$$t -- \
			-max_total_time=$(1) -rss_limit_mb=2048 -print_final_stats=1 2>&1 \
			| grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done|.*Test unit written)' \
			| sed "s/^/$$t: /"; [ $${PIPESTATUS[0]} -eq 0 ] || exit 1; \
	done
	mkdir -p fuzz/corpus-run/python_parsers
	$(PYTHON) fuzz/python/fuzz_parsers.py fuzz/corpus-run/python_parsers \
		fuzz/corpus/python_parsers -max_total_time=$(1) -print_final_stats=1 2>&1 \
		| grep -E '^(stat::number_of_executed_units|==|Traceback|Done|.*Test unit written|[A-Za-z]*Error)' \
		| sed "s/^/python_parsers: /"; [ $${PIPESTATUS[0]} -eq 0 ]
endef

fuzz: ## fuzz the parsers of untrusted input, FUZZ_SECONDS (600) per target
	$(call fuzz_all,$(FUZZ_SECONDS))

fuzz-smoke: ## every fuzz target for FUZZ_SMOKE_SECONDS (10): part of `make test`
	$(call fuzz_all,$(FUZZ_SMOKE_SECONDS))
