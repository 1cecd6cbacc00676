//! `deploy/` as a cluster gets it (`kubectl apply -k deploy/`), on a real
//! kube-apiserver from the rig: every object accepted (server-side dry run, then for
//! real), the example BGP set-up after it, what each ServiceAccount may and may not
//! do (`kubectl auth can-i --as`, printed as a table), and the Node admission
//! policies refusing what RBAC cannot: an agent writing another Node or an
//! annotation that is not flannel's, a controller touching labels or taints. The
//! controller itself runs with its ServiceAccount against the installed policies.
//! Needs root (CI runs as root); the first test reads the files only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::controller::{ControllerProc, create_parallel, node_yaml, wait_blocks};
use common::k8s_lab::KubeLab;
use hybridway_control::k8s::flannel::{self, Vtep};
use hybridway_control::k8s::{agent_watch, annotations};
use serde_yaml::Value;

const WAIT: Duration = Duration::from_secs(90);
const AGENT: &str = "system:serviceaccount:kube-system:hybridway-agent";
const CONTROLLER: &str = "system:serviceaccount:kube-system:hybridway-controller";
/// The label the example pools select on (controller-config.yaml).
const POOL_LABEL: &str = "alibabacloud.com/nodepool-id";

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every document of a multi-document YAML file under deploy/.
fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The values of `POOL_LABEL` a workload's required node affinity names with `op`.
fn affinity_pools(workload: &Value, op: &str) -> BTreeSet<String> {
    let terms = &workload["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let mut out = BTreeSet::new();
    for term in terms.as_sequence().unwrap() {
        for e in term["matchExpressions"].as_sequence().unwrap() {
            if e["key"] == POOL_LABEL && e["operator"] == op {
                for v in e["values"].as_sequence().unwrap() {
                    out.insert(v.as_str().unwrap().to_string());
                }
            }
        }
    }
    out
}

/// The agents run on exactly the pools the controller gives blocks to, and the
/// controller's replicas never on them; the kustomization installs every manifest
/// in deploy/ except the two files that are not Kubernetes objects.
#[test]
fn manifests_agree_with_each_other() {
    let params = kind(&documents("controller-config.yaml"), "ConfigMap")["data"]["config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let params: Value = serde_yaml::from_str(&params).unwrap();
    let pools: BTreeSet<String> = params["nodePools"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            let labels = &p["nodeSelector"]["matchLabels"];
            labels[POOL_LABEL]
                .as_str()
                .unwrap_or_else(|| panic!("pool {p:?} is not selected by {POOL_LABEL}"))
                .to_string()
        })
        .collect();
    let agent = kind(&documents("agent.yaml"), "DaemonSet").clone();
    let controller = kind(&documents("controller.yaml"), "Deployment").clone();
    assert_eq!(
        affinity_pools(&agent, "In"),
        pools,
        "agent.yaml vs the pools"
    );
    assert_eq!(
        affinity_pools(&controller, "NotIn"),
        pools,
        "controller.yaml vs the pools"
    );
    assert_eq!(controller["spec"]["replicas"], 3);

    let kustomization = &documents("kustomization.yaml")[0];
    let mut installed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    for generator in kustomization["configMapGenerator"].as_sequence().unwrap() {
        for f in generator["files"].as_sequence().unwrap() {
            let f = f.as_str().unwrap();
            installed.insert(f.split_once('=').map_or(f, |(_, file)| file).to_string());
        }
    }
    let not_objects = [
        "agent-example.yaml",
        "bgp-speaker.yaml",
        "kustomization.yaml",
    ];
    for entry in std::fs::read_dir(deploy_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let manifest = name.ends_with(".yaml") || name.ends_with(".conflist");
        if manifest && !not_objects.contains(&name.as_str()) {
            assert!(
                installed.contains(&name),
                "{name} is not in kustomization.yaml"
            );
        }
    }
    for name in not_objects.iter().take(2) {
        assert!(
            !installed.contains(*name),
            "{name} is not a Kubernetes object"
        );
    }
    for crd in std::fs::read_dir(deploy_dir().join("crds")).unwrap() {
        let name = format!("crds/{}", crd.unwrap().file_name().to_string_lossy());
        assert!(
            installed.contains(&name),
            "{name} is not in kustomization.yaml"
        );
    }
}

/// Every probe waits longer than the metrics endpoint's 1 s request deadline (the
/// kubelet's default timeout is that same 1 s: a busy node would be killed).
#[test]
fn probes_wait_longer_than_the_endpoints_deadline() {
    for (file, workload) in [
        ("agent.yaml", "DaemonSet"),
        ("controller.yaml", "Deployment"),
    ] {
        let docs = documents(file);
        let containers = kind(&docs, workload)["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap();
        let mut probes = 0;
        for c in containers {
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                if c[probe].is_null() {
                    continue;
                }
                probes += 1;
                let timeout = c[probe]["timeoutSeconds"].as_u64().unwrap_or(1);
                assert!(timeout > 1, "{file}: {probe} times out after {timeout} s");
            }
        }
        assert!(probes >= 2, "{file}: no probes found");
    }
}

/// A rig with `deploy/` applied as the README says (server-side dry run first) and
/// the example BGP set-up after it.
fn installed_lab() -> KubeLab {
    let lab = KubeLab::up();
    let dir = deploy_dir();
    let dir = dir.to_str().unwrap();
    let dry = lab.kubectl(&["apply", "--dry-run=server", "-k", dir]);
    assert!(dry.status.success(), "server dry run:\n{}", text(&dry));
    let dry = text(&dry);
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/bgpclusterconfigs.network.alibabacloud.com",
        "configmap/hybridway-config",
        "deployment.apps/hybridway-controller",
        "poddisruptionbudget.policy/hybridway-controller",
        "daemonset.apps/hybridway-agent",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hybridway-agent-own-node",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hybridway-agent-own-node",
        "validatingadmissionpolicy.admissionregistration.k8s.io/hybridway-agent-own-speaker-status",
        "validatingadmissionpolicybinding.admissionregistration.k8s.io/hybridway-agent-own-speaker-status",
        "role.rbac.authorization.k8s.io/hybridway-bgp-secrets",
        "rolebinding.rbac.authorization.k8s.io/hybridway-bgp-secrets",
    ] {
        assert!(
            dry.contains(&format!("{object} created (server dry run)")),
            "{object} missing from the dry run:\n{dry}"
        );
    }
    lab.kubectl_ok(&["apply", "-k", dir]);
    lab.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/bgpclusterconfigs.network.alibabacloud.com",
    ]);
    let examples = format!("{dir}/examples");
    let dry = lab.kubectl(&["apply", "--dry-run=server", "-k", &examples]);
    assert!(dry.status.success(), "examples dry run:\n{}", text(&dry));
    lab.kubectl_ok(&["apply", "-k", &examples]);
    wait_policies_enforced(&lab);
    lab
}

