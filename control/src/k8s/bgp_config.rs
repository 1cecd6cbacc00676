//! The BGPClusterConfig reconciler: checks what CEL cannot (speakers are existing,
//! selected nodes; referenced Secrets exist in kube-system with the key) and writes
//! the verdict as `status.conditions` with server-side apply, leaving the agents'
//! `status.speakers` alone. Secret values are read only to test for the key; they
//! are never logged or copied.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::bgp::password::UNREADABLE_FIX;

use super::crd::{BGPClusterConfig, BGPClusterConfigSpec, SESSION_ESTABLISHED};
use super::metrics::Metrics;
use super::node_ipam::MANAGER;
use super::params::NAMESPACE;

/// How often a config is checked again without a change to it (Secrets and Nodes
/// are not watched for it).
pub const RECHECK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum BgpConfigError {
    #[error("reading Secret {NAMESPACE}/{name}: {source}")]
    Secret {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of BGPClusterConfig {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Shared by every BGPClusterConfig reconcile.
#[derive(Clone)]
pub struct BgpConfigContext {
    pub client: kube::Client,
    pub nodes: Store<Node>,
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for BgpConfigContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BgpConfigContext").finish_non_exhaustive()
    }
}

/// One thing wrong with a config, as (condition reason, message).
type Problem = (&'static str, String);

/// Whether each referenced Secret exists and has the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretState {
    Missing,
    NoKey,
    Present,
    /// Not among the names the shared Role lets the controller and the agents
    /// read (the API server answered 403).
    Unreadable,
}

/// Everything wrong with `spec` given the nodes and the Secrets' states.
pub fn problems(
    spec: &BGPClusterConfigSpec,
    node: impl Fn(&str) -> Option<Arc<Node>>,
    secret: impl Fn(&str, &str) -> SecretState,
) -> Vec<Problem> {
    let mut out = Vec::new();
    let selector = match Selector::try_from(spec.node_selector.clone()) {
        Ok(s) => Some(s),
        Err(e) => {
            out.push(("InvalidSelector", format!("nodeSelector: {e}")));
            None
        }
    };
    for speaker in &spec.bgp_speakers {
        match node(&speaker.name) {
            None => out.push((
                "SpeakerNotFound",
                format!("speaker {} is not an existing node", speaker.name),
            )),
            Some(n) => {
                if selector.as_ref().is_some_and(|s| !s.matches(n.labels())) {
                    out.push((
                        "SpeakerNotSelected",
                        format!("speaker {} is not matched by nodeSelector", speaker.name),
                    ));
                }
            }
        }
        for peer in &speaker.peers {
            let Some(auth) = &peer.auth_password else {
                continue;
            };
            let r = &auth.secret_key_ref;
            match secret(&r.name, &r.key) {
                SecretState::Present => {}
                SecretState::Missing => out.push((
                    "SecretNotFound",
                    format!(
                        "peer {} of speaker {}: Secret {NAMESPACE}/{} does not exist",
                        peer.name, speaker.name, r.name
                    ),
                )),
                SecretState::Unreadable => out.push((
                    "SecretNotReadable",
                    format!(
                        "peer {} of speaker {}: Secret {NAMESPACE}/{} is not readable by the agent: {UNREADABLE_FIX}",
                        peer.name, speaker.name, r.name
                    ),
                )),
                SecretState::NoKey => out.push((
                    "SecretKeyMissing",
                    format!(
                        "peer {} of speaker {}: Secret {NAMESPACE}/{} has no key {}",
                        peer.name, speaker.name, r.name, r.key
                    ),
                )),
            }
        }
    }
    out
}

/// The controller's conditions for `cfg`, keeping `lastTransitionTime` of any
/// condition whose status did not change (so an unchanged verdict writes nothing).
pub fn conditions(cfg: &BGPClusterConfig, problems: &[Problem], now: Timestamp) -> Vec<Condition> {
    let generation = cfg.metadata.generation;
    let speakers = cfg.spec.bgp_speakers.len();
    let valid = match problems.first() {
        None => (
            "True",
            "Valid",
            format!("{speakers} speaker(s), all checks passed"),
        ),
        Some((reason, _)) => (
            "False",
            *reason,
            problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    let redundant = if speakers >= 2 {
        ("True", "TwoOrMoreSpeakers", format!("{speakers} speakers"))
    } else {
        (
            "False",
            "SingleSpeaker",
            format!("{speakers} speaker: at least two avoid a single point of failure"),
        )
    };
    let (up, total) = sessions(cfg);
    let reported = cfg.status.as_ref().is_some_and(|s| !s.speakers.is_empty());
    let ready = if !reported {
        (
            "Unknown",
            "NoSessionStatus",
            "no speaker has reported its sessions yet".to_string(),
        )
    } else if up == total {
        (
            "True",
            "AllSessionsEstablished",
            format!("{up}/{total} sessions established"),
        )
    } else {
        (
            "False",
            "SessionsDown",
            format!("{up}/{total} sessions established"),
        )
    };
    let old = cfg
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    [("Valid", valid), ("Ready", ready), ("Redundant", redundant)]
        .into_iter()
        .map(|(type_, (status, reason, message))| {
            let since = old
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: type_.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// (established, total) sessions: total from the spec, established from the agents.
fn sessions(cfg: &BGPClusterConfig) -> (usize, usize) {
    let total = cfg.spec.bgp_speakers.iter().map(|s| s.peers.len()).sum();
    let established = cfg.status.as_ref().map_or(0, |st| {
        st.speakers
            .iter()
            .flat_map(|s| &s.peers)
            .filter(|p| p.state == SESSION_ESTABLISHED)
            .count()
    });
    (established, total)
}

/// Reconciles one BGPClusterConfig.
pub async fn reconcile(
    cfg: Arc<BGPClusterConfig>,
    ctx: Arc<BgpConfigContext>,
) -> Result<Action, BgpConfigError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let mut states: BTreeMap<(String, String), SecretState> = BTreeMap::new();
    let refs = cfg
        .spec
        .bgp_speakers
        .iter()
        .flat_map(|s| &s.peers)
        .filter_map(|p| p.auth_password.as_ref().map(|a| &a.secret_key_ref));
    for r in refs {
        if states.contains_key(&(r.name.clone(), r.key.clone())) {
            continue;
        }
        let state = match secrets.get_opt(&r.name).await {
            Ok(None) => SecretState::Missing,
            Ok(Some(s)) if has_key(&s, &r.key) => SecretState::Present,
            Ok(Some(_)) => SecretState::NoKey,
            // The controller reads the same names the agents may (one Role for
            // both): a name it may not read, the agents may not either.
            Err(kube::Error::Api(s)) if s.code == 403 => SecretState::Unreadable,
            Err(source) => {
                return Err(BgpConfigError::Secret {
                    name: r.name.clone(),
                    source,
                });
            }
        };
        states.insert((r.name.clone(), r.key.clone()), state);
    }
    let found = problems(
        &cfg.spec,
        |n| ctx.nodes.get(&ObjectRef::new(n)),
        |name, key| {
            states
                .get(&(name.to_string(), key.to_string()))
                .copied()
                .unwrap_or(SecretState::Missing)
        },
    );
    let name = cfg.name_any();
    if !found.is_empty() {
        tracing::warn!(bgpclusterconfig = %name, problems = ?found, "BGPClusterConfig not valid");
    }
    let conds = conditions(&cfg, &found, Timestamp::now());
    let (up, total) = sessions(&cfg);
    let status = json!({
        "apiVersion": BGPClusterConfig::api_version(&()),
        "kind": BGPClusterConfig::kind(&()),
        "status": {
            "conditions": conds,
            "observedGeneration": cfg.metadata.generation,
            "speakerCount": cfg.spec.bgp_speakers.len(),
            "sessionsUp": format!("{up}/{total}"),
        }
    });
    let api: Api<BGPClusterConfig> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&status),
    )
    .await
    .map_err(|source| BgpConfigError::Status {
        name: name.clone(),
        source,
    })?;
    Ok(Action::requeue(RECHECK))
}

fn has_key(s: &Secret, key: &str) -> bool {
    s.data.as_ref().is_some_and(|d| d.contains_key(key))
        || s.string_data.as_ref().is_some_and(|d| d.contains_key(key))
}

pub fn error_policy(
    cfg: Arc<BGPClusterConfig>,
    err: &BgpConfigError,
    ctx: Arc<BgpConfigContext>,
) -> Action {
    ctx.metrics.reconcile_error("bgpclusterconfig");
    tracing::warn!(bgpclusterconfig = %cfg.name_any(), error = %err, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::k8s::crd::{AuthPassword, BgpPeer, BgpSpeaker, SecretKeyRef};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use kube::api::ObjectMeta;

    pub(crate) fn spec(speakers: &[&str], secret: Option<&str>) -> BGPClusterConfigSpec {
        BGPClusterConfigSpec {
            local_asn: 65010,
            node_selector: LabelSelector {
                match_labels: Some([("pool".to_string(), "a".to_string())].into()),
                ..LabelSelector::default()
            },
            bgp_speakers: speakers
                .iter()
                .map(|s| BgpSpeaker {
                    name: s.to_string(),
                    peers: vec![BgpPeer {
                        name: "switch-1".into(),
                        peer_asn: 65001,
                        peer_address: "198.18.64.1".into(),
                        auth_password: secret.map(|n| AuthPassword {
                            secret_key_ref: SecretKeyRef {
                                name: n.into(),
                                key: "password".into(),
                            },
                        }),
                    }],
                })
                .collect(),
        }
    }

    fn node(name: &str, pool: &str) -> Arc<Node> {
        Arc::new(Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("pool".to_string(), pool.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        })
    }

    #[test]
    fn finds_missing_and_unselected_speakers_and_secrets() {
        let s = spec(&["h1", "c1", "ghost"], Some("bgp-secret"));
        let lookup = |n: &str| match n {
            "h1" => Some(node("h1", "a")),
            "c1" => Some(node("c1", "cloud")),
            _ => None,
        };
        let p = problems(&s, lookup, |_, _| SecretState::Missing);
        let reasons: Vec<&str> = p.iter().map(|(r, _)| *r).collect();
        assert_eq!(
            reasons,
            [
                "SecretNotFound",
                "SpeakerNotSelected",
                "SecretNotFound",
                "SpeakerNotFound",
                "SecretNotFound"
            ]
        );
        assert_eq!(p[1].1, "speaker c1 is not matched by nodeSelector");
        assert!(
            problems(&s, lookup, |_, _| SecretState::NoKey)[0]
                .1
                .contains("has no key password")
        );
    }

    #[test]
    fn conditions_keep_transition_times_and_warn_on_one_speaker() {
        let mut cfg = BGPClusterConfig::new("bgp", spec(&["h1"], None));
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let c = conditions(&cfg, &[], t0);
        assert_eq!(
            c.iter()
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect::<Vec<_>>(),
            [
                ("Valid", "True", "Valid"),
                ("Ready", "Unknown", "NoSessionStatus"),
                ("Redundant", "False", "SingleSpeaker")
            ]
        );
        cfg.status = Some(crate::k8s::crd::BGPClusterConfigStatus {
            conditions: c,
            ..Default::default()
        });
        let later = Timestamp::from_second(2_000_000).unwrap();
        let bad = [("SecretNotFound", "x".to_string())];
        let c2 = conditions(&cfg, &bad, later);
        assert_eq!(c2[0].last_transition_time, Time(later));
        assert_eq!(c2[2].last_transition_time, Time(t0));
    }

    mod scenarios {
        use super::*;
        use crate::k8s::mock_api::{self, Exchange};
        use kube::runtime::reflector;

        fn ctx(client: kube::Client) -> Arc<BgpConfigContext> {
            let (reader, mut writer) = reflector::store::<Node>();
            writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(
                node("h1", "a").as_ref().clone(),
            ));
            Arc::new(BgpConfigContext {
                client,
                nodes: reader,
                metrics: Arc::default(),
            })
        }

        fn cfg() -> Arc<BGPClusterConfig> {
            let mut c = BGPClusterConfig::new("bgp", spec(&["h1"], Some("bgp-secret")));
            c.metadata.generation = Some(3);
            Arc::new(c)
        }

        /// The Secret's GET answers `code`; the status apply must contain `expected`.
        async fn secret_answer_becomes_a_condition(
            code: u16,
            reason: &str,
            expected: Vec<&'static str>,
        ) {
            let (client, handle) = mock_api::client();
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![
                    Exchange {
                        method: "GET",
                        path: "/api/v1/namespaces/kube-system/secrets/bgp-secret",
                        body_has: vec![],
                        status: code,
                        response: mock_api::status(code, reason),
                    },
                    Exchange {
                        method: "PATCH",
                        path: "/apis/network.alibabacloud.com/v1beta1/bgpclusterconfigs/bgp/status",
                        body_has: expected,
                        status: 200,
                        response: serde_json::to_value(cfg().as_ref()).unwrap(),
                    },
                ],
            ));
            let ctx = ctx(client);
            let action = reconcile(cfg(), ctx.clone()).await.unwrap();
            assert_eq!(action, Action::requeue(RECHECK));
            drop(ctx);
            server.await.unwrap();
        }

        /// A missing Secret is a condition, not an error: one GET, one status apply.
        #[tokio::test]
        async fn missing_secret_becomes_a_condition() {
            secret_answer_becomes_a_condition(
                404,
                "NotFound",
                vec![
                    "SecretNotFound",
                    "\"observedGeneration\":3",
                    "SingleSpeaker",
                    "\"sessionsUp\":\"0/1\"",
                ],
            )
            .await;
        }

        /// A Secret the shared Role does not name (403): a condition saying the
        /// agent cannot read it, not "valid" and not "does not exist".
        #[tokio::test]
        async fn unreadable_secret_becomes_a_condition() {
            secret_answer_becomes_a_condition(
                403,
                "Forbidden",
                vec![
                    "SecretNotReadable",
                    "is not readable by the agent",
                    "hybridway-bgp-secrets",
                ],
            )
            .await;
        }

        /// Any other failure to read the Secret: an error (retried), and no status
        /// is written from half the facts.
        #[tokio::test]
        async fn failed_secret_read_is_an_error_without_status() {
            let (client, handle) = mock_api::client();
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![Exchange {
                    method: "GET",
                    path: "/api/v1/namespaces/kube-system/secrets/bgp-secret",
                    body_has: vec![],
                    status: 500,
                    response: mock_api::status(500, "InternalError"),
                }],
            ));
            let ctx = ctx(client);
            let err = reconcile(cfg(), ctx.clone()).await.unwrap_err();
            assert!(matches!(err, BgpConfigError::Secret { .. }), "{err}");
            assert_eq!(
                error_policy(cfg(), &err, ctx.clone()),
                Action::requeue(Duration::from_secs(5))
            );
            drop(ctx);
            server.await.unwrap();
        }

        /// The status write fails: the reconcile fails (and is retried).
        #[tokio::test]
        async fn failed_status_write_is_an_error() {
            let (client, handle) = mock_api::client();
            let mut secret = Secret::default();
            secret.metadata.name = Some("bgp-secret".into());
            secret.data = Some(
                [(
                    "password".to_string(),
                    k8s_openapi::ByteString(b"x".to_vec()),
                )]
                .into(),
            );
            let server = tokio::spawn(mock_api::serve(
                handle,
                vec![
                    Exchange {
                        method: "GET",
                        path: "/api/v1/namespaces/kube-system/secrets/bgp-secret",
                        body_has: vec![],
                        status: 200,
                        response: serde_json::to_value(&secret).unwrap(),
                    },
                    Exchange {
                        method: "PATCH",
                        path: "/apis/network.alibabacloud.com/v1beta1/bgpclusterconfigs/bgp/status",
                        body_has: vec!["\"reason\":\"Valid\""],
                        status: 500,
                        response: mock_api::status(500, "InternalError"),
                    },
                ],
            ));
            let ctx = ctx(client);
            let err = reconcile(cfg(), ctx.clone()).await.unwrap_err();
            assert!(matches!(err, BgpConfigError::Status { .. }), "{err}");
            drop(ctx);
            server.await.unwrap();
        }
    }
}
