//! A loopback HTTP proxy between the SDK and moto, used by `plan emulate` and by the tests. It
//! corrects two emulator defects, answers the emulated application's health URL, counts the
//! actions that reach moto, and (for tests) can make the emulator behave more like AWS under
//! stress: answer a share of requests with throttling or 503 errors, and hold a DB instance at a
//! status for a while after an action, so that there is a wait to interrupt.
//!
//! It listens on 127.0.0.1 only and forwards only to a moto on 127.0.0.1.
//!
//! The corrections (each also written down where a test relies on it):
//! - moto 5.2.5 writes DMS timestamps (InstanceCreateTime, ReplicationTaskCreationDate, ...) as ISO
//!   strings where the DMS JSON protocol has epoch seconds, which the SDK rightly refuses to parse:
//!   they become epoch seconds in DMS answers.
//! - moto 5.2.5 keeps reporting `ReadReplicaSourceDBInstanceIdentifier` after `PromoteReadReplica`
//!   (AWS drops it once the instance is standalone): once a promotion has passed through, that
//!   element is removed from the promoted instance's descriptions.
//! - moto 5.2.5 gives each Aurora cluster's endpoints a random label of their own
//!   (`ID.cluster-<12 random>.REGION...`), where AWS uses the account's one label, the one its
//!   instances' endpoints carry: RDS answers name `ID.cluster-aaaaaaaaaa.REGION...` (and
//!   `cluster-ro-`), moto's instances' label, so the emulation knows a cluster's name before it
//!   exists, as a real account's operator does.
//!
//! - moto 5.2.5 answers every DMS replication subnet group with one made-up subnet
//!   (`subnet-12345`): the subnets its create asked for are put back in DescribeReplicationSubnetGroups
//!   answers, so a refresh does not report drift AWS would not.
//! - moto 5.2.5 answers a CreateDBCluster of an identifier that exists with a clash of its
//!   automated snapshot (`DBClusterSnapshotAlreadyExistsFault`): the code becomes AWS's
//!   `DBClusterAlreadyExistsFault`.
//! - moto 5.2.5 leaves a DMS replication task `creating` for good: it is shown `ready`, as AWS
//!   makes it within minutes, so a create's wait ends.
//!
//! Every request that is not answered with an injected fault reaches moto as the SDK sent it.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The path of the emulated application's health URL.
pub const HEALTH_PATH: &str = "/__cutover_emulated_app/health";

#[derive(Default)]
struct Rules {
    /// Every `fault_every`-th request is answered by the proxy with a fault (0: never).
    fault_every: usize,
    requests: usize,
    /// Faults injected, by kind ("503", "Throttling", "ThrottlingException").
    injected: HashMap<String, usize>,
    /// After `action` passes for a DB instance, hold it at `status` for a while.
    hold_after: Vec<(String, String, Duration)>,
    /// DB instance identifier -> (status shown, until).
    held: HashMap<String, (String, Instant)>,
    promoted: HashSet<String>,
    /// Actions whose next request reaches moto but is answered with a 503 (once each).
    fail_after: Vec<String>,
    /// Actions whose next answer is held this long before it is sent (once each): a window in
    /// which the service has acted and the client does not know it yet.
    delay_answer: Vec<(String, Duration)>,
    /// Actions whose next request is held this long before it is passed on (once each), and
    /// dropped if the client went away meanwhile: a window in which the client has recorded its
    /// intent and the service has not acted.
    delay_request: Vec<(String, Duration)>,
    /// Actions held by `delay_request` so far, in order.
    held_requests: Vec<String>,
    /// DMS replication subnet group -> the subnets its create asked for.
    dms_subnets: HashMap<String, Vec<serde_json::Value>>,
}

pub struct Proxy {
    port: u16,
    /// Every action that reached moto, in order (`Action=` of query requests, or the JSON
    /// target), with the request body.
    calls: Arc<Mutex<Vec<(String, String)>>>,
    rules: Arc<Mutex<Rules>>,
}

impl Proxy {
    /// A proxy to the moto on `upstream`, on a free loopback port.
    pub fn start(upstream: u16) -> Proxy {
        Self::start_on(upstream, 0).expect("a loopback port to listen on")
    }