/// The API server enforces an admission policy only once its informers have seen
/// the policy and its binding, some time after `apply` returns (longer on a loaded
/// machine). Waits until each of the three refuses a request it exists to refuse:
/// server-side dry runs as the agent or the controller (impersonated, with
/// system:masters so that RBAC does not answer first), which change nothing.
fn wait_policies_enforced(lab: &KubeLab) {
    let node = lab.dir().join("policy-probe-node.yaml");
    std::fs::write(
        &node,
        "apiVersion: v1\nkind: Node\nmetadata: {name: policy-probe}\n",
    )
    .unwrap();
    let node = node.to_str().unwrap();
    let create_node = ["create", "--dry-run=server", "-f", node];
    let patch_status = [
        "patch",
        "bgpclusterconfig",
        "onprem-underlay",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"speakers":[]}}"#,
        "--dry-run=server",
    ];
    let probes: [(&str, &[&str], &str); 3] = [
        (
            AGENT,
            &create_node,
            "the hybridway agent never creates or deletes Nodes",
        ),
        (
            CONTROLLER,
            &create_node,
            "the hybridway controller never creates or deletes Nodes",
        ),
        (
            AGENT,
            &patch_status,
            "may change BGPClusterConfig status only with a token bound",
        ),
    ];
    for (user, args, why) in probes {
        let mut last = String::new();
        let enforced = hybridway_lab::poll(WAIT, || {
            let mut all = vec![
                format!("--as={user}"),
                "--as-group=system:masters".to_string(),
            ];
            all.extend(args.iter().map(|a| a.to_string()));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let out = lab.kubectl(&all);
            last = text(&out);
            (!out.status.success() && last.contains(why)).then_some(())
        });
        assert!(
            enforced.is_some(),
            "admission policy not enforced after {WAIT:?} ({why}): {last}"
        );
    }
}

