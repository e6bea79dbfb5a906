"""Install or upgrade a Helm release with Helm's own Go SDK (PyPI helm-python-sdk), as
`helm install` / `helm upgrade` would: used by the guarded-workload scenario.

usage: helm-release.py KUBECONFIG CHART_DIR RELEASE NAMESPACE install|upgrade VALUES_JSON
"""

import json
import sys

import helm_python


def main() -> int:
    if len(sys.argv) != 7 or sys.argv[5] not in ("install", "upgrade"):
        print(__doc__, file=sys.stderr)
        return 2
    kubeconfig, chart, release, namespace, action, values = sys.argv[1:]
    config = helm_python.Config(kubeconfig_path=kubeconfig, namespace=namespace)
    run = config.install if action == "install" else config.upgrade
    try:
        result = run(chart, release, json.loads(values), namespace=namespace, timeout=60)
    except helm_python.HelmError as e:
        print(f"helm {action} {release}: {e}", file=sys.stderr)
        return 1
    finally:
        config.close()
    print(f"helm {action} {release}: {result!r}"[:400])
    return 0


if __name__ == "__main__":
    sys.exit(main())
