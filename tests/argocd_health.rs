//! The Argo CD health check (charts/graygate/argocd/health.lua) run in Lua 5.1, the dialect Argo
//! CD embeds (gopher-lua), against a sample status of every phase; docs/gitops.md carries it verbatim.

use graygate::api::Phase;
use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};

fn script() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/graygate/argocd/health.lua"
    ))
    .unwrap()
}

/// Run the health check on `obj` as Argo CD does: `obj` global, the chunk returns the status table.
fn health(obj: &Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let value = lua.to_value_with(obj, options).unwrap();
    lua.globals().set("obj", value).unwrap();
    let hs: mlua::Table = lua.load(script()).set_name("health.lua").eval().unwrap();
    (
        hs.get("status").unwrap(),
        hs.get("message").unwrap_or_default(),
    )
}

fn change(status: Value) -> Value {
    json!({
        "apiVersion": "graygate.io/v1alpha1",
        "kind": "ChangeRequest",
        "metadata": {"name": "web-v2", "namespace": "shop", "generation": 2},
        "spec": {"target": {"kind": "Deployment", "name": "web"}},
        "status": status,
    })
}

#[test]
fn every_phase_maps_to_an_argo_cd_health_status() {
    for phase in Phase::ALL {
        let expected = match phase {
            // A superseded change ended without harm: a newer one carries on.
            Phase::Succeeded | Phase::Superseded => "Healthy",
            // Superseding: its canary goes while the newer change waits; routine, not harm.
            Phase::Pending | Phase::Progressing | Phase::Blocked | Phase::Superseding => {
                "Progressing"
            }
            Phase::AwaitingApproval | Phase::Paused => "Suspended",
            Phase::RollingBack | Phase::RolledBack | Phase::Failed | Phase::Invalid => "Degraded",
        };
        let obj = change(json!({
            "phase": phase.as_str(),
            "observedGeneration": 2,
            "batch": "2/3",
            "message": "batch 2/3: baking",
        }));
        let (status, message) = health(&obj);
        assert_eq!(status, expected, "{phase:?}");
        assert_eq!(message, format!("{}: batch 2/3: baking", phase.as_str()));
    }
}

#[test]
fn a_missing_or_stale_status_is_progressing() {
    let (status, message) = health(&change(Value::Null));
    assert_eq!(status, "Progressing");
    assert!(message.contains("pick up"), "{message}");
    let (status, message) = health(&change(
        json!({"phase": "Succeeded", "observedGeneration": 1}),
    ));
    assert_eq!(
        status, "Progressing",
        "a Succeeded status of the previous spec"
    );
    assert!(message.contains("latest spec"), "{message}");
}

#[test]
fn the_batch_is_named_once_in_the_message() {
    let (_, message) = health(&change(json!({
        "phase": "AwaitingApproval",
        "observedGeneration": 2,
        "batch": "2/3",
        "message": "waits for graygate.io/approve=2",
    })));
    assert_eq!(
        message,
        "AwaitingApproval: batch 2/3: waits for graygate.io/approve=2"
    );
    let (status, message) = health(&change(json!({"phase": "Failed"})));
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Degraded", "Failed: Failed")
    );
}

#[test]
fn docs_carry_the_script_verbatim() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/gitops.md")).unwrap();
    let indented: String = script()
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert!(
        doc.contains(&indented),
        "docs/gitops.md's argocd-cm example differs from charts/graygate/argocd/health.lua"
    );
}
