# Everyday tasks. `make demo` and `make test` are the two set-up commands;
# both bring Redis, Postgres and NATS up first when they are not reachable.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
SCENARIO ?= burst

# Test suites create their own databases from this server and their own
# Redis key prefixes, so they never touch the demo's data.
export SECKILL_TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
export SECKILL_TEST_REDIS_URL ?= redis://127.0.0.1:6379
export SECKILL_TEST_NATS_URL ?= nats://127.0.0.1:4222

# DEV-ONLY secrets for `make demo` / `make run` / `make loadtest` on a
# laptop. Never use these values anywhere reachable: set your own
# SECKILL_ADMIN_TOKEN and SECKILL_JWT_SECRET in the environment or in .env.
DEMO_ENV := SECKILL_ADMIN_TOKEN="$${SECKILL_ADMIN_TOKEN:-dev-only-admin-token-change-me}" \
            SECKILL_JWT_SECRET="$${SECKILL_JWT_SECRET:-dev-only-jwt-secret-change-me-0123456789abcdef}"

.PHONY: help services build migrate run test lint fmt bench demo loadtest faults model fuzz-api alerts

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

services: ## make sure Redis, Postgres and NATS (JetStream) answer and the database exists
	scripts/services.sh

build: ## release build of the whole workspace
	$(CARGO) build --release --workspace

migrate: services ## apply the migrations to SECKILL_DATABASE_URL
	$(DEMO_ENV) $(CARGO) run --release --bin seckill -- migrate

run: services migrate ## run the engine in the foreground
	$(DEMO_ENV) $(CARGO) run --release --bin seckill -- serve

test: services ## the whole suite against real Redis, Postgres and NATS, promtool, the dashboard in Chromium, a short schemathesis run
	scripts/ensure-tools.sh haproxy:haproxy
	scripts/promtool.sh
	@if docker compose version >/dev/null 2>&1; then \
		echo "docker compose config -q"; docker compose config -q; \
	else \
		echo "docker compose not available: skipping docker-compose.yml validation"; \
	fi
	$(CARGO) test --workspace
	scripts/dashboard-browser.sh
	scripts/fuzz-api.sh --short

fuzz-api: services ## schemathesis against /openapi.json, long (FUZZ_MAX_TIME=600 FUZZ_MAX_EXAMPLES=500 FUZZ_SEED=)
	scripts/fuzz-api.sh

alerts: ## promtool: check the Prometheus config and alert rules, run their unit tests
	scripts/promtool.sh

lint: ## formatting and clippy, warnings are errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the workspace
	$(CARGO) fmt --all

bench: services ## SPEC §7 figures: HTTP ratios, writer drain, limiter memory, Redis ceiling, criterion, one hot item on 1-3 Redis masters
	$(DEMO_ENV) scripts/bench.sh

demo: ## services, build, migrate, engine, a burst sale, report, stop
	$(DEMO_ENV) scripts/demo.sh

loadtest: ## like demo with SCENARIO=burst|sellout-storm|slow-payers|retry-storm|smoke
	$(DEMO_ENV) SCENARIO="$(SCENARIO)" scripts/demo.sh

faults: services ## fault-injection tests (kill -9, restarts, stalls), one at a time
	$(CARGO) test --release --test faults -- --include-ignored --test-threads=1 --nocapture
	$(CARGO) test --release --test ops master_killed_mid_sale_lagging_replica -- --include-ignored --nocapture

model: services ## the Lua scripts against their reference model, long (SEEDS=200 STEPS=5000 by default)
	SECKILL_MODEL_SEEDS="$${SEEDS:-200}" SECKILL_MODEL_STEPS="$${STEPS:-5000}" SECKILL_MODEL_SEED="$${SEED:-1}" \
		$(CARGO) test --test api model -- --nocapture