#[test]
fn deploy_applies_and_every_object_is_there() {
    let lab = installed_lab();
    let dir = deploy_dir();
    // Every object of the kustomization, read back by name.
    let listed = lab.kubectl_ok(&["get", "-k", dir.to_str().unwrap(), "-o", "name"]);
    let rendered = lab.kubectl_ok(&["kustomize", dir.to_str().unwrap()]);
    let count = rendered.matches("\nkind: ").count() + usize::from(rendered.starts_with("kind: "));
    assert_eq!(listed.lines().count(), count, "{listed}");
    let read = |what: &str, path: &str| {
        lab.kubectl_ok(&[
            "-n",
            "kube-system",
            "get",
            what,
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    assert_eq!(
        read("deployment/hybridway-controller", "{.spec.replicas}"),
        "3"
    );
    assert_eq!(
        read(
            "daemonset/hybridway-agent",
            "{.spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath}"
        ),
        "spec.nodeName"
    );
    // The generated ConfigMaps the DaemonSet names exist under those names.
    for volume in ["agent-config", "cni-config"] {
        let name = read(
            "daemonset/hybridway-agent",
            &format!("{{.spec.template.spec.volumes[?(@.name==\"{volume}\")].configMap.name}}"),
        );
        lab.kubectl_ok(&["-n", "kube-system", "get", "configmap", &name]);
    }
    lab.kubectl_ok(&["get", "bgpclusterconfig", "onprem-underlay"]);
    lab.kubectl_ok(&["-n", "kube-system", "get", "secret", "bgp-secret"]);
}

/// One row of the RBAC matrix.
struct Can {
    who: &'static str,
    verb: &'static str,
    resource: &'static str,
    ns: Option<&'static str>,
    allowed: bool,
}

const fn can(
    who: &'static str,
    verb: &'static str,
    resource: &'static str,
    ns: Option<&'static str>,
    allowed: bool,
) -> Can {
    Can {
        who,
        verb,
        resource,
        ns,
        allowed,
    }
}

const KS: Option<&str> = Some("kube-system");
const DEFAULT: Option<&str> = Some("default");

#[rustfmt::skip]
const MATRIX: &[Can] = &[
    // The agent: Nodes (its own, by the admission policy), BGP configs and its status
    // entry, the BGP password Secrets of kube-system by name (the example's).
    can("agent", "watch", "nodes", None, true),
    can("agent", "patch", "nodes", None, true),
    can("agent", "create", "nodes", None, false),
    can("agent", "delete", "nodes", None, false),
    can("agent", "patch", "nodes/status", None, false),
    can("agent", "watch", "bgpclusterconfigs.network.alibabacloud.com", None, true),
    can("agent", "patch", "bgpclusterconfigs.network.alibabacloud.com/status", None, true),
    can("agent", "patch", "bgpclusterconfigs.network.alibabacloud.com", None, false),
    can("agent", "get", "secrets/bgp-secret", KS, true),
    can("agent", "watch", "secrets/bgp-secret", KS, true),
    can("agent", "list", "secrets", KS, false),
    can("agent", "watch", "secrets", KS, false),
    can("agent", "get", "secrets/other", KS, false),
    can("agent", "list", "secrets", DEFAULT, false),
    can("agent", "get", "secrets", DEFAULT, false),
    can("agent", "create", "secrets", KS, false),
    can("agent", "get", "configmaps", KS, false),
    can("agent", "update", "leases.coordination.k8s.io", KS, false),
    can("agent", "create", "pods", KS, false),
    can("agent", "list", "pods", None, false),
    // The controller: Node IPAM, ServiceCIDR discovery, BGP config status, its Lease,
    // its ConfigMap, Events; Secrets of kube-system by name only.
    can("controller", "watch", "nodes", None, true),
    can("controller", "patch", "nodes", None, true),
    can("controller", "create", "nodes", None, false),
    can("controller", "delete", "nodes", None, false),
    can("controller", "list", "servicecidrs.networking.k8s.io", None, true),
    can("controller", "watch", "bgpclusterconfigs.network.alibabacloud.com", None, true),
    can("controller", "patch", "bgpclusterconfigs.network.alibabacloud.com/status", None, true),
    can("controller", "update", "bgpclusterconfigs.network.alibabacloud.com", None, false),
    can("controller", "create", "leases.coordination.k8s.io", KS, true),
    can("controller", "update", "leases.coordination.k8s.io/hybridway-controller", KS, true),
    can("controller", "update", "leases.coordination.k8s.io/other", KS, false),
    can("controller", "watch", "configmaps/hybridway-config", KS, true),
    can("controller", "get", "configmaps/other", KS, false),
    can("controller", "get", "secrets/bgp-secret", KS, true),
    can("controller", "get", "secrets/other", KS, false),
    can("controller", "list", "secrets", KS, false),
    can("controller", "get", "secrets", DEFAULT, false),
    can("controller", "create", "events.events.k8s.io", DEFAULT, true),
    can("controller", "create", "pods", KS, false),
    can("controller", "update", "deployments.apps", KS, false),
];

#[test]
fn rbac_matrix_of_both_identities() {
    let lab = installed_lab();
    let mut table = format!(
        "{:<11} {:<7} {:<52} {:<12} {:<7} {}\n",
        "identity", "verb", "resource", "namespace", "may", "expected"
    );
    let mut wrong = vec![];
    for row in MATRIX {
        let who = if row.who == "agent" {
            AGENT
        } else {
            CONTROLLER
        };
        let mut args = vec!["auth", "can-i", row.verb, "--as", who];
        match row.resource.strip_suffix("/status") {
            Some(resource) => args.extend([resource, "--subresource", "status"]),
            None => args.push(row.resource),
        }
        if let Some(ns) = row.ns {
            args.extend(["-n", ns]);
        }
        let answer = String::from_utf8_lossy(&lab.kubectl(&args).stdout)
            .trim()
            .to_string();
        let allowed = answer == "yes";
        table.push_str(&format!(
            "{:<11} {:<7} {:<52} {:<12} {:<7} {}\n",
            row.who,
            row.verb,
            row.resource,
            row.ns.unwrap_or("(cluster)"),
            answer,
            if allowed == row.allowed {
                "ok"
            } else {
                "WRONG"
            }
        ));
        if allowed != row.allowed {
            wrong.push(format!(
                "{} {} {} {:?}",
                row.who, row.verb, row.resource, row.ns
            ));
        }
    }
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "RBAC differs from the matrix: {wrong:?}\n{table}"
    );
}

/// kubectl with a bare token (no admin certificate), as a workload would call.
fn as_token(lab: &KubeLab, token: &str, args: &[&str]) -> Output {
    let ca = lab.dir().join("pki/ca.crt");
    let mut all = vec![
        "--server".to_string(),
        lab.server(),
        "--certificate-authority".to_string(),
        ca.to_str().unwrap().to_string(),
        "--token".to_string(),
        token.to_string(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    lab.kubectl_as(Path::new("/dev/null"), &all)
}

/// Server-side apply of `annotations` on Node `node`, as the agent does it (field
/// manager hybridway-agent), with `token`.
fn apply_annotations(
    lab: &KubeLab,
    token: &str,
    node: &str,
    wanted: &BTreeMap<String, String>,
) -> Output {
    let manifest = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node, "annotations": wanted},
    });
    let file = lab.dir().join(format!("apply-{node}.json"));
    std::fs::write(&file, manifest.to_string()).unwrap();
    as_token(
        lab,
        token,
        &[
            "apply",
            "--server-side",
            "--field-manager",
            agent_watch::MANAGER,
            "-f",
            file.to_str().unwrap(),
        ],
    )
}

fn refused(out: &Output, why: &str) {
    let t = text(out);
    assert!(!out.status.success(), "allowed, should be refused ({why})");
    assert!(
        t.contains(why),
        "refused for another reason than {why:?}:\n{t}"
    );
}

/// The agent's Pod object on `node` (no kubelet is needed for it to exist), and a
/// token bound to it: the API server puts the node's name in the token.
fn bound_agent_token(lab: &KubeLab, node: &str) -> String {
    let pod_name = format!("hybridway-agent-{node}");
    let pod = lab.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod_name}, namespace: kube-system}}\n\
         spec:\n  nodeName: {node}\n  serviceAccountName: hybridway-agent\n  containers: [{{name: agent, image: hybridway}}]\n",
    ));
    assert!(pod.status.success(), "{}", text(&pod));
    let bound = lab
        .kubectl_ok(&[
            "-n",
            "kube-system",
            "create",
            "token",
            "hybridway-agent",
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            &pod_name,
        ])
        .trim()
        .to_string();
    let whoami = text(&as_token(lab, &bound, &["auth", "whoami", "-o", "json"]));
    assert!(
        whoami.contains("\"authentication.kubernetes.io/node-name\"")
            && whoami.contains(&format!("\"{node}\"")),
        "the bound token carries no node name:\n{whoami}"
    );
    bound
}

