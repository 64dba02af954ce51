//! `redact`: masks sensitive data in text messages: payment card numbers
//! (13–19 digits, spaces or dashes allowed, Luhn-checked), e-mail addresses,
//! and custom regular expressions.

use regex::Regex;
use wsgate_plugin_sdk::prelude::*;

/// A custom pattern.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Pattern {
    /// Name, for logs.
    name: String,
    /// Regular expression (Rust `regex` syntax).
    regex: String,
}

/// Configuration of `redact`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// Mask card numbers (default true).
    #[serde(default = "yes")]
    cards: bool,
    /// Mask e-mail addresses (default true).
    #[serde(default = "yes")]
    emails: bool,
    /// Extra patterns; every match is masked.
    #[serde(default)]
    patterns: Vec<Pattern>,
    /// Replacement for e-mail addresses and custom matches (default `[redacted]`).
    #[serde(default = "redacted")]
    mask: String,
    /// Card digits left visible at the end (default 4).
    #[serde(default = "four")]
    keep_last: usize,
    /// Compiled patterns, built by `validate`.
    #[serde(skip)]
    compiled: std::cell::OnceCell<Compiled>,
}

struct Compiled {
    card: Regex,
    email: Regex,
    custom: Vec<Regex>,
}

fn yes() -> bool {
    true
}
fn redacted() -> String {
    "[redacted]".into()
}
fn four() -> usize {
    4
}

fn compile(config: &Config) -> Result<Compiled, ConfigError> {
    let builtin = |pattern: &str| {
        Regex::new(pattern).map_err(|e| ConfigError {
            field: String::new(),
            message: e.to_string(),
        })
    };
    let mut custom = Vec::new();
    for (i, pattern) in config.patterns.iter().enumerate() {
        custom.push(Regex::new(&pattern.regex).map_err(|e| ConfigError {
            field: format!("/patterns/{i}/regex"),
            message: format!("pattern `{}`: {e}", pattern.name),
        })?);
    }
    Ok(Compiled {
        card: builtin(r"\b\d(?:[ -]?\d){12,18}\b")?,
        email: builtin(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")?,
        custom,
    })
}

/// The Luhn checksum of the digits in `text`.
fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    digits.len() >= 13 && sum.is_multiple_of(10)
}

/// Mask every digit of a card number but the last `keep`, keeping separators.
fn mask_card(text: &str, keep: usize) -> String {
    let total = text.chars().filter(char::is_ascii_digit).count();
    let mut seen = 0;
    text.chars()
        .map(|c| {
            if c.is_ascii_digit() {
                seen += 1;
                if seen + keep > total { c } else { '*' }
            } else {
                c
            }
        })
        .collect()
}

fn redact(config: &Config, compiled: &Compiled, text: &str) -> String {
    let mut out = text.to_string();
    if config.cards {
        out = compiled
            .card
            .replace_all(&out, |caps: &regex::Captures<'_>| {
                let number = &caps[0];
                if luhn_valid(number) {
                    mask_card(number, config.keep_last)
                } else {
                    number.to_string()
                }
            })
            .into_owned();
    }
    if config.emails {
        out = compiled
            .email
            .replace_all(&out, config.mask.as_str())
            .into_owned();
    }
    for pattern in &compiled.custom {
        out = pattern.replace_all(&out, config.mask.as_str()).into_owned();
    }
    out
}

struct Redact;

impl Plugin for Redact {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        let compiled = compile(config)?;
        let _ = config.compiled.set(compiled);
        Ok(())
    }
}

impl MessageFilter for Redact {
    fn on_message(config: &Config, _direction: Direction, message: Message) -> MessageVerdict {
        let (Message::Text(text), Some(compiled)) = (&message, config.compiled.get()) else {
            return MessageVerdict::Forward;
        };
        let redacted = redact(config, compiled, text);
        if redacted == *text {
            MessageVerdict::Forward
        } else {
            MessageVerdict::modify(Message::Text(redacted))
        }
    }
}

wsgate_plugin_sdk::export_message_filter!(Redact);

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let config: Config = serde_json::from_str(
            r#"{"patterns": [{"name": "ssn", "regex": "\\b\\d{3}-\\d{2}-\\d{4}\\b"}]}"#,
        )
        .unwrap();
        Redact::validate(&config).unwrap();
        config
    }

    #[test]
    fn cards_emails_and_custom_patterns_are_masked() {
        let config = config();
        let compiled = config.compiled.get().unwrap();
        assert_eq!(
            redact(&config, compiled, "pay 4111 1111 1111 1111 now"),
            "pay **** **** **** 1111 now"
        );
        assert_eq!(
            redact(&config, compiled, "mail ann@example.com, ssn 123-45-6789"),
            "mail [redacted], ssn [redacted]"
        );
        // Not a valid card number (Luhn fails): left alone.
        assert_eq!(
            redact(&config, compiled, "id 1234567890123"),
            "id 1234567890123"
        );
    }

    #[test]
    fn a_bad_custom_regex_names_its_field() {
        let config: Config =
            serde_json::from_str(r#"{"patterns": [{"name": "x", "regex": "("}]}"#).unwrap();
        assert_eq!(
            Redact::validate(&config).err().unwrap().field,
            "/patterns/0/regex"
        );
    }
}

#[cfg(test)]
mod config_schema {
    /// `config.schema.json` is generated from `Config`; this keeps it current.
    #[test]
    fn the_config_schema_is_current() {
        wsgate_plugin_sdk::schema::check::<super::Config>(env!("CARGO_MANIFEST_DIR")).unwrap();
    }
}
