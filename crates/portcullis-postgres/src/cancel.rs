//! Cancel requests: the client is told the database's own process id with a secret key of
//! the gateway's; a CancelRequest on a new connection is matched and forwarded with the real
//! key. A forged key cancels nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_core::CancelSignal;

/// Where a client's cancel key leads.
#[derive(Debug, Clone)]
pub(crate) struct CancelTarget {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) pid: i32,
    pub(crate) key: i32,
    pub(crate) signal: CancelSignal,
}

/// The keys of a listener's live sessions.
#[derive(Debug, Default, Clone)]
pub(crate) struct CancelRegistry {
    map: Arc<Mutex<HashMap<(i32, i32), CancelTarget>>>,
}

/// Removes a session's key when the session ends.
#[derive(Debug)]
pub(crate) struct CancelKeyGuard {
    registry: CancelRegistry,
    key: (i32, i32),
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register a session; returns the secret key to give the client.
    pub(crate) fn register(&self, target: CancelTarget) -> (i32, CancelKeyGuard) {
        let mut map = self.lock();
        loop {
            let secret: i32 = rand::random();
            let key = (target.pid, secret);
            if let std::collections::hash_map::Entry::Vacant(e) = map.entry(key) {
                e.insert(target);
                return (
                    secret,
                    CancelKeyGuard {
                        registry: self.clone(),
                        key,
                    },
                );
            }
        }
    }

    pub(crate) fn find(&self, pid: i32, secret: i32) -> Option<CancelTarget> {
        self.lock().get(&(pid, secret)).cloned()
    }
}

impl Drop for CancelKeyGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}
