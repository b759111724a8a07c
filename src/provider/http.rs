//! The application's health, as a step: `http.health` asks an HTTP(S) URL until it has answered
//! 2xx a number of times in a row, or fails when the window ends, naming the last answer. Used as
//! a guard before a cutover (the application is healthy now) and after the flip (it stays healthy
//! on the new database).
//!
//! Only GET requests with no body are sent; nothing here changes anything, and a URL's query string
//! (which may carry a token) is never repeated in a message.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Ctx, ProviderError, Registry, Request, StepType};
use crate::dsl::Declare;
use crate::value::{get_str, get_u64, Attrs, Value};

pub fn register(r: &mut Registry) {
    r.step(HealthType);
}

/// Waits until `url` answers 2xx `consecutive` times in a row (default 3), polling every
/// `every_ms` (default 2 s), for at most `within` seconds (default 300).
#[derive(Debug, Clone)]
pub struct HealthCheck {
    inputs: Attrs,
}

impl HealthCheck {
    pub fn url(url: impl Into<Value>) -> HealthCheck {
        HealthCheck {
            inputs: Attrs::from([
                ("url".to_string(), url.into()),
                ("within_seconds".to_string(), Value::from(300u64)),
                ("consecutive".to_string(), Value::from(3u64)),
                ("every_ms".to_string(), Value::from(2000u64)),
            ]),
        }
    }
    /// The longest the step waits for a healthy streak.
    pub fn within(mut self, seconds: u64) -> Self {
        self.inputs
            .insert("within_seconds".into(), Value::from(seconds));
        self
    }
    /// How many 2xx answers in a row count as healthy.
    pub fn consecutive(mut self, n: u64) -> Self {
        self.inputs.insert("consecutive".into(), Value::from(n));
        self
    }
    pub fn every_ms(mut self, ms: u64) -> Self {
        self.inputs.insert("every_ms".into(), Value::from(ms));
        self
    }
}

crate::declare!(HealthCheck, "http.health", Step);

/// A URL split for a GET.
#[derive(Debug, PartialEq)]
struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

