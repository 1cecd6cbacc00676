//! The Kubernetes test rig (`scripts/k8s-lab.sh`) for real: a control plane comes
//! up, serves objects, enforces RBAC, is reachable from a test's network namespace,
//! and leaves no process, address or bridge behind. Needs root (CI runs as root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::k8s_lab::{KubeLab, lab_script, run_lab_script};
use common::{Netns, require_root, sh, wait_for};

const LAB_RUN: &str = "/run/hybridway-lab";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The PIDs of an instance's processes, read while it runs (down removes the files).
fn instance_pids(dir: &Path) -> Vec<(String, &'static str)> {
    ["etcd", "kube-apiserver"]
        .into_iter()
        .map(|program| {
            let pid = fs::read_to_string(dir.join(format!("{program}.pid"))).unwrap_or_default();
            (pid.trim().to_string(), program)
        })
        .collect()
}

/// `pid` still runs `program` (a PID reused by something else does not count).
fn running(pid: &str, program: &str) -> bool {
    !pid.is_empty()
        && fs::read(format!("/proc/{pid}/cmdline"))
            .map(|cmd| String::from_utf8_lossy(&cmd).contains(program))
            .unwrap_or(false)
}

/// What `down` must have left: none of the instance's processes, its address off
/// the bridge, and the bridge itself gone unless another instance still holds an
/// address (read under the rig's lock, so no instance is half-way through start).
fn assert_left_nothing(pids: &[(String, &str)], addr: &str) {
    for (pid, program) in pids {
        assert!(
            !running(pid, program),
            "{program} ({pid}) still runs after down"
        );
    }
    let out = Command::new("flock")
        .args([
            &format!("{LAB_RUN}/lock"),
            "sh",
            "-c",
            &format!(
                "ls -A {LAB_RUN}/addr; echo ---; ip -4 -o addr show dev hwlab0 2>/dev/null; \
                 echo ---; ip link show hwlab0 >/dev/null 2>&1 && echo bridge; true"
            ),
        ])
        .output()
        .expect("flock");
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.split("---").collect();
    let [reservations, addresses, bridge] = parts[..] else {
        panic!("unexpected output: {text}");
    };
    assert!(
        !addresses.contains(&format!(" {addr}/")),
        "{addr} still on hwlab0:\n{addresses}"
    );
    assert!(
        !(reservations.trim().is_empty() && bridge.contains("bridge")),
        "no instance is left, yet hwlab0 remains"
    );
}

#[test]
fn lab_serves_objects_enforces_rbac_and_is_reached_from_a_namespace() {
    require_root();
    let lab = KubeLab::up();
    let addr = lab.addr().to_string();
    assert!(addr.starts_with("198.18.200."), "address {addr}");

    // Objects, as a kubelet and an operator would create them.
    let node = lab.apply(
        r#"
apiVersion: v1
kind: Node
metadata:
  name: hybrid-node-1
  labels: {alibabacloud.com/nodepool-id: np-hybrid}
spec: {}
"#,
    );
    assert!(
        node.status.success(),
        "apply Node: {}",
        String::from_utf8_lossy(&node.stderr)
    );
    lab.kubectl_ok(&[
        "-n",
        "kube-system",
        "create",
        "configmap",
        "hybridway",
        "--from-literal=hybridPodCIDR=198.19.128.0/17",
    ]);
    assert_eq!(
        lab.kubectl_ok(&[
            "get",
            "node",
            "hybrid-node-1",
            "-o",
            "jsonpath={.metadata.labels.alibabacloud\\.com/nodepool-id}"
        ]),
        "np-hybrid"
    );
    assert_eq!(
        lab.kubectl_ok(&[
            "-n",
            "kube-system",
            "get",
            "configmap",
            "hybridway",
            "-o",
            "jsonpath={.data.hybridPodCIDR}"
        ]),
        "198.19.128.0/17"
    );
    // The API server and kubectl are the pinned release, not a v0.0.0 build.
    let version = lab.kubectl_ok(&["version", "-o", "json"]);
    let version: serde_json::Value = serde_json::from_str(&version).expect("version json");
    let server = version["serverVersion"]["gitVersion"]
        .as_str()
        .unwrap_or("");
    assert!(server.starts_with("v1."), "server version {server}");
    assert_eq!(
        version["clientVersion"]["gitVersion"], version["serverVersion"]["gitVersion"],
        "kubectl and kube-apiserver from the same release"
    );

    // RBAC is enforced: a service account without a role may not list nodes, by
    // the authorizer's own answer and by a real request with its token.
    lab.kubectl_ok(&["-n", "default", "create", "serviceaccount", "nobody"]);
    let can_i = lab.kubectl(&[
        "auth",
        "can-i",
        "list",
        "nodes",
        "--as",
        "system:serviceaccount:default:nobody",
    ]);
    assert_eq!(stdout(&can_i), "no");
    assert!(!can_i.status.success());
    let nobody = lab.service_account_kubeconfig("default", "nobody");
    let denied = lab.kubectl_as(&nobody, &["get", "nodes"]);
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success(), "listing nodes was allowed");
    assert!(
        err.contains("forbidden") && err.contains("system:serviceaccount:default:nobody"),
        "not an RBAC denial for the account: {err}"
    );
    // ... and the same token works once a role grants the verb: the denial above
    // was authorization, not a broken token.
    lab.kubectl_ok(&[
        "create",
        "clusterrole",
        "node-reader",
        "--verb=list,get",
        "--resource=nodes",
    ]);
    lab.kubectl_ok(&[
        "create",
        "clusterrolebinding",
        "nobody-reads-nodes",
        "--clusterrole=node-reader",
        "--serviceaccount=default:nobody",
    ]);
    let names = wait_for(Duration::from_secs(30), "the role binding to apply", || {
        let out = lab.kubectl_as(&nobody, &["get", "nodes", "-o", "name"]);
        out.status.success().then(|| stdout(&out))
    });
    assert_eq!(names, "node/hybrid-node-1");

    // A process inside a test's namespace reaches the API server over hwlab0, with
    // a node address from the on-premises range.
    let node_ns = Netns::new("rig");
    lab.attach(&node_ns.name, "lab0", "198.18.64.10/24");
    let readyz = node_ns.sh(&format!(
        "{} --kubeconfig {} get --raw /readyz",
        lab.kubectl_path().display(),
        lab.kubeconfig().display()
    ));
    assert_eq!(readyz.trim(), "ok");
    // The service account's identity works from there too.
    let whoami = node_ns.sh(&format!(
        "{} --kubeconfig {} auth whoami -o jsonpath='{{.status.userInfo.username}}'",
        lab.kubectl_path().display(),
        nobody.display()
    ));
    assert_eq!(whoami.trim(), "system:serviceaccount:default:nobody");
    lab.detach(&node_ns.name, "lab0");
    let gone = node_ns.try_sh("ip link show lab0");
    assert!(!gone.status.success(), "lab0 still in the namespace");

    let pids = instance_pids(lab.dir());
    for (pid, program) in &pids {
        assert!(running(pid, program), "{program} ({pid}) not running");
    }
    drop(lab);
    assert_left_nothing(&pids, &addr);
}