    /// A proxy to the moto on `upstream`, listening on `port` (0: any free one).
    pub fn start_on(upstream: u16, port: u16) -> std::io::Result<Proxy> {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let rules = Arc::new(Mutex::new(Rules::default()));
        let (seen, r) = (calls.clone(), rules.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (seen, r) = (seen.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = Proxy::serve(conn, upstream, seen, r);
                });
            }
        });
        Ok(Proxy { port, calls, rules })
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many times `action` reached moto.
    pub fn count(&self, action: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == action)
            .count()
    }

    /// The bodies of the requests of `action` that reached moto, in order.
    pub fn bodies(&self, action: &str) -> Vec<String> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Answers every `n`-th request with a fault instead of passing it on (0: none), alternating
    /// a 503 and the protocol's throttling error.
    pub fn fault_every(&self, n: usize) {
        self.rules.lock().unwrap().fault_every = n;
    }

    /// Lets the next `action` reach moto, then answers it with a 503 as if the service had failed
    /// after acting (the SDK retries, and the retry meets what the first attempt made).
    pub fn fail_after(&self, action: &str) {
        self.rules.lock().unwrap().fail_after.push(action.into());
    }

    /// Lets the next `action` reach moto and holds its answer for `d` before sending it: a
    /// process killed meanwhile never learns what the service made.
    pub fn delay_answer(&self, action: &str, d: Duration) {
        self.rules
            .lock()
            .unwrap()
            .delay_answer
            .push((action.into(), d));
    }

    /// Holds the next request of `action` for `d` before passing it on; if the client has gone
    /// meanwhile (killed), the request is dropped and the service never acts.
    pub fn delay_request(&self, action: &str, d: Duration) {
        self.rules
            .lock()
            .unwrap()
            .delay_request
            .push((action.into(), d));
    }

    /// How many requests of `action` `delay_request` has held so far.
    pub fn held_requests(&self, action: &str) -> usize {
        self.rules
            .lock()
            .unwrap()
            .held_requests
            .iter()
            .filter(|a| *a == action)
            .count()
    }

    /// The faults injected so far, by kind.
    pub fn injected(&self) -> HashMap<String, usize> {
        self.rules.lock().unwrap().injected.clone()
    }

    /// After `action` passes for a DB instance, its descriptions show `status` for `d`.
    pub fn hold_after(&self, action: &str, status: &str, d: Duration) {
        self.rules
            .lock()
            .unwrap()
            .hold_after
            .push((action.into(), status.into(), d));
    }

    /// (head, body) of one HTTP/1.1 message with a Content-Length (or read to EOF).
    fn read_message(
        r: &mut impl std::io::Read,
        to_eof: bool,
    ) -> std::io::Result<(String, Vec<u8>)> {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            if r.read(&mut byte)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&buf).to_string();
        let len = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        });
        let mut body = Vec::new();
        match len {
            Some(n) => {
                body.resize(n, 0);
                r.read_exact(&mut body)?;
            }
            None if to_eof => {
                r.read_to_end(&mut body)?;
            }
            None => {}
        }
        Ok((head, body))
    }

    fn respond(
        client: &mut std::net::TcpStream,
        status: &str,
        headers: &[String],
        body: &[u8],
    ) -> std::io::Result<()> {
        let mut out = format!("HTTP/1.1 {status}\r\n");
        for h in headers {
            out.push_str(h);
            out.push_str("\r\n");
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: keep-alive\r\n\r\n",
            body.len()
        ));
        client.write_all(out.as_bytes())?;
        client.write_all(body)
    }

    /// The action of a REST request the rules can name: Route53's record changes
    /// (`POST /2013-04-01/hostedzone/ID/rrset`), which carry no `Action=` or target header.
    fn rest_action(head: &str) -> Option<String> {
        let line = head.lines().next()?;
        (line.starts_with("POST ") && line.contains("/hostedzone/") && line.contains("/rrset"))
            .then(|| "ChangeResourceRecordSets".to_string())
    }

    /// A form parameter of a query request.
    fn param(body: &str, key: &str) -> Option<String> {
        body.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == key).then(|| v.replace("%2D", "-"))
        })
    }

    fn serve(
        mut client: std::net::TcpStream,
        upstream: u16,
        seen: Arc<Mutex<Vec<(String, String)>>>,
        rules: Arc<Mutex<Rules>>,
    ) -> std::io::Result<()> {
        loop {
            let (head, body) = match Proxy::read_message(&mut client, false) {
                Ok(m) => m,
                Err(_) => return Ok(()),
            };
            // The emulated application: its health URL answers, nothing else of it exists.
            if head.starts_with(&format!("GET {HEALTH_PATH} ")) {
                Proxy::respond(
                    &mut client,
                    "200 OK",
                    &["Content-Type: text/plain".into()],
                    b"ok",
                )?;
                continue;
            }
            let form = String::from_utf8_lossy(&body).to_string();
            let dms = head.contains("AmazonDMSv20160101");
            let query_action = Proxy::param(&form, "Action");
            let json_target = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-amz-target")
                    .then(|| v.trim().rsplit('.').next().unwrap_or_default().to_string())
            });
            // A fault instead of an answer, before the request reaches moto.
            let fault = {
                let mut r = rules.lock().unwrap();
                r.requests += 1;
                if r.fault_every > 0 && r.requests.is_multiple_of(r.fault_every) {
                    let n = r.requests / r.fault_every;
                    let kind = if n % 2 == 1 {
                        "503"
                    } else if query_action.is_some() {
                        "Throttling"
                    } else if json_target.is_some() {
                        "ThrottlingException"
                    } else {
                        "503"
                    };
                    *r.injected.entry(kind.to_string()).or_default() += 1;
                    Some(kind)
                } else {
                    None
                }
            };
            match fault {
                Some("503") => {
                    Proxy::respond(
                        &mut client,
                        "503 Service Unavailable",
                        &["Content-Type: text/plain".into()],
                        b"Service Unavailable",
                    )?;
                    continue;
                }
                Some("Throttling") => {
                    Proxy::respond(
                        &mut client,
                        "400 Bad Request",
                        &["Content-Type: text/xml".into()],
                        b"<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>injected</RequestId></ErrorResponse>",
                    )?;
                    continue;
                }
                Some(_) => {
                    Proxy::respond(
                        &mut client,
                        "400 Bad Request",
                        &[
                            "Content-Type: application/x-amz-json-1.1".into(),
                            "x-amzn-ErrorType: ThrottlingException".into(),
                        ],
                        br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
                    )?;
                    continue;
                }
                None => {}
            }
            let action = query_action
                .clone()
                .or(json_target)
                .or_else(|| Proxy::rest_action(&head));
            if let Some(a) = &action {
                let mut r = rules.lock().unwrap();
                if let Some(i) = r.delay_request.iter().position(|(x, _)| x == a) {
                    let (_, d) = r.delay_request.remove(i);
                    r.held_requests.push(a.clone());
                    drop(r);
                    std::thread::sleep(d);
                    // A client killed meanwhile has closed the connection: nothing is sent.
                    client.set_nonblocking(true)?;
                    let mut probe = [0u8; 1];
                    let gone = match client.peek(&mut probe) {
                        Ok(n) => n == 0,
                        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                    };
                    client.set_nonblocking(false)?;
                    if gone {
                        return Ok(());
                    }
                }
            }
            if let Some(a) = &action {
                seen.lock().unwrap().push((a.clone(), form.clone()));
            }
            let mut up = std::net::TcpStream::connect(("127.0.0.1", upstream))?;
            up.write_all(head.as_bytes())?;
            up.write_all(&body)?;
            let (rhead, mut rbody) = Proxy::read_message(&mut up, true)?;
            let ok = rhead.starts_with("HTTP/1.1 2") || rhead.starts_with("HTTP/1.0 2");
            // Before any held or failed answer: the group exists in moto from now on.
            if dms && ok && action.as_deref() == Some("CreateReplicationSubnetGroup") {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                    if let (Some(id), Some(subnets)) = (
                        v["ReplicationSubnetGroupIdentifier"].as_str(),
                        v["SubnetIds"].as_array(),
                    ) {
                        rules
                            .lock()
                            .unwrap()
                            .dms_subnets
                            .insert(id.to_string(), subnets.clone());
                    }
                }
            }
            if let Some(a) = &action {
                let mut r = rules.lock().unwrap();
                if let Some(i) = r.fail_after.iter().position(|x| x == a) {
                    r.fail_after.remove(i);
                    *r.injected.entry("503 after acting".into()).or_default() += 1;
                    drop(r);
                    Proxy::respond(
                        &mut client,
                        "503 Service Unavailable",
                        &["Content-Type: text/plain".into()],
                        b"Service Unavailable",
                    )?;
                    continue;
                }
            }
            if let Some(a) = &action {
                let mut r = rules.lock().unwrap();
                if let Some(i) = r.delay_answer.iter().position(|(x, _)| x == a) {
                    let (_, d) = r.delay_answer.remove(i);
                    drop(r);
                    std::thread::sleep(d);
                }
            }
            if let (Some(a), Some(id), true) = (
                &query_action,
                Proxy::param(&form, "DBInstanceIdentifier"),
                ok,
            ) {
                let mut r = rules.lock().unwrap();
                if a == "PromoteReadReplica" {
                    r.promoted.insert(id.clone());
                }
                let holds: Vec<(String, Duration)> = r
                    .hold_after
                    .iter()
                    .filter(|(act, _, _)| act == a)
                    .map(|(_, st, d)| (st.clone(), *d))
                    .collect();
                for (st, d) in holds {
                    r.held.insert(id.clone(), (st, Instant::now() + d));
                }
            }
            if dms {
                if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&rbody) {
                    fix_subnet_groups(&mut v, &rules.lock().unwrap().dms_subnets);
                    fix_created_tasks(&mut v);
                    fix_times(&mut v);
                    rbody = serde_json::to_vec(&v).unwrap();
                }
            }
            if query_action.is_some() && ok {
                if let Some(fixed) = fixed_cluster_hosts(&String::from_utf8_lossy(&rbody)) {
                    rbody = fixed.into_bytes();
                }
            }
            // moto 5.2.5 answers a second CreateDBCluster of an existing identifier with the clash
            // of the automated snapshot it takes at creation; AWS answers that the cluster exists.
            if query_action.as_deref() == Some("CreateDBCluster") && !ok {
                let text = String::from_utf8_lossy(&rbody);
                if text.contains("<Code>DBClusterSnapshotAlreadyExistsFault</Code>")
                    && text.contains("identifier rds:")
                {
                    rbody = text
                        .replace(
                            "<Code>DBClusterSnapshotAlreadyExistsFault</Code>",
                            "<Code>DBClusterAlreadyExistsFault</Code>",
                        )
                        .into_bytes();
                }
            }
            if query_action.as_deref() == Some("DescribeDBInstances") && ok {
                let r = rules.lock().unwrap();
                rbody = rewrite_instances(&String::from_utf8_lossy(&rbody), &r).into_bytes();
            }
            let mut headers = Vec::new();
            for l in rhead.trim_end().lines().skip(1) {
                let lower = l.to_ascii_lowercase();
                if lower.starts_with("content-length:") || lower.starts_with("connection:") {
                    continue;
                }
                headers.push(l.to_string());
            }
            let status = rhead
                .lines()
                .next()
                .and_then(|l| l.split_once(' '))
                .map(|(_, s)| s.to_string())
                .unwrap_or_else(|| "200 OK".into());
            Proxy::respond(&mut client, &status, &headers, &rbody)?;
        }
    }
}