impl Url {
    fn parse(s: &str) -> Result<Url, String> {
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err("the health URL must start with http:// or https://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h,
                p.parse::<u16>()
                    .map_err(|_| format!("the health URL's port `{p}` is not a number"))?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err("the health URL has no host".into());
        }
        Ok(Url {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
    /// The URL without its query string, for messages.
    fn shown(&self) -> String {
        format!(
            "{}://{}:{}{}",
            if self.tls { "https" } else { "http" },
            self.host,
            self.port,
            self.path.split('?').next().unwrap_or("/")
        )
    }
}

/// One GET; the status code, or why there was none.
async fn get(url: &Url, timeout: Duration) -> Result<u16, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: cutover\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        url.path, url.host
    );
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let mut head = Vec::new();
        if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls::pki_types::ServerName::try_from(url.host.clone())
                .map_err(|e| format!("host name: {e}"))?;
            let mut s = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            s.write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_head(&mut s, &mut head).await?;
        } else {
            let mut s = tcp;
            s.write_all(request.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            read_head(&mut s, &mut head).await?;
        }
        status_of(&head)
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn read_head(s: &mut (impl AsyncReadExt + Unpin), head: &mut Vec<u8>) -> Result<(), String> {
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

fn status_of(head: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(head);
    let first = line.lines().next().unwrap_or("");
    let mut parts = first.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err("the answer is not HTTP".into()),
    }
}

struct HealthType;

#[async_trait]
impl StepType for HealthType {
    fn review(&self, inputs: &Attrs) -> super::Review {
        super::Review {
            guards: vec![format!(
                "{} answers 2xx in a row within {} s",
                crate::value::get_u64(inputs, "consecutive").unwrap_or(3),
                crate::value::get_u64(inputs, "within_seconds").unwrap_or(300)
            )],
            ..Default::default()
        }
    }
    fn type_name(&self) -> &'static str {
        HealthCheck::TYPE
    }
    fn service(&self) -> &'static str {
        "http"
    }
    fn rerun_safe(&self) -> bool {
        true
    }
    fn validate(&self, inputs: &Attrs) -> Vec<String> {
        match get_str(inputs, "url") {
            Some(u) => Url::parse(u).err().into_iter().collect(),
            // Known only at apply time.
            None => vec![],
        }
    }
    async fn run(&self, ctx: &Ctx, req: &Request<'_>) -> Result<Attrs, ProviderError> {
        let url = Url::parse(get_str(req.inputs, "url").unwrap_or_default())
            .map_err(ProviderError::new)?;
        let within = Duration::from_secs(get_u64(req.inputs, "within_seconds").unwrap_or(300));
        let want = get_u64(req.inputs, "consecutive").unwrap_or(3).max(1);
        let every = Duration::from_millis(get_u64(req.inputs, "every_ms").unwrap_or(2000));
        let started = Instant::now();
        let (mut streak, mut asked) = (0u64, 0u64);
        loop {
            let answer = get(&url, Duration::from_secs(5)).await;
            asked += 1;
            let last = match &answer {
                Ok(code) => format!("HTTP {code}"),
                Err(e) => e.clone(),
            };
            if matches!(answer, Ok(200..=299)) {
                streak += 1;
            } else {
                streak = 0;
            }
            if streak >= want {
                ctx.report(
                    req.node,
                    &format!("{} healthy: {want} answers 2xx in a row", url.shown()),
                );
                return Ok(Attrs::from([
                    ("healthy_at".to_string(), Value::from(crate::state::now())),
                    ("requests".to_string(), Value::from(asked)),
                ]));
            }
            if started.elapsed() >= within {
                return Err(ProviderError::with_fix(
                    format!(
                        "{} was not healthy within {} s ({want} answers 2xx in a row wanted; last: {last})",
                        url.shown(),
                        within.as_secs()
                    ),
                    "find out why the application is unhealthy; apply again once it answers 2xx",
                ));
            }
            ctx.report(
                req.node,
                &format!("{}: {last} ({streak} of {want} in a row)", url.shown()),
            );
            tokio::time::sleep(every).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_and_shown_without_their_query() {
        let u = Url::parse("https://app.example.com/health?token=s3cret").unwrap();
        assert_eq!(
            u,
            Url {
                tls: true,
                host: "app.example.com".into(),
                port: 443,
                path: "/health?token=s3cret".into()
            }
        );
        assert_eq!(u.shown(), "https://app.example.com:443/health");
        let u = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8080, "/"));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("http://h:notaport/").is_err());
    }

    #[test]
    fn the_status_line_is_read() {
        assert_eq!(status_of(b"HTTP/1.1 204 No Content\r\n"), Ok(204));
        assert!(status_of(b"SSH-2.0-OpenSSH\r\n").is_err());
    }

    #[tokio::test]
    async fn a_local_server_is_asked_until_it_answers_2xx() {
        // A real listener on loopback: first a 503, then 200s.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            for i in 0.. {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let status = if i == 0 { "503 Unavailable" } else { "200 OK" };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let url = Url::parse(&format!("http://127.0.0.1:{port}/health")).unwrap();
        assert_eq!(get(&url, Duration::from_secs(2)).await, Ok(503));
        assert_eq!(get(&url, Duration::from_secs(2)).await, Ok(200));
        let ctx = Ctx::new(
            std::env::temp_dir(),
            "p",
            "s",
            Arc::new(crate::value::EnvSecrets),
        );
        let inputs = HealthCheck::url(url.shown())
            .consecutive(2)
            .every_ms(10)
            .within(5)
            .inputs();
        let out = HealthType
            .run(
                &ctx,
                &Request {
                    node: "health",
                    deterministic_id: "x",
                    inputs: &inputs,
                },
            )
            .await
            .unwrap();
        assert_eq!(out["requests"], 2);
        // Nothing listens on a closed port: the window ends with the reason.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let inputs = HealthCheck::url(format!("http://127.0.0.1:{closed}/"))
            .every_ms(10)
            .within(0)
            .inputs();
        let e = HealthType
            .run(
                &ctx,
                &Request {
                    node: "health",
                    deterministic_id: "x",
                    inputs: &inputs,
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("was not healthy within 0 s") && e.contains("cannot connect"),
            "{e}"
        );
    }
}
