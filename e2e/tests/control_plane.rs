//! The real control plane (etcd + kube-apiserver + kube-controller-manager v1.36 from
//! ../shared/k8s) starts on loopback, serves graygate's CRD with its CEL rules, and runs the real
//! Deployment controller. The groundwork the scenarios move onto.

use graygate::api::ChangeRequest;
use graygate_e2e::control_plane::{ControlPlane, eventually, yaml};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, PostParams};
use std::time::Duration;

/// Wait until the API server says the CRD `name` is established (it can be used).
async fn established(crds: &Api<CustomResourceDefinition>, name: &str) {
    eventually(
        "a CRD to be established",
        Duration::from_secs(60),
        || async {
            crds.get(name).await.is_ok_and(|c| {
                c.status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_control_plane_serves_the_crd_and_runs_deployments() {
    graygate::install_crypto_provider();
    let cp = ControlPlane::start().await.unwrap();
    let client = cp.client().await.unwrap();

    // A user installs the CRD with `kubectl apply`; it prints no warning (it used to warn:
    // unrecognized format "uint32").
    let out = std::process::Command::new("kubectl")
        .args(["apply", "-f"])
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../crds/graygate.io_changerequests.yaml"),
        )
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.to_lowercase().contains("warning"), "{stderr}");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    established(&crds, "changerequests.graygate.io").await;

    cp.deployment("shop", "web", 2, "shop/web:healthy")
        .await
        .unwrap();
    let rs: Api<ReplicaSet> = Api::namespaced(client.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually(
        "the Deployment controller to make a ReplicaSet and 2 pods",
        Duration::from_secs(60),
        || async {
            rs.list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.len() == 1)
                && pods
                    .list(&ListParams::default())
                    .await
                    .is_ok_and(|l| l.items.len() == 2)
        },
    )
    .await;

    let changes: Api<ChangeRequest> = Api::namespaced(client.clone(), "shop");
    let good: ChangeRequest = yaml(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {name: web-v2}\nspec:\n  target: {kind: Deployment, name: web}\n  images: {app: 'shop/web:healthy-v2'}\n  batches: [{replicas: 1, bake: 10s}, {percent: 100, bake: 10s}]\n",
    );
    changes.create(&PostParams::default(), &good).await.unwrap();
    // The schema rejects what graygate cannot act on, naming the field.
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::erase::<ChangeRequest>(&()),
    );
    let bad: DynamicObject = yaml(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {name: web-v3}\nspec:\n  target: {kind: DaemonSet, name: web}\n  images: {app: 'shop/web:healthy-v3'}\n  batches: [{percent: 100}]\n",
    );
    let err = dynamic
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.target.kind"), "{err}");

    // What graygate cannot read must not be stored, and errors must say what is wrong:
    // `bake: ""` used to be accepted (and then broke every list of the namespace), and
    // `batches: []` surfaced a CEL runtime error ("index out of bounds").
    let reject = |spec: &str| {
        let obj: DynamicObject = yaml(&format!(
            "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: web-bad}}\nspec:\n  target: {{kind: Deployment, name: web}}\n  images: {{app: 'shop/web:x'}}\n{spec}"
        ));
        let dynamic = dynamic.clone();
        async move {
            dynamic
                .create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .unwrap_err()
                .to_string()
        }
    };
    let err = reject("  batches: [{percent: 100, bake: ''}]\n").await;
    assert!(err.contains("spec.batches[0].bake"), "{err}");
    let err = reject("  batches: []\n").await;
    assert!(err.contains("spec.batches"), "{err}");
    assert!(!err.contains("index out of bounds"), "{err}");

    // The Gateway API CRDs the traffic scenarios need (printed from the gateway-api crate,
    // e2e/crds/gateway-api.yaml) install cleanly, and an HTTPRoute with two weighted backends is
    // stored as written; the schema still refuses a weight that is not a number.
    let out = std::process::Command::new("kubectl")
        .args(["apply", "-f"])
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds/gateway-api.yaml"))
        .env("KUBECONFIG", &cp.kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.to_lowercase().contains("warning"), "{stderr}");
    for name in [
        "gatewayclasses.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
    ] {
        established(&crds, name).await;
    }
    let routes: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
            "httproutes",
        ),
    );
    let route: DynamicObject = yaml(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\nspec:\n  parentRefs: [{name: shop-gateway}]\n  rules:\n  - matches: [{headers: [{name: x-canary, value: always}]}]\n    backendRefs: [{name: web-canary, port: 80}]\n  - backendRefs: [{name: web-stable, port: 80, weight: 95}, {name: web-canary, port: 80, weight: 5}]\n",
    );
    routes.create(&PostParams::default(), &route).await.unwrap();
    let stored = routes.get("web").await.unwrap();
    let weights: Vec<i64> = stored.data["spec"]["rules"][1]["backendRefs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights, [95, 5]);
    assert_eq!(
        stored.data["spec"]["rules"][0]["matches"][0]["headers"][0]["value"],
        "always"
    );
    let mut bad = route.clone();
    bad.metadata.name = Some("web-bad".into());
    bad.data["spec"]["rules"][1]["backendRefs"][0]["weight"] = "lots".into();
    let err = routes
        .create(&PostParams::default(), &bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight"), "{err}");
}
