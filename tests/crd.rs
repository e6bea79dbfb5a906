//! The committed CRD YAML must be exactly what the code generates (`make crds` regenerates it).

#[test]
fn committed_crd_matches_the_code() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (path, crd) in [
        ("crds/graygate.io_changerequests.yaml", graygate::api::crd()),
        (
            "charts/graygate/crds/graygate.io_changerequests.yaml",
            graygate::api::crd(),
        ),
        (
            "crds/graygate.io_changepolicies.yaml",
            graygate::api::policy_crd(),
        ),
        (
            "charts/graygate/crds/graygate.io_changepolicies.yaml",
            graygate::api::policy_crd(),
        ),
    ] {
        let generated = serde_yaml::to_string(&crd).unwrap();
        let full = format!("{root}/{path}");
        let committed = std::fs::read_to_string(&full)
            .unwrap_or_else(|_| panic!("{path} is missing; run `make crds`"));
        assert!(
            committed == generated,
            "{path} differs from the generated CRD; run `make crds` and commit the result"
        );
    }
}

#[test]
fn crd_has_the_printer_columns_and_short_name() {
    let crd = graygate::api::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["chg".to_string()]));
    let cols: Vec<String> = crd.spec.versions[0]
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(cols, ["Target", "Phase", "Batch", "Verdict", "Age"]);
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
}
