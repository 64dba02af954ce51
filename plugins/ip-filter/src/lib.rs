//! `ip-filter`: allows or denies upgrades by the client's address, against
//! CIDR lists (`10.0.0.0/8`, `2001:db8::/32`, or single addresses). `deny`
//! wins over `allow`; with an `allow` list, addresses outside it are refused.

use std::net::{IpAddr, SocketAddr};

use wsgate_plugin_sdk::prelude::*;

/// Configuration of `ip-filter`.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct Config {
    /// Addresses allowed (empty: everyone not denied).
    #[serde(default)]
    allow: Vec<String>,
    /// Addresses refused.
    #[serde(default)]
    deny: Vec<String>,
    /// Status of a refusal (default 403).
    #[serde(default = "forbidden")]
    status: u16,
}

fn forbidden() -> u16 {
    403
}

/// A parsed CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u32>().ok()?)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { network, prefix })
    }

    fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        match (self.network, address) {
            (IpAddr::V4(net), IpAddr::V4(addr)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix).unwrap_or(0);
                u32::from(net) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(addr)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix).unwrap_or(0);
                u128::from(net) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

fn parse_all(list: &[String], field: &str) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, text)| {
            Cidr::parse(text).ok_or_else(|| ConfigError {
                field: format!("/{field}/{i}"),
                message: format!("`{text}` is not an address or CIDR block"),
            })
        })
        .collect()
}

struct IpFilter;

impl Plugin for IpFilter {
    type Config = Config;

    fn validate(config: &Config) -> Result<(), ConfigError> {
        parse_all(&config.allow, "allow")?;
        parse_all(&config.deny, "deny")?;
        if !(400..=599).contains(&config.status) {
            return Err(ConfigError {
                field: "/status".into(),
                message: "must be 400-599".into(),
            });
        }
        Ok(())
    }
}

fn allowed(config: &Config, address: IpAddr) -> bool {
    let matches = |list: &[String]| {
        list.iter()
            .filter_map(|t| Cidr::parse(t))
            .any(|cidr| cidr.contains(address))
    };
    !matches(&config.deny) && (config.allow.is_empty() || matches(&config.allow))
}

impl UpgradeFilter for IpFilter {
    fn on_upgrade(config: &Config, request: UpgradeRequest) -> UpgradeVerdict {
        let address = request
            .client_addr
            .parse::<SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| request.client_addr.parse::<IpAddr>());
        match address {
            Ok(address) if allowed(config, address) => UpgradeVerdict::Continue,
            _ => {
                log::info(&format!("client {} refused", request.client_addr));
                UpgradeVerdict::reject(config.status, "your address may not connect here\n")
            }
        }
    }
}

wsgate_plugin_sdk::export_upgrade_filter!(IpFilter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_v4_v6_and_mapped_addresses() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.0.9".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Cidr::parse("10.0.0.0/33").is_none());
    }

    #[test]
    fn deny_wins_and_allow_lists_exclude_the_rest() {
        let config = Config {
            allow: vec!["127.0.0.0/8".into()],
            deny: vec!["127.0.0.2".into()],
            status: 403,
        };
        assert!(allowed(&config, "127.0.0.1".parse().unwrap()));
        assert!(!allowed(&config, "127.0.0.2".parse().unwrap()));
        assert!(!allowed(&config, "192.168.1.1".parse().unwrap()));
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
