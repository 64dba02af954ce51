//! Debian's `docker-registry` (the CNCF distribution registry), started by
//! a test on port 0, and a raw HTTP look at what it stores.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::TIMEOUT;

/// `alice`'s htpasswd line (bcrypt, the only kind the registry reads); her
/// password is [`PASSWORD`].
pub const HTPASSWD: &str = "alice:$2b$05$uMs45Sl3r1L/BldyrOZNZehPjviwb2gUJ6ryLcqXm5rUk8jKbyoha\n";
/// The password of `alice` in [`HTPASSWD`].
pub const PASSWORD: &str = "s3cret";

/// How the registry is protected.
#[derive(Default)]
pub struct Options<'a> {
    /// Require basic authentication (`alice` / [`PASSWORD`]).
    pub htpasswd: bool,
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(&'a Path, &'a Path)>,
}

/// A running registry; stopped when dropped.
pub struct DockerRegistry {
    child: Child,
    /// `127.0.0.1:<port>`.
    pub address: String,
}

impl DockerRegistry {
    /// Start a registry keeping its blobs in `dir` (which outlives it, so
    /// a restarted registry serves what was pushed before).
    pub fn start(dir: &Path, options: &Options<'_>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:0\n  secret: wsgate-test\n",
            dir.join("data").display()
        );
        if let Some((certificate, key)) = options.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                certificate.display(),
                key.display()
            ));
        }
        if options.htpasswd {
            let htpasswd = dir.join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wsgate-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry (scripts/setup-test-peers installs it)");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, lines) = mpsc::channel();
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        let address = loop {
            let line = lines
                .recv_timeout(TIMEOUT)
                .expect("the registry logs `listening on`");
            // `listening on 127.0.0.1:PORT` (with `, tls` when serving HTTPS).
            if let Some(rest) = line.split("msg=\"listening on ").nth(1) {
                break rest.split(['"', ',']).next().unwrap().to_string();
            }
        };
        Self { child, address }
    }

    /// Stop it (its storage stays).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `GET path` over plain HTTP (an OCI `Accept` header for manifests):
    /// the status and the body.
    pub fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = self.request("GET", path, "", &[]);
        (status, body)
    }

    /// One HTTP/1.1 request, the connection closed after it: the status,
    /// the response head and the body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        let mut stream = std::net::TcpStream::connect(&self.address).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Accept: application/vnd.oci.image.manifest.v1+json, application/json\r\n\
             Content-Length: {}\r\n",
            self.address,
            body.len()
        );
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete response head");
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let mut body = response[split + 4..].to_vec();
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body);
        }
        (status, head, body)
    }

    /// Upload `bytes` as a blob of `repository` (a POST that opens the
    /// upload, one PUT with the bytes); its digest.
    pub fn push_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = wsgate_store::digest_of(bytes);
        let (status, head, _) =
            self.request("POST", &format!("/v2/{repository}/blobs/uploads/"), "", &[]);
        assert_eq!(status, 202, "{head}");
        let location = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(name, _)| name.eq_ignore_ascii_case("location"))
            })
            .map(|(_, value)| value.trim().to_string())
            .unwrap();
        // The location may be absolute: keep its path and query.
        let path = match location.split_once("://") {
            Some((_, rest)) => rest[rest.find('/').unwrap()..].to_string(),
            None => location,
        };
        let separator = if path.contains('?') { '&' } else { '?' };
        let (status, head, _) = self.request(
            "PUT",
            &format!("{path}{separator}digest={digest}"),
            "application/octet-stream",
            bytes,
        );
        assert_eq!(status, 201, "{head}");
        digest
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 4 + size..];
    }
}
