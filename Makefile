# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo test deps lint unit crds

deps:
	@bash scripts/install-deps.sh

# Format, lint, check generated files, then every test (unit, fixtures, end to end).
test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo nextest run --workspace --no-fail-fast

crds:
	cargo run --quiet -- crd > crds/graygate.io_changerequests.yaml
