//! Status conditions, written by the operator on every SMI object it reads.
//!
//! Every kind has a `status` subresource of type [`SmiStatus`]: `conditions[]` with `type`,
//! `status`, `reason`, `message`, `observedGeneration` and `lastTransitionTime`.

pub use crate::hub::{Condition, SmiStatus};

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const CONFLICTED: &str = "Conflicted";
/// Whether the data plane enforces the object (False on UDPRoutes: weft-proxy does not see UDP).
pub const PROGRAMMED: &str = "Programmed";

/// The one condition merge. Merges `desired` conditions into the `current` status: each condition keeps its
/// `lastTransitionTime` when its `status` did not change. Returns the merged status and whether
/// it differs from `current` (ignoring `lastTransitionTime`).
pub fn merge_conditions(
    current: &SmiStatus,
    desired: &[Condition],
    now: &str,
) -> (SmiStatus, bool) {
    let mut merged = SmiStatus::default();
    for want in desired {
        let mut c = want.clone();
        c.last_transition_time = match current.conditions.iter().find(|p| p.type_ == c.type_) {
            Some(prev) if prev.status == c.status => prev
                .last_transition_time
                .clone()
                .or_else(|| Some(now.to_string())),
            _ => Some(now.to_string()),
        };
        merged.conditions.push(c);
    }
    let strip = |s: &SmiStatus| {
        let mut v: Vec<Condition> = s
            .conditions
            .iter()
            .cloned()
            .map(|mut c| {
                c.last_transition_time = None;
                c
            })
            .collect();
        v.sort_by(|a, b| a.type_.cmp(&b.type_));
        v
    };
    let changed = strip(current) != strip(&merged);
    (merged, changed)
}

/// Inserts or replaces the condition of the same type ([`merge_conditions`] with the other
/// conditions kept). `last_transition_time` is kept from the previous condition when its
/// `status` did not change, else set to `now` (RFC 3339). Returns whether anything changed
/// (ignoring `lastTransitionTime`), so callers can skip a no-op status patch.
pub fn set_condition(status: &mut SmiStatus, cond: Condition, now: &str) -> bool {
    let mut desired = status.conditions.clone();
    match desired.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(c) => *c = cond,
        None => desired.push(cond),
    }
    let (merged, changed) = merge_conditions(status, &desired, now);
    *status = merged;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, reason: &str) -> Condition {
        Condition {
            type_: ACCEPTED.into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: None,
        }
    }

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut s = SmiStatus::default();
        assert!(set_condition(&mut s, cond("True", "Valid"), "t1"));
        assert!(!set_condition(&mut s, cond("True", "Valid"), "t2"));
        assert_eq!(s.conditions[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_condition(&mut s, cond("True", "Other"), "t3"));
        assert_eq!(s.conditions[0].last_transition_time.as_deref(), Some("t1"));
        assert!(set_condition(&mut s, cond("False", "Invalid"), "t4"));
        assert_eq!(s.conditions[0].last_transition_time.as_deref(), Some("t4"));
        assert_eq!(s.conditions.len(), 1);
    }
}
