//! PostgreSQL restarted under load: requests fail with a clear 503 while it is down and the
//! node recovers by itself. Stops the shared cluster, so it lives in its own test binary
//! (cargo runs test binaries one at a time) and needs root for `pg_ctlcluster`.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kagi_client::{Client, ClientConfig, ClientError};
use serde_json::{json, Value};
use support::{is_root, Backend, Server};

/// Starts the cluster again however the test ends.
struct Restart;
impl Drop for Restart {
    fn drop(&mut self) {
        pg("start");
    }
}

fn pg(action: &str) {
    let _ = Command::new("pg_ctlcluster")
        .args(["15", "main", action, "-m", "fast"])
        .status();
    if action == "start" {
        for _ in 0..60 {
            let ok = Command::new("pg_isready")
                .args(["-q", "-h", "127.0.0.1"])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

type Outcomes = Arc<Mutex<Vec<Result<(), (u16, String)>>>>;

fn wait_for(
    out: &Outcomes,
    from: usize,
    what: &str,
    pred: impl Fn(&Result<(), (u16, String)>) -> bool,
) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = out.lock().unwrap();
        if let Some(i) = o[from..].iter().position(&pred) {
            return from + i;
        }
        drop(o);
        assert!(Instant::now() < deadline, "never saw {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn postgres_restart_under_load_gives_503_then_recovers() {
    let test = "postgres_restart_under_load_gives_503_then_recovers";
    if !is_root() {
        support::skip(test, "needs root to stop and start the PostgreSQL cluster");
        return;
    }
    let Some(b) = Backend::postgres(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let s = Server::on(&b, dir.path(), &[]);
    s.ok(&["key", "create", "k1"]);
    let c = Client::new(ClientConfig {
        addr: s.addr.clone(),
        token: Some(s.token.clone()),
        max_retries: Some(0),
        ..Default::default()
    })
    .unwrap();
    let out: Outcomes = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let load = {
        let (out, stop) = (out.clone(), stop.clone());
        rt.spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = c
                    .post::<Value, _>("/v1/datakey/generate", &json!({"key": "k1"}))
                    .await;
                out.lock().unwrap().push(match r {
                    Ok(_) => Ok(()),
                    Err(ClientError::Api {
                        status, message, ..
                    }) => Err((status, message)),
                    Err(e) => Err((0, e.to_string())),
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_for(&out, 0, "a first success", |r| r.is_ok());
    let _restart = Restart;
    pg("stop");
    let first_err = wait_for(&out, 0, "a failure while PostgreSQL is down", |r| {
        r.is_err()
    });
    pg("start");
    let back = wait_for(&out, first_err, "recovery after PostgreSQL is back", |r| {
        r.is_ok()
    });
    // A little more load after recovery.
    let settled = out.lock().unwrap().len();
    wait_for(&out, settled, "steady service", |r| r.is_ok());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    rt.block_on(load).unwrap();

    let o = out.lock().unwrap();
    let failures: Vec<&(u16, String)> = o.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(!failures.is_empty());
    for (status, msg) in &failures {
        assert_eq!(*status, 503, "outage answered {status}: {msg}");
        assert!(
            msg.contains("unreachable") || msg.contains("storage") || msg.contains("audit"),
            "unclear outage message: {msg}"
        );
        assert_eq!(msg.lines().count(), 1);
    }
    assert!(back > first_err);
    drop(o);
    assert!(s.ok(&["audit", "verify"]).contains("verified"));
    let (code, body) = s.curl("GET", "/v1/health/ready", None, "application/json");
    assert_eq!(code, 200, "{body}");
}
