//! What `/readyz` answers: whether this replica leads, and whether the
//! caches its controllers render from have synced.
//!
//! With two replicas and a PodDisruptionBudget, the standby must count as
//! ready: otherwise a rolling update waits forever for the new pod (which
//! stands by until the old leader goes) and the budget never lets the
//! leader's node drain. So a standby is ready and says so; a leader is ready
//! once every cache has synced; a replica that lost the lease is not ready.

use std::{
    collections::BTreeSet,
    sync::{Mutex, atomic::AtomicU8, atomic::Ordering},
};

/// Where this replica stands in the leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Waiting for the Lease: not reconciling.
    Standby = 0,
    /// Holds the Lease (or runs without leader election).
    Leader = 1,
    /// Lost or could not renew the Lease: stopping.
    SteppedDown = 2,
}

#[derive(Debug)]
pub struct Health {
    role: AtomicU8,
    /// Caches not synced yet, by controller.
    waiting: Mutex<BTreeSet<&'static str>>,
}

/// The controllers whose caches must sync before a leader is ready.
pub const CACHES: [&str; 6] = [
    "mesh_config",
    "service_route",
    "mesh_certificate",
    "revocations",
    "sidecar_template",
    "rate_limit_policy",
];

impl Health {
    pub fn new(role: Role) -> Self {
        Self {
            role: AtomicU8::new(role as u8),
            waiting: Mutex::new(CACHES.into_iter().collect()),
        }
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::SeqCst) {
            0 => Role::Standby,
            1 => Role::Leader,
            _ => Role::SteppedDown,
        }
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Ordering::SeqCst);
    }

    /// `controller`'s caches are filled.
    pub fn synced(&self, controller: &'static str) {
        self.waiting.lock().expect("health lock").remove(controller);
    }

    /// Ready or not, and a line saying why.
    pub fn readiness(&self) -> (bool, String) {
        match self.role() {
            Role::Standby => (
                true,
                "standby: another replica holds the leader lease".into(),
            ),
            Role::SteppedDown => (false, "stepped down: the leader lease was lost".into()),
            Role::Leader => {
                let waiting = self.waiting.lock().expect("health lock");
                if waiting.is_empty() {
                    (true, "leader: caches synced".into())
                } else {
                    let list: Vec<&str> = waiting.iter().copied().collect();
                    (
                        false,
                        format!("leader: waiting for caches of {}", list.join(", ")),
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_is_ready_once_every_cache_synced_and_a_standby_always() {
        let h = Health::new(Role::Standby);
        assert!(h.readiness().0, "{}", h.readiness().1);
        assert!(h.readiness().1.starts_with("standby"));
        h.set_role(Role::Leader);
        for c in &CACHES[1..] {
            h.synced(c);
        }
        assert_eq!(
            h.readiness(),
            (false, "leader: waiting for caches of mesh_config".into())
        );
        h.synced(CACHES[0]);
        assert_eq!(h.readiness(), (true, "leader: caches synced".into()));
        h.set_role(Role::SteppedDown);
        assert!(!h.readiness().0);
    }
}
