//! Tokens already verified, so a client that sends the same token on every request (all of
//! them do) pays for the HMAC, the base64 and the claims' JSON once, not per request.
//!
//! Only tokens signed with `auth.jwt_secret` (HS*) are kept: that key, the issuer, audience,
//! leeway and revocation list are fixed for the life of a [`Verifier`](super::Verifier) (a reload
//! builds a new one, with an empty cache), so a token that passed once passes again until its own
//! time window (`exp`, `nbf`, with the leeway) closes, which a hit checks. Tokens checked against
//! a JWKS are never kept: the provider may withdraw a key at any time.
//!
//! A fixed number of slots, each with its own lock, indexed by the token's last bytes (its
//! signature); a hit compares the whole token. A token only lands here after its signature was
//! checked, so a flood of forged tokens never fills it, and a slot another token takes over only
//! costs that token one full verification.

use std::sync::Mutex;

use super::Client;

/// Slots (a power of two). A slot holds one token (~100 bytes of state plus the token itself).
const SLOTS: usize = 1024;

/// One verified token and the seconds (since the epoch) between which it stays valid.
#[derive(Debug)]
struct Entry {
    token: Box<str>,
    client: Client,
    /// First second it is valid (`nbf` less the leeway).
    from: u64,
    /// First second it no longer is (`exp` plus the leeway).
    until: u64,
}

/// The cache (see the module docs).
pub(super) struct TokenCache {
    slots: Box<[Mutex<Option<Entry>>]>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the tokens themselves.
        f.debug_struct("TokenCache")
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl Default for TokenCache {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| Mutex::new(None)).collect(),
        }
    }
}

impl TokenCache {
    fn slot(&self, token: &str) -> &Mutex<Option<Entry>> {
        // The signature's last bytes are as good as random for a real token; a crafted one
        // can only share another's slot, which costs a verification, never a wrong answer.
        let tail = &token.as_bytes()[token.len().saturating_sub(8)..];
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in tail {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.slots[(h as usize) & (SLOTS - 1)]
    }

    /// The client of `token` if it was verified before and is still valid at `now`.
    pub(super) fn get(&self, token: &str, now: u64) -> Option<Client> {
        let slot = self.slot(token).lock().unwrap_or_else(|e| e.into_inner());
        let e = slot.as_ref()?;
        // Constant time: how long the comparison takes says nothing of how much of a guess
        // matched a cached token.
        let same = e.token.len() == token.len()
            && aws_lc_rs::constant_time::verify_slices_are_equal(
                e.token.as_bytes(),
                token.as_bytes(),
            )
            .is_ok();
        (same && e.from <= now && now < e.until).then(|| e.client.clone())
    }

    /// Remembers that `token` (whose signature and claims were just checked) is `client`
    /// between `from` and `until`.
    pub(super) fn put(&self, token: &str, client: &Client, from: u64, until: u64) {
        let mut slot = self.slot(token).lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Entry {
            token: token.into(),
            client: client.clone(),
            from,
            until,
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn client(id: &str) -> Client {
        Client {
            id: Arc::from(id),
            role: crate::auth::Role::Client,
            models: crate::auth::ModelPolicy::Any,
            rpm: None,
            tpm: None,
            tpd: None,
            overrides: None,
            live_sessions: None,
            token_id: None,
        }
    }

    #[test]
    fn a_hit_needs_the_whole_token_and_its_time_window() {
        let cache = TokenCache::default();
        cache.put("a.b.same-tail", &client("alice"), 100, 200);
        assert_eq!(
            cache.get("a.b.same-tail", 150).map(|c| c.id),
            Some(Arc::from("alice"))
        );
        // Same slot (same last bytes), other token: no hit.
        assert!(cache.get("x.y.same-tail", 150).is_none());
        assert!(cache.get("a.b.same-tail", 99).is_none(), "not yet valid");
        assert!(cache.get("a.b.same-tail", 200).is_none(), "expired");
        // Another token taking the slot replaces it.
        cache.put("x.y.same-tail", &client("mallory"), 100, 200);
        assert!(cache.get("a.b.same-tail", 150).is_none());
    }

    #[test]
    fn debug_never_shows_a_token() {
        let cache = TokenCache::default();
        cache.put("secret.token.value", &client("alice"), 0, 10);
        assert!(!format!("{cache:?}").contains("secret"));
    }
}
