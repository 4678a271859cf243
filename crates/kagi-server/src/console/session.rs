//! Console sessions: a random id in an HttpOnly, SameSite=Strict cookie names a server-side
//! session that holds the kagi token and the CSRF token. Sessions live in this process's
//! memory only, so signing out (or a restart) really ends them; the token is held in a
//! zeroizing string and never sent back to the browser.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

/// The cookie's name.
pub const COOKIE: &str = "kagi_session";
/// A session's longest life when the token never expires.
pub const MAX_LIFE_SECS: i64 = 12 * 3600;
/// Sessions held at most (the oldest expiring go first beyond this).
const MAX_SESSIONS: usize = 10_000;

/// One signed-in browser.
pub struct Session {
    token: Zeroizing<String>,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// The kagi token the console acts with.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_ok(&self, presented: &str) -> bool {
        kagi_crypto::ct_eq(self.csrf.as_bytes(), presented.as_bytes())
    }
}

/// Every live session, by the SHA-256 of its cookie value.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Arc<Session>>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

fn key(cookie: &str) -> [u8; 32] {
    kagi_crypto::sha256(cookie.as_bytes())
}

/// How long a session for a token expiring at `token_expires` may live from `now`.
pub fn session_expiry(now: i64, token_expires: Option<i64>) -> i64 {
    let cap = now + MAX_LIFE_SECS;
    token_expires.map_or(cap, |e| e.min(cap))
}

impl Sessions {
    /// Starts a session; returns the cookie value.
    pub fn create(&self, token: &str, expires_at: i64, now: i64) -> (String, Arc<Session>) {
        let id = hex::encode(kagi_crypto::random_array::<32>());
        let s = Arc::new(Session {
            token: Zeroizing::new(token.to_string()),
            csrf: hex::encode(kagi_crypto::random_array::<32>()),
            expires_at,
        });
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, s| s.expires_at > now);
        if m.len() >= MAX_SESSIONS {
            if let Some(k) = m.iter().min_by_key(|(_, s)| s.expires_at).map(|(k, _)| *k) {
                m.remove(&k);
            }
        }
        m.insert(key(&id), s.clone());
        (id, s)
    }

    /// The live session a cookie value names.
    pub fn get(&self, cookie: &str, now: i64) -> Option<Arc<Session>> {
        let k = key(cookie);
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(&k) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                m.remove(&k);
                None
            }
            None => None,
        }
    }

    /// Ends a session.
    pub fn remove(&self, cookie: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(cookie));
    }
}

/// The session cookie's value in a `Cookie` header.
pub fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(id: &str, max_age: i64, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/ui; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.max(0),
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    set_cookie("", 0, secure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = Sessions::default();
        let (id, sess) = s.create("kagi_secret", 1_000, 100);
        assert!(s.get(&id, 999).is_some());
        assert!(s.get(&id, 1_000).is_none(), "expired at its time");
        assert!(s.get(&id, 500).is_none(), "an expired session is gone");
        let (id2, _) = s.create("t", 1_000, 100);
        s.remove(&id2);
        assert!(s.get(&id2, 200).is_none());
        assert!(sess.csrf_ok(&sess.csrf.clone()));
        assert!(!sess.csrf_ok(""));
        assert!(!format!("{sess:?}").contains("kagi_secret"));
    }

    #[test]
    fn session_lives_no_longer_than_its_token() {
        assert_eq!(session_expiry(0, Some(60)), 60);
        assert_eq!(session_expiry(0, None), MAX_LIFE_SECS);
        assert_eq!(session_expiry(0, Some(10 * MAX_LIFE_SECS)), MAX_LIFE_SECS);
    }

    #[test]
    fn cookie_is_found_among_others_and_checked() {
        let id = "ab".repeat(32);
        assert_eq!(
            cookie_value(&format!("a=1; {COOKIE}={id}; b=2")),
            Some(id.as_str())
        );
        assert_eq!(cookie_value(&format!("{COOKIE}=short")), None);
        assert_eq!(cookie_value("other=1"), None);
        let c = set_cookie(&id, 60, true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
    }
}
