# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo test deps crds

deps:
	@bash scripts/install-deps.sh

# Format, lint, check generated files, then every test (unit, fixtures, end to end).
test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo nextest run --workspace --no-fail-fast

crds:
	cargo run --quiet -- crd > crds/graygate.io_changerequests.yaml

# Build, start the simulated cluster, Prometheus and graygate, apply examples/demo, print a live timeline.
demo: deps
	cargo build --workspace --quiet
	./target/debug/graygate-demo