#[test]
fn node_policies_hold_the_agent_to_its_own_node_and_the_controller_to_its_fields() {
    let lab = installed_lab();
    // Created, not applied: no last-applied annotation for kubectl to migrate.
    create_parallel(
        &lab,
        &[
            node_yaml("hybrid-1", None, "198.18.64.10", None),
            node_yaml("hybrid-2", None, "198.18.64.11", None),
        ],
        1,
    );
    for n in ["hybrid-1", "hybrid-2"] {
        lab.kubectl_ok(&["label", "node", n, &format!("{POOL_LABEL}=np-overlay")]);
    }
    let bound = bound_agent_token(&lab, "hybrid-1");

    // What the agent really writes (flannel's four annotations), on its own Node.
    let vtep = Vtep {
        vni: 1,
        mac: "0a:1b:2c:3d:4e:5f".parse().unwrap(),
    };
    let own = flannel::node_annotations(vtep, Ipv4Addr::new(198, 18, 64, 10));
    let out = apply_annotations(&lab, &bound, "hybrid-1", &own);
    assert!(
        out.status.success(),
        "the agent's own write refused:\n{}",
        text(&out)
    );
    let written = lab.kubectl_ok(&[
        "get",
        "node",
        "hybrid-1",
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert!(written.contains(flannel::BACKEND_DATA), "{written}");

    // Another Node, a foreign annotation, a label; a token bound to no Pod.
    refused(
        &apply_annotations(&lab, &bound, "hybrid-2", &own),
        "may change only its own Node: hybrid-2 is not the node its token is bound to (hybrid-1)",
    );
    let block = BTreeMap::from([(
        annotations::HYBRID_POD_BLOCK.to_string(),
        "198.19.200.0/24".to_string(),
    )]);
    refused(
        &apply_annotations(&lab, &bound, "hybrid-1", &block),
        "may change only flannel's annotations",
    );
    refused(
        &as_token(&lab, &bound, &["label", "node", "hybrid-1", "x=y"]),
        "may not change a Node's labels, spec",
    );
    let unbound = lab
        .kubectl_ok(&["-n", "kube-system", "create", "token", "hybridway-agent"])
        .trim()
        .to_string();
    refused(
        &apply_annotations(&lab, &unbound, "hybrid-1", &own),
        "(none: the token is not bound to a Pod on a node)",
    );

    // The controller, with its ServiceAccount, writes blocks through the policy...
    let kubeconfig = lab.service_account_kubeconfig("kube-system", "hybridway-controller");
    let controller = ControllerProc::start(&lab, &kubeconfig, "deploy-test");
    let blocks = wait_blocks(&lab, &["hybrid-1".into(), "hybrid-2".into()], WAIT);
    assert_eq!(blocks["hybrid-2"].pool.as_deref(), Some("onprem-overlay"));
    drop(controller);
    // ...and nothing else.
    let token = lab
        .kubectl_ok(&[
            "-n",
            "kube-system",
            "create",
            "token",
            "hybridway-controller",
        ])
        .trim()
        .to_string();
    refused(
        &as_token(
            &lab,
            &token,
            &[
                "patch",
                "node",
                "hybrid-2",
                "--type",
                "merge",
                "-p",
                r#"{"spec":{"unschedulable":true}}"#,
            ],
        ),
        "may change only spec.podCIDR(s) and its annotations",
    );
    refused(
        &as_token(
            &lab,
            &token,
            &[
                "annotate",
                "node",
                "hybrid-2",
                &format!("{}=198.18.64.99", flannel::PUBLIC_IP),
            ],
        ),
        "may change only its own annotations",
    );
}

/// Server-side apply of `status` on BGPClusterConfig onprem-underlay with `token`,
/// as agent_bgp writes it (field manager of `node`'s agent), taking over fields
/// other managers own (`--force-conflicts`: a forger would).
fn apply_bgp_status(lab: &KubeLab, token: &str, node: &str, status: serde_json::Value) -> Output {
    let manifest = serde_json::json!({
        "apiVersion": "network.alibabacloud.com/v1beta1",
        "kind": "BGPClusterConfig",
        "metadata": {"name": "onprem-underlay"},
        "status": status,
    });
    let file = lab.dir().join("bgp-status.json");
    std::fs::write(&file, manifest.to_string()).unwrap();
    as_token(
        lab,
        token,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--subresource",
            "status",
            "--field-manager",
            &format!("hybridway-agent-{node}"),
            "-f",
            file.to_str().unwrap(),
        ],
    )
}

/// RBAC lets the agent patch the whole status; the policy holds it to its own
/// speaker's entry: no forged conditions or counts, no other speaker's sessions,
/// and nothing at all with a token bound to no node.
#[test]
fn bgp_status_policy_holds_the_agent_to_its_own_speaker_entry() {
    let lab = installed_lab();
    create_parallel(
        &lab,
        &[node_yaml("hybrid-node-1", None, "198.18.64.10", None)],
        1,
    );
    let bound = bound_agent_token(&lab, "hybrid-node-1");
    // What the controller and another node's agent wrote (as the admin here).
    let theirs = r#"{"status":{"conditions":[{"type":"Valid","status":"False","reason":"NoSpeakers","message":"m","lastTransitionTime":"2026-01-01T00:00:00Z"}],
        "speakers":[{"name":"hybrid-node-2","peers":[{"name":"switch-1","state":"Active"}]}]}}"#;
    let out = lab.kubectl(&[
        "patch",
        "bgpclusterconfig",
        "onprem-underlay",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        theirs,
    ]);
    assert!(out.status.success(), "{}", text(&out));

    // The agent's own entry, as agent_bgp writes it.
    let own = serde_json::json!({"speakers": [{"name": "hybrid-node-1", "peers": [{"name": "switch-1", "state": "Established"}]}]});
    let out = apply_bgp_status(&lab, &bound, "hybrid-node-1", own.clone());
    assert!(
        out.status.success(),
        "the agent's own entry refused:\n{}",
        text(&out)
    );
    let speakers = lab.kubectl_ok(&[
        "get",
        "bgpclusterconfig",
        "onprem-underlay",
        "-o",
        "jsonpath={.status.speakers[*].name}",
    ]);
    assert!(
        speakers.contains("hybrid-node-1") && speakers.contains("hybrid-node-2"),
        "{speakers}"
    );

    refused(
        &apply_bgp_status(
            &lab,
            &bound,
            "hybrid-node-1",
            serde_json::json!({"conditions": [{"type": "Valid", "status": "True", "reason": "Forged", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        ),
        "may not change a BGPClusterConfig's conditions",
    );
    refused(
        &apply_bgp_status(
            &lab,
            &bound,
            "hybrid-node-1",
            serde_json::json!({"sessionsUp": "9/9"}),
        ),
        "may not change a BGPClusterConfig's conditions, counts",
    );
    refused(
        &apply_bgp_status(
            &lab,
            &bound,
            "hybrid-node-1",
            serde_json::json!({"speakers": [{"name": "hybrid-node-2", "peers": [{"name": "switch-1", "state": "Established"}]}]}),
        ),
        "may change only its own entry of status.speakers (hybrid-node-1)",
    );
    let unbound = lab
        .kubectl_ok(&["-n", "kube-system", "create", "token", "hybridway-agent"])
        .trim()
        .to_string();
    refused(
        &apply_bgp_status(&lab, &unbound, "hybrid-node-1", own),
        "(none: the token is not bound to a Pod on a node)",
    );
}

/// A password Secret's name the API server would not take (`bgp,secret`: the
/// agent's watch of it gets a 400) is refused when the BGPClusterConfig is written.
#[test]
fn crd_refuses_a_secret_name_that_is_no_object_name() {
    let lab = installed_lab();
    let example =
        std::fs::read_to_string(deploy_dir().join("examples/bgpclusterconfig.yaml")).unwrap();
    assert!(example.contains("name: bgp-secret"), "{example}");
    let out = lab.apply(&example.replace("name: bgp-secret", "name: \"bgp,secret\""));
    refused(&out, "should match");
    let out = lab.apply(&example.replace("name: bgp-secret", "name: bgp-secret.v2"));
    assert!(out.status.success(), "{}", text(&out));
}
