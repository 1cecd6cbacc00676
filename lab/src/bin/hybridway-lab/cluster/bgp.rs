//! Screen 6: a Secret and a BGPClusterConfig make the underlay nodes speakers; the
//! FRR switch peers with them; its routes and the resource's status.

use anyhow::Context as _;
use hybridway_lab::frr::{Bgpd, Neighbor};
use hybridway_lab::poll;

use super::nodes::{
    BGP_PASSWORD, NODES, NodeSpec, POOL_LABEL, Role, SETTLE, SPEAKER_ASN, SWITCH, SWITCH_ASN,
};
use super::{Demo, indent};
use crate::report::Report;

impl Demo {
    pub(super) fn bgp(&mut self, report: &mut Report) -> anyhow::Result<()> {
        let speakers: Vec<&NodeSpec> = NODES.iter().filter(|n| n.role == Role::Underlay).collect();
        let neighbors: Vec<Neighbor> = speakers
            .iter()
            .map(|s| Neighbor {
                addr: s.addr,
                asn: SPEAKER_ASN,
                password: Some(BGP_PASSWORD.into()),
            })
            .collect();
        self.bgpd = Some(Bgpd::start(
            &self.switch,
            &self.dir.join("frr"),
            SWITCH_ASN,
            SWITCH,
            &neighbors,
        )?);
        // The Secret's name is the one deploy/bgp-secrets-rbac.yaml lets the agents
        // and the controller read (no other Secret is readable by them).
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: bgp-secret, namespace: kube-system}}\nstringData: {{password: {BGP_PASSWORD}}}\n"
        ))?;
        let peers: String = speakers
            .iter()
            .map(|s| {
                format!(
                    "  - name: {}\n    peers:\n    - {{name: switch, peerASN: {SWITCH_ASN}, peerAddress: {SWITCH}, authPassword: {{secretKeyRef: {{name: bgp-secret, key: password}}}}}}\n",
                    s.name
                )
            })
            .collect();
        self.apply(&format!(
            "apiVersion: network.alibabacloud.com/v1beta1\nkind: BGPClusterConfig\nmetadata: {{name: underlay}}\nspec:\n  localASN: {SPEAKER_ASN}\n  nodeSelector: {{matchLabels: {{{POOL_LABEL}: np-underlay}}}}\n  bgpSpeakers:\n{peers}"
        ))?;
        println!("  applied Secret kube-system/bgp-secret and BGPClusterConfig underlay");
        let bgpd = self.bgpd.as_ref().context("bgpd")?;
        let underlay_blocks: Vec<String> = self
            .blocks()
            .into_iter()
            .filter(|(_, _, m)| m == "underlay")
            .map(|(_, b, _)| b)
            .collect();
        let settled = poll(SETTLE, || {
            let up = speakers
                .iter()
                .all(|s| bgpd.peer_state(s.addr).as_deref() == Some("Established"));
            let routes = bgpd.routes();
            let all = underlay_blocks
                .iter()
                .all(|b| routes.iter().any(|(p, _)| p == b));
            (up && all).then_some(())
        });
        for s in &speakers {
            let state = bgpd.peer_state(s.addr).unwrap_or_else(|| "none".into());
            report.check(
                &format!("switch <-> {} session (TCP MD5 from the Secret)", s.name),
                state == "Established",
                &state,
            );
        }
        println!("-- the switch's routes (vtysh: show bgp ipv4 unicast)");
        println!("{}", indent(&bgpd.vtysh_text("show bgp ipv4 unicast")));
        let routes = bgpd.routes();
        for spec in &speakers {
            let block = self
                .blocks()
                .into_iter()
                .find(|(n, _, _)| n == spec.name)
                .map(|(_, b, _)| b)
                .unwrap_or_default();
            let hops = routes
                .iter()
                .find(|(p, _)| *p == block)
                .map(|(_, h)| h.join(","))
                .unwrap_or_default();
            report.check(
                &format!("the switch routes {block} ({}) via its node", spec.name),
                settled.is_some() && hops == spec.addr.to_string(),
                &format!("next hops: {hops}"),
            );
        }
        // The status the speakers report, where users look for it.
        let status_ok = poll(SETTLE, || {
            let text = self
                .lab
                .kubectl_checked(&["get", "bgpclusterconfig", "underlay", "-o", "json"])
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&text).ok()?;
            let peers: Vec<&serde_json::Value> = v
                .pointer("/status/speakers")?
                .as_array()?
                .iter()
                .flat_map(|s| {
                    s.get("peers")
                        .and_then(|p| p.as_array())
                        .into_iter()
                        .flatten()
                })
                .collect();
            (peers.len() == speakers.len() && peers.iter().all(|p| p["state"] == "Established"))
                .then_some(())
        });
        println!("-- kubectl get bgpclusterconfig");
        println!(
            "{}",
            indent(
                &self
                    .lab
                    .kubectl_checked(&["get", "bgpclusterconfig"])
                    .unwrap_or_else(|e| e.to_string())
            )
        );
        println!(
            "{}",
            indent(
                &self
                    .lab
                    .kubectl_checked(&[
                        "get",
                        "bgpclusterconfig",
                        "underlay",
                        "-o",
                        "jsonpath={range .status.speakers[*]}{.name}{\": \"}{range .peers[*]}{.name} {.state}, {.prefixesAdvertised} prefixes advertised{\"\\n\"}{end}{end}",
                    ])
                    .unwrap_or_else(|e| e.to_string())
            )
        );
        report.check(
            "BGPClusterConfig status: every speaker's session Established",
            status_ok.is_some(),
            "",
        );
        Ok(())
    }
}