/// The `<DBInstance>` elements of a DescribeDBInstances answer with held statuses shown and
/// promoted instances' replication source removed.
fn rewrite_instances(xml: &str, r: &Rules) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<DBInstance>") {
        let Some(j) = rest[i..].find("</DBInstance>").map(|j| i + j) else {
            break;
        };
        out.push_str(&rest[..i]);
        let mut block = rest[i..j].to_string();
        let id = between(&block, "<DBInstanceIdentifier>", "</DBInstanceIdentifier>")
            .unwrap_or_default()
            .to_string();
        if let Some((st, until)) = r.held.get(&id) {
            if Instant::now() < *until {
                if let Some(old) = between(&block, "<DBInstanceStatus>", "</DBInstanceStatus>") {
                    block = block.replace(
                        &format!("<DBInstanceStatus>{old}</DBInstanceStatus>"),
                        &format!("<DBInstanceStatus>{st}</DBInstanceStatus>"),
                    );
                }
            }
        }
        if r.promoted.contains(&id) {
            if let Some(src) = between(
                &block,
                "<ReadReplicaSourceDBInstanceIdentifier>",
                "</ReadReplicaSourceDBInstanceIdentifier>",
            ) {
                block = block.replace(
                    &format!(
                        "<ReadReplicaSourceDBInstanceIdentifier>{src}</ReadReplicaSourceDBInstanceIdentifier>"
                    ),
                    "",
                );
            }
        }
        out.push_str(&block);
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// `ID.cluster-<12 letters or digits>.` (and `cluster-ro-`) as `ID.cluster-aaaaaaaaaa.`; None
/// when there is none.
fn fixed_cluster_hosts(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut rest = body;
    let mut changed = false;
    while let Some(i) = rest.find(".cluster-") {
        let (head, tail) = rest.split_at(i + ".cluster-".len());
        out.push_str(head);
        let tail = match tail.strip_prefix("ro-") {
            Some(t) => {
                out.push_str("ro-");
                t
            }
            None => tail,
        };
        let label: String = tail.chars().take(12).collect();
        if label.len() == 12
            && label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && tail[12..].starts_with('.')
        {
            out.push_str("aaaaaaaaaa");
            rest = &tail[12..];
            changed = true;
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let i = s.find(open)? + open.len();
    let j = s[i..].find(close)? + i;
    Some(&s[i..j])
}

/// moto 5.2.5 leaves every replication task `creating` for good, where AWS makes it `ready`
/// within minutes: a task is shown `ready` once moto has it.
fn fix_created_tasks(v: &mut serde_json::Value) {
    let tasks = match v.get_mut("ReplicationTasks").and_then(|t| t.as_array_mut()) {
        Some(t) => t.iter_mut().collect::<Vec<_>>(),
        None => v.get_mut("ReplicationTask").into_iter().collect(),
    };
    for t in tasks {
        if t["Status"] == "creating" {
            t["Status"] = serde_json::Value::from("ready");
        }
    }
}

/// moto 5.2.5 answers DescribeReplicationSubnetGroups with the same made-up subnet
/// (`subnet-12345`) for every group: the subnets the group's create asked for are put back.
fn fix_subnet_groups(v: &mut serde_json::Value, asked: &HashMap<String, Vec<serde_json::Value>>) {
    let Some(groups) = v
        .get_mut("ReplicationSubnetGroups")
        .and_then(|g| g.as_array_mut())
    else {
        return;
    };
    for g in groups {
        let Some(subnets) = g["ReplicationSubnetGroupIdentifier"]
            .as_str()
            .and_then(|id| asked.get(id))
        else {
            continue;
        };
        g["Subnets"] = serde_json::Value::Array(
            subnets
                .iter()
                .map(|s| serde_json::json!({"SubnetIdentifier": s, "SubnetStatus": "Active"}))
                .collect(),
        );
    }
}

/// ISO timestamps under keys ending in Date or Time become epoch seconds.
fn fix_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if let serde_json::Value::String(s) = x {
                    if k.ends_with("Date") || k.ends_with("Time") {
                        if let Ok(t) = humantime::parse_rfc3339_weak(s) {
                            let secs = t
                                .duration_since(std::time::UNIX_EPOCH)
                                .unwrap()
                                .as_secs_f64();
                            *x = serde_json::json!(secs);
                        }
                    }
                } else {
                    fix_times(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(fix_times),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_clusters_random_label_becomes_the_accounts_one() {
        let xml = "<Endpoint>c1.cluster-abcdef123456.eu-central-1.rds.amazonaws.com</Endpoint><ReaderEndpoint>c1.cluster-ro-abcdef123456.eu-central-1.rds.amazonaws.com</ReaderEndpoint>";
        assert_eq!(
            super::fixed_cluster_hosts(xml).unwrap(),
            "<Endpoint>c1.cluster-aaaaaaaaaa.eu-central-1.rds.amazonaws.com</Endpoint><ReaderEndpoint>c1.cluster-ro-aaaaaaaaaa.eu-central-1.rds.amazonaws.com</ReaderEndpoint>"
        );
        // Not a moto label: left alone.
        assert_eq!(
            super::fixed_cluster_hosts("my.cluster-params.x and a.cluster-aaaaaaaaaa.r"),
            None
        );
    }
}
