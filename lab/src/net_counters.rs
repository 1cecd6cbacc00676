//! A namespace's network counters (`/proc/net/snmp` and `/proc/net/netstat`, what
//! `nstat` reads) as one map, `"Group:Name"` → value: the benchmarks print how
//! many SYNs were retransmitted or connections dropped by a listener while they
//! measured, which says whether a slow figure is lost packets or a slow path.

use std::collections::BTreeMap;

use crate::{LabError, Netns};

/// Counters by `"Group:Name"` (`"Udp:NoPorts"`, `"TcpExt:TCPSynRetrans"`).
pub type Counters = BTreeMap<String, u64>;

/// Every counter of `ns` now.
pub fn read(ns: &Netns) -> Result<Counters, LabError> {
    Ok(parse(&ns.run("cat /proc/net/snmp /proc/net/netstat")?))
}

/// The tables of `/proc/net/snmp` and `/proc/net/netstat`: each group is a line of
/// names followed by a line of values, both starting with `Group:`.
pub fn parse(text: &str) -> Counters {
    let mut out = Counters::new();
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        let (Some((group, names)), Some((_, values))) =
            (names.split_once(": "), values.split_once(": "))
        else {
            continue;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = value.parse() {
                out.insert(format!("{group}:{name}"), v);
            }
        }
    }
    out
}

/// The counters among `names` that grew from `before` to `after`, with how much.
pub fn grown(before: &Counters, after: &Counters, names: &[&str]) -> Vec<(String, u64)> {
    names
        .iter()
        .filter_map(|n| {
            let d = after.get(*n)?.saturating_sub(*before.get(*n).unwrap_or(&0));
            (d > 0).then(|| ((*n).to_string(), d))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_group_of_both_tables() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams\nUdp: 10 667392 0 4\n\
                    TcpExt: SyncookiesSent TCPSynRetrans\nTcpExt: 0 12\n";
        let c = parse(text);
        assert_eq!(c.get("Udp:NoPorts"), Some(&667_392));
        assert_eq!(c.get("TcpExt:TCPSynRetrans"), Some(&12));
        assert_eq!(c.get("Ip:DefaultTTL"), Some(&64));
        assert!(parse("Ip: 1\n").is_empty());
    }

    #[test]
    fn grown_names_only_the_counters_that_moved() {
        let before = parse("TcpExt: A B C\nTcpExt: 1 5 0\n");
        let after = parse("TcpExt: A B C\nTcpExt: 1 7 0\n");
        assert_eq!(
            grown(&before, &after, &["TcpExt:A", "TcpExt:B", "TcpExt:D"]),
            [("TcpExt:B".to_string(), 2)]
        );
    }
}
