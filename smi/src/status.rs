//! Status conditions, written by the operator on every SMI object it reads.
//!
//! Every kind has a `status` subresource of type [`SmiStatus`]: `conditions[]` with `type`,
//! `status`, `reason`, `message`, `observedGeneration` and `lastTransitionTime`.

pub use crate::hub::{Condition, SmiStatus};

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const CONFLICTED: &str = "Conflicted";

/// Inserts or replaces the condition of the same type. `last_transition_time` is kept from the
/// previous condition when its `status` did not change, else set to `now` (RFC 3339).
/// Returns whether anything changed (so callers can skip a no-op status patch).
pub fn set_condition(status: &mut SmiStatus, mut cond: Condition, now: &str) -> bool {
    match status.conditions.iter_mut().find(|c| c.type_ == cond.type_) {
        Some(prev) => {
            cond.last_transition_time = if prev.status == cond.status {
                prev.last_transition_time
                    .clone()
                    .or_else(|| Some(now.to_string()))
            } else {
                Some(now.to_string())
            };
            if *prev == cond {
                return false;
            }
            *prev = cond;
            true
        }
        None => {
            cond.last_transition_time = Some(now.to_string());
            status.conditions.push(cond);
            true
        }
    }
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
