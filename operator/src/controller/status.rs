//! Conditions, the standard Kubernetes way.

use remora_api::crd::Condition;

/// A condition stamped with the generation it was computed from.
pub fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: None,
        observed_generation: generation,
    }
}

/// Puts `new` into `conditions`, keeping `lastTransitionTime` unless the
/// status changed. Returns whether anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, mut new: Condition) -> bool {
    match conditions.iter_mut().find(|c| c.type_ == new.type_) {
        Some(old) => {
            new.last_transition_time = if old.status == new.status {
                old.last_transition_time.clone()
            } else {
                Some(now())
            };
            if *old == new {
                return false;
            }
            *old = new;
            true
        }
        None => {
            new.last_transition_time = Some(now());
            conditions.push(new);
            true
        }
    }
}

pub fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_changes_only_with_status() {
        let mut conds = Vec::new();
        assert!(set_condition(
            &mut conds,
            condition("Ready", true, "Issued", "ok", Some(1))
        ));
        let first = conds[0].last_transition_time.clone();
        assert!(first.is_some());
        assert!(
            !set_condition(
                &mut conds,
                condition("Ready", true, "Issued", "ok", Some(1))
            ),
            "no change"
        );
        assert!(set_condition(
            &mut conds,
            condition("Ready", true, "Issued", "renewed", Some(2))
        ));
        assert_eq!(
            conds[0].last_transition_time, first,
            "same status keeps the time"
        );
        assert_eq!(conds.len(), 1);
    }
}
