//! Where a field is in a YAML file the user wrote: for checks that run after
//! parsing (overlaps, ranges), whose errors serde cannot stamp with a line. Shared
//! by the agent's file and the controller's parameters.

/// The 1-based line of `field` (`nodePools[1].name`) in block-style YAML: each key
/// is searched from where the previous one was found, `[i]` steps to the i-th item
/// of the list. Good enough to point an editor at the line.
pub fn line_of(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let has_key = |l: &str, k: &str| {
        let t = l
            .trim_start()
            .trim_start_matches("- ")
            .trim_start_matches('{');
        t.starts_with(&format!("{k}:"))
            || l.contains(&format!(" {k}:"))
            || l.contains(&format!("{{{k}:"))
    };
    let mut at = 0;
    for segment in field.split('.') {
        let (key, index) = match segment.split_once('[') {
            Some((k, i)) => (k, i.trim_end_matches(']').parse::<usize>().ok()),
            None => (segment, None),
        };
        at += lines.iter().skip(at).position(|l| has_key(l, key))?;
        if let Some(i) = index {
            let items: Vec<usize> = (at + 1..lines.len())
                .filter(|&n| {
                    lines
                        .get(n)
                        .is_some_and(|l| l.trim_start().starts_with("- "))
                })
                .collect();
            let depth = items
                .first()
                .and_then(|&n| lines.get(n))
                .map(|l| indent(l))?;
            let same: Vec<usize> = items
                .into_iter()
                .filter(|&n| lines.get(n).is_some_and(|l| indent(l) == depth))
                .collect();
            at = *same.get(i)?;
        }
    }
    Some(at + 1)
}