/// `down` while `up` is still starting the control plane stops all of it. etcd is
/// frozen (SIGSTOP) as soon as it starts, so kube-apiserver cannot become ready and
/// `up` is caught half-way for certain; a frozen etcd also ignores SIGTERM, so
/// `down` has to fall back to SIGKILL.
#[test]
fn down_stops_a_half_started_instance() {
    require_root();
    let dir = std::env::temp_dir().join(format!("hwlab-half-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut up = Command::new(lab_script())
        .arg("up")
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn k8s-lab.sh up");
    let etcd = wait_for(Duration::from_secs(600), "etcd to start", || {
        let pid = fs::read_to_string(dir.join("etcd.pid")).ok()?;
        running(pid.trim(), "etcd").then(|| pid.trim().to_string())
    });
    sh(&["kill", "-STOP", &etcd]);
    wait_for(Duration::from_secs(60), "kube-apiserver to start", || {
        dir.join("kube-apiserver.pid").exists().then_some(())
    });
    let addr = fs::read_to_string(dir.join("addr")).expect("the address was reserved");
    let pids = instance_pids(&dir);
    run_lab_script(&["down".as_ref(), dir.as_os_str()]);
    let status = up.wait().expect("wait for up");
    assert!(!status.success(), "up reported success after down");
    assert_left_nothing(&pids, addr.trim());
    let _ = fs::remove_dir_all(&dir);
}

/// An instance whose owner dies without running `down` (a test killed by Ctrl-C
/// or SIGKILL skips its Drop guard) is stopped by the watchdog `up` leaves.
#[test]
fn an_instance_outliving_its_owner_is_stopped() {
    require_root();
    let dir = std::env::temp_dir().join(format!("hwlab-orphan-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let mut owner = Command::new("sleep")
        .arg("infinity")
        .spawn()
        .expect("spawn the owner");
    let up = Command::new(lab_script())
        .arg("up")
        .arg(&dir)
        .env("HYBRIDWAY_LAB_OWNER_PID", owner.id().to_string())
        .stdin(Stdio::null())
        .output()
        .expect("k8s-lab.sh up");
    if !up.status.success() {
        let _ = owner.kill();
        run_lab_script(&["down".as_ref(), dir.as_os_str()]);
        panic!("up: {}", String::from_utf8_lossy(&up.stderr));
    }
    let addr = fs::read_to_string(dir.join("addr")).expect("the address");
    let pids = instance_pids(&dir);
    owner.kill().expect("kill the owner");
    owner.wait().expect("reap the owner");
    wait_for(
        Duration::from_secs(60),
        "the watchdog to stop the instance",
        || (!dir.join("addr").exists()).then_some(()),
    );
    assert_left_nothing(&pids, addr.trim());
    let _ = fs::remove_dir_all(&dir);
}
