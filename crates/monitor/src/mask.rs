//! Masking what must never be stored: values at configured JSON pointers
//! in JSON text messages, replaced before a record leaves the connection.

/// What a masked value becomes.
pub const MASKED: &str = "***";

/// JSON pointers whose values are masked (`[monitor] mask`); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Mask {
    pointers: std::sync::Arc<[String]>,
}

impl Mask {
    /// Mask the values at `pointers` (`/password`, `/card/number`).
    pub fn new(pointers: impl IntoIterator<Item = String>) -> Self {
        Self {
            pointers: pointers.into_iter().collect::<Vec<_>>().into(),
        }
    }

    /// `text` with every configured pointer's value replaced by
    /// [`MASKED`], when it is a JSON object or array and a pointer finds
    /// something; otherwise `text` unchanged.
    pub fn apply(&self, text: &str) -> String {
        if self.pointers.is_empty() || !text.trim_start().starts_with(['{', '[']) {
            return text.to_string();
        }
        let Ok(mut value) = serde_json::from_str::<serde_json::Value>(text) else {
            return text.to_string();
        };
        let mut masked = false;
        for pointer in self.pointers.iter() {
            if let Some(found) = value.pointer_mut(pointer) {
                *found = serde_json::Value::String(MASKED.to_string());
                masked = true;
            }
        }
        if masked {
            value.to_string()
        } else {
            text.to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_the_pointers_are_masked_and_the_rest_kept() {
        let mask = Mask::new(["/password".to_string(), "/card/number".to_string()]);
        assert_eq!(
            mask.apply(
                r#"{"user":"ann","password":"hunter2","card":{"number":"4111","exp":"12/30"}}"#
            ),
            r#"{"card":{"exp":"12/30","number":"***"},"password":"***","user":"ann"}"#
        );
        assert_eq!(mask.apply(r#"{"user":"ann"}"#), r#"{"user":"ann"}"#);
        assert_eq!(mask.apply("password: hunter2"), "password: hunter2");
        assert_eq!(
            Mask::default().apply(r#"{"password":"x"}"#),
            r#"{"password":"x"}"#
        );
    }
}
