//! `hybridway check-config` on every kind of file the project documents: the
//! agent's configuration (also with the `bgp` section `hybridway bgp-speaker`
//! reads), its Kubernetes-mode local file and the controller's parameters (bare or
//! as the ConfigMap manifest in deploy/).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn check(path: &Path, extra: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hybridway"))
        .arg("check-config")
        .arg("-c")
        .arg(path)
        .args(extra)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every documented example under deploy/ is accepted, detected as its kind, and
/// the answer says which kind was checked.
#[test]
fn every_documented_example_is_accepted_as_its_kind() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    for (file, kind, said) in [
        ("agent-example.yaml", "agent", "ok (agent configuration)"),
        (
            "agent-kubernetes.yaml",
            "local",
            "ok (agent local configuration (Kubernetes mode))",
        ),
        (
            "controller-config.yaml",
            "controller",
            "ok (controller parameters)",
        ),
        ("bgp-speaker.yaml", "agent", "ok (agent configuration)"),
    ] {
        let (ok, text) = check(&deploy.join(file), &[]);
        assert!(ok && text.contains(said), "{file}: {text}");
        let (ok, text) = check(&deploy.join(file), &["--kind", kind]);
        assert!(ok && text.contains(said), "{file} as {kind}: {text}");
    }
    // A speaker's file checked as the Kubernetes-mode local file is refused (its
    // node facts and bgp section come from the cluster there): the kind matters.
    let (ok, text) = check(&deploy.join("bgp-speaker.yaml"), &["--kind", "local"]);
    assert!(!ok && text.contains("local configuration"), "{text}");
}

#[test]
fn both_kinds_of_file() {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    assert!(check(&deploy.join("agent-example.yaml"), &[]).0);
    assert!(check(&deploy.join("controller-config.yaml"), &[]).0);
    assert!(
        check(
            &deploy.join("controller-config.yaml"),
            &["--kind", "controller"]
        )
        .0
    );
    // The agent's parser rejects the controller's file: the kind matters.
    assert!(!check(&deploy.join("controller-config.yaml"), &["--kind", "agent"]).0);

    let dir = std::env::temp_dir().join(format!("hw-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("params.yaml");
    std::fs::write(
        &bad,
        "hybridPodCIDR: 198.19.0.0/16\nnodePools:\n- {name: a, mode: overlay, nodeSelector: {matchLabels: {p: a}}}\ncheckRanges:\n  serviceCIDRs: [198.19.128.0/20]\n",
    )
    .unwrap();
    let (ok, text) = check(&bad, &[]);
    assert!(!ok);
    assert!(
        text.contains("line 5: checkRanges.serviceCIDRs: hybridPodCIDR 198.19.0.0/16 overlaps serviceCIDR 198.19.128.0/20"),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
