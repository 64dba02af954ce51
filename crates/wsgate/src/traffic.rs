//! `wsgate traffic export`: recorded connections to a traffic file that a
//! repository can keep and `wsgate replay --from` can read, masked again on
//! the way out.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use clap::Subcommand;
use wsgate_monitor::mask::{MASKED, Mask};
use wsgate_monitor::{ConnectionFilter, Payload, Recorded};

/// Headers masked when `--mask-header` is not given.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

#[derive(Subcommand)]
pub enum TrafficCommand {
    /// Write connections recorded at monitor level `replay` to a traffic
    /// file (one JSON object per connection and line).
    Export {
        /// The monitor database (or another traffic file).
        #[arg(long)]
        from: PathBuf,
        /// The traffic file to write.
        #[arg(long)]
        out: PathBuf,
        /// Only connections on this endpoint (its configured path).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only connections upgraded within this long before now.
        #[arg(long, value_parser = crate::parse_duration_arg)]
        since: Option<std::time::Duration>,
        /// The last this many connections.
        #[arg(long, default_value_t = 100)]
        connections: usize,
        /// Also mask the values at this JSON pointer in text messages
        /// (repeatable; the recording's own `[monitor] mask` already applied).
        #[arg(long = "mask")]
        masks: Vec<String>,
        /// Mask this header's value, in requests and responses (repeatable;
        /// default: authorization, proxy-authorization, cookie, set-cookie).
        #[arg(long = "mask-header")]
        mask_headers: Vec<String>,
    },
}

/// Run one `wsgate traffic` command.
pub fn run(command: TrafficCommand) -> anyhow::Result<()> {
    let TrafficCommand::Export {
        from,
        out,
        endpoint,
        since,
        connections,
        masks,
        mask_headers,
    } = command;
    if let Some(bad) = masks.iter().find(|m| !m.starts_with('/')) {
        anyhow::bail!("--mask {bad}: not a JSON pointer (`/field/nested`)");
    }
    let filter = ConnectionFilter {
        endpoint,
        since_us: crate::replay::since_us(since),
        limit: connections,
        ..ConnectionFilter::default()
    };
    let mut recorded = wsgate_monitor::read_recorded(&from, &filter)?;
    let mask = Mask::new(masks);
    let headers: Vec<String> = if mask_headers.is_empty() {
        SECRET_HEADERS.iter().map(|h| h.to_string()).collect()
    } else {
        mask_headers
    };
    for connection in &mut recorded {
        mask_connection(connection, &mask, &headers);
    }
    wsgate_monitor::write_traffic(&out, &recorded)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
    let messages: usize = recorded.iter().map(|c| c.messages.len()).sum();
    println!(
        "exported {} connections, {messages} messages from {} to {}",
        recorded.len(),
        from.display(),
        out.display()
    );
    Ok(())
}

/// Mask `connection`'s request and response headers named in `headers`
/// and its text messages at `mask`'s pointers.
fn mask_connection(connection: &mut Recorded, mask: &Mask, headers: &[String]) {
    let upgrade = &mut connection.upgrade;
    for (name, value) in upgrade
        .request_headers
        .iter_mut()
        .chain(upgrade.response_headers.iter_mut())
    {
        if headers.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            *value = MASKED.to_string();
        }
    }
    for message in &mut connection.messages {
        let payloads = std::iter::once(&mut message.input)
            .chain(message.forward.iter_mut())
            .chain(message.replies.iter_mut());
        for payload in payloads {
            if let Payload::Text { data } = payload {
                *data = mask.apply(data);
            }
        }
    }
}
