//! A string that is never shown: not by `Debug`, not by `Display`, not when serialized.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A secret value (API key, JWT secret). `Debug` and `Serialize` print [`Secret::MASK`]; the value is
/// only reachable through [`Secret::expose`], so every use of it is visible in the code.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// What is shown instead of the value.
    pub const MASK: &'static str = "********";

    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call only where the value is needed (signing, the upstream header).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Length in characters, for validation messages that must not show the value.
    pub fn char_len(&self) -> usize {
        self.0.chars().count()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::MASK)
    }
}

thread_local! {
    static EXPOSED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with secrets serialized as their values instead of the mask, on this thread only:
/// for writing a config document to disk, never for anything a client or a log sees.
pub(crate) fn with_secrets_exposed<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            EXPOSED.with(|e| e.set(false));
        }
    }
    EXPOSED.with(|e| e.set(true));
    let _reset = Reset;
    f()
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if EXPOSED.with(std::cell::Cell::get) {
            return serializer.serialize_str(&self.0);
        }
        // An empty secret reveals nothing, and shows that none is set.
        serializer.serialize_str(if self.0.is_empty() { "" } else { Self::MASK })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shows_the_value() {
        let s = Secret::new("AIzaSECRET");
        assert_eq!(format!("{s:?}"), Secret::MASK);
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"********\"");
        assert_eq!(s.expose(), "AIzaSECRET");
        assert_eq!(serde_json::to_string(&Secret::default()).unwrap(), "\"\"");
    }

    #[test]
    fn exposure_is_scoped() {
        let s = Secret::new("AIzaSECRET");
        let inside = with_secrets_exposed(|| serde_json::to_string(&s).unwrap());
        assert_eq!(inside, "\"AIzaSECRET\"");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"********\"");
    }
}
