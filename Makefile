# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: demo test deps crds chart

deps:
	@bash scripts/install-deps.sh

# Format, lint, check the Helm chart, then every test (unit, fixtures, chart RBAC, end to end).
test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	python3 scripts/chart/check.py
	# Two tests a core: end-to-end scenarios mostly wait on bakes and scrapes (at three tests on
	# 2 cores the CPU was 42% busy on average over the scenarios, vmstat every 15 s in a CI run).
	cargo nextest run --workspace --no-fail-fast --test-threads $$(( $$(nproc) * 2 ))

# Lint and render the Helm chart with every values file, validate the objects, test the alerts.
chart: deps
	python3 scripts/chart/check.py

# Regenerate the CRD from the code, for kubectl users (crds/) and for the Helm chart.
crds:
	cargo run --quiet -- crd > crds/graygate.io_changerequests.yaml
	cargo run --quiet -- crd changepolicies > crds/graygate.io_changepolicies.yaml
	cp crds/graygate.io_changerequests.yaml crds/graygate.io_changepolicies.yaml charts/graygate/crds/

# Build, start the local control plane, Prometheus and graygate, apply examples/demo, print a live timeline.
demo: deps
	cargo build --workspace --quiet
	./target/debug/graygate-demo
