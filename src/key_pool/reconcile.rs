//! What a config change means for the state of keys that survive it (the store keeps state by
//! key id across reloads).
//!
//! - A key the new config enables while the store still holds it disabled (disabled through
//!   the admin API, then re-enabled by a rollback or an edit of the file) is usable again, with
//!   its `invalid` mark and rests cleared — as the API's own enable does.
//! - A key whose value changed under the same id is a new key to Google: the old value's
//!   `invalid` mark and rests are dropped (for a Vertex member: its kind or `vertex` settings).
//! - A key the new config disables is disabled in the store too, so both say the same.

use super::KeyStateStore;
use crate::config::ApiKeyConfig;

/// Brings `store` in line with a change from the keys `old` to the keys `new`.
pub fn reconcile(store: &dyn KeyStateStore, old: &[ApiKeyConfig], new: &[ApiKeyConfig]) {
    let now = tokio::time::Instant::now();
    for key in new {
        let before = old.iter().find(|k| k.id == key.id);
        // A Vertex member's "value" is its kind, project, region and credentials.
        let replaced = before.is_some_and(|b| {
            b.key != key.key || b.backend != key.backend || b.vertex != key.vertex
        });
        let held_disabled = store.status(&key.id, now).state == "disabled";
        if !key.enabled {
            if !held_disabled {
                store.set_disabled(&key.id, true);
            }
        } else if replaced || held_disabled {
            // Clears `disabled`, `invalid` and every rest.
            store.set_disabled(&key.id, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::key_pool::MemoryStore;

    fn key(id: &str, value: &str, enabled: bool) -> ApiKeyConfig {
        serde_json::from_value(serde_json::json!({ "id": id, "key": value, "enabled": enabled }))
            .unwrap()
    }

    fn state(store: &MemoryStore, id: &str) -> &'static str {
        store.status(id, tokio::time::Instant::now()).state
    }

    #[test]
    fn a_key_re_enabled_by_the_config_is_usable_again() {
        let store = MemoryStore::new();
        let on = [key("a", "AIzaA", true)];
        let off = [key("a", "AIzaA", false)];
        // Disabled through the API: the store and the config say so.
        store.set_disabled("a", true);
        reconcile(&store, &on, &off);
        assert_eq!(state(&store, "a"), "disabled");
        // A rollback (or a file edit) re-enables it.
        reconcile(&store, &off, &on);
        assert_eq!(state(&store, "a"), "active");
    }

    #[test]
    fn replacing_a_keys_value_clears_its_invalid_mark() {
        let store = MemoryStore::new();
        let old = [key("a", "AIzaOLD", true), key("b", "AIzaB", true)];
        store.invalidate("a", "API_KEY_INVALID");
        store.invalidate("b", "API_KEY_INVALID");
        let new = [key("a", "AIzaNEW", true), key("b", "AIzaB", true)];
        reconcile(&store, &old, &new);
        assert_eq!(state(&store, "a"), "active");
        // An unrelated reload does not forgive the other key.
        assert_eq!(state(&store, "b"), "invalid");
        assert_eq!(new[0].key, Secret::new("AIzaNEW"));
    }
}
