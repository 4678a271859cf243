//! Continuous SIEM forwarding to a real rsyslog: the receiver stops mid-stream and comes back,
//! the key service restarts, and every audit record still arrives (duplicates only from the
//! at-least-once window; nothing before the saved cursor is sent again after a restart).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{free_port, have, skip, wait_until, Proc, Server};

fn rsyslog(dir: &Path, port: u16) -> Proc {
    rsyslog_with(dir, port, "module(load=\"imtcp\")\n")
}

/// rsyslog with TLS (gtls driver, anonymous clients) on `port`, using `dir`'s cert files.
fn rsyslog_tls(dir: &Path, port: u16) -> Proc {
    let d = dir.display();
    rsyslog_with(
        dir,
        port,
        &format!(
            "global(DefaultNetstreamDriver=\"gtls\" DefaultNetstreamDriverCAFile=\"{d}/ca.pem\" \
             DefaultNetstreamDriverCertFile=\"{d}/srv.pem\" DefaultNetstreamDriverKeyFile=\"{d}/srv.key\")\n\
             module(load=\"imtcp\" StreamDriver.Name=\"gtls\" StreamDriver.Mode=\"1\" StreamDriver.Authmode=\"anon\")\n"
        ),
    )
}

fn rsyslog_with(dir: &Path, port: u16, modules: &str) -> Proc {
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\n{modules}input(type=\"imtcp\" port=\"{port}\" ruleset=\"kagi\")\n\
             template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n\
             ruleset(name=\"kagi\") {{ action(type=\"omfile\" file=\"{d}/siem.log\" template=\"raw\") }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let child = Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslog.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok()),
        "rsyslogd did not start"
    );
    Proc(child)
}

fn stop(mut p: Proc) {
    // SIGTERM, as an operator stops it; rsyslog writes out what it has and exits.
    let _ = Command::new("kill").arg(p.0.id().to_string()).status();
    let _ = p.0.wait();
}

/// The `seq` of every line rsyslog wrote, in order.
fn received(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("siem.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let at = l.find("seq=\"")? + 5;
            l[at..].split('"').next()?.parse().ok()
        })
        .collect()
}

fn ops(srv: &Server, tag: &str, n: usize) {
    for i in 0..n {
        srv.ok(&["key", "create", &format!("{tag}-{i}")]);
    }
}

#[test]
fn forwarding_survives_receiver_and_server_restarts() {
    if !have("rsyslogd") {
        skip(
            "forwarding_survives_receiver_and_server_restarts",
            "rsyslogd is not installed (scripts/test installs rsyslog)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let cursor = d.join("forward.cursor");
    let args = [
        "--forward-to",
        &format!("tcp://127.0.0.1:{port}"),
        "--forward-cursor",
        cursor.to_str().unwrap(),
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = d.join("data");
    let srv = Server::dev(&data, &args);
    let rs = rsyslog(d, port);
    ops(&srv, "a", 40);
    // The receiver stops while records are flowing, and misses what comes meanwhile.
    let writer = {
        let (addr, token) = (srv.addr.clone(), srv.token.clone());
        std::thread::spawn(move || {
            for i in 0..40 {
                Command::new(support::kagi_bin())
                    .args(["key", "create", &format!("b-{i}")])
                    .env("KAGI_ADDR", &addr)
                    .env("KAGI_TOKEN", &token)
                    .output()
                    .unwrap();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    stop(rs);
    writer.join().unwrap();
    ops(&srv, "c", 20);
    let rs = rsyslog(d, port);
    ops(&srv, "d", 20);
    let head = |srv: &Server| -> u64 {
        let v = srv.json(&["audit", "tail", "-n", "1"]);
        v["records"][0]["seq"].as_u64().unwrap()
    };
    let all_up_to = |n: u64| {
        let got: BTreeSet<u64> = received(d).into_iter().collect();
        (1..=n).all(|s| got.contains(&s))
    };
    let h1 = head(&srv);
    assert!(
        wait_until(Duration::from_secs(30), || all_up_to(h1)),
        "records missing after the receiver came back: have {} distinct of {h1}",
        received(d).into_iter().collect::<BTreeSet<_>>().len()
    );

    // The key service restarts: forwarding resumes from the saved cursor, not from record 1.
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&cursor)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .is_some_and(|c| c > h1)
    }));
    drop(srv);
    let saved: u64 = std::fs::read_to_string(&cursor)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let before = received(d).len();
    let srv = Server::dev(&data, &args);
    ops(&srv, "e", 20);
    let h2 = head(&srv);
    assert!(
        wait_until(Duration::from_secs(30), || all_up_to(h2)),
        "records missing after the key service restarted"
    );
    let after: Vec<u64> = received(d)[before..].to_vec();
    assert!(
        after.iter().all(|&s| s >= saved),
        "records before the cursor ({saved}) were sent again after the restart"
    );
    let total = received(d);
    let distinct: BTreeSet<u64> = total.iter().copied().collect();
    println!(
        "forwarded {} records, {} lines ({} duplicates from the at-least-once window)",
        distinct.len(),
        total.len(),
        total.len() - distinct.len()
    );
    stop(rs);
}

#[test]
fn forwarding_over_tls_to_rsyslog() {
    if !have("rsyslogd") || !Path::new("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so").exists() {
        skip(
            "forwarding_over_tls_to_rsyslog",
            "rsyslogd with the gtls driver is not installed (scripts/test installs rsyslog and rsyslog-gnutls)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    support::test_ca(d, "srv", &["localhost"]);
    let port = free_port();
    let rs = rsyslog_tls(d, port);
    let to = format!("tls://localhost:{port}");
    let cursor = d.join("tls.cursor");
    let ca_path = d.join("ca.pem");
    let srv = Server::dev(
        &d.join("data"),
        &[
            "--forward-to",
            &to,
            "--forward-cursor",
            cursor.to_str().unwrap(),
            "--forward-ca-cert",
            ca_path.to_str().unwrap(),
        ],
    );
    ops(&srv, "t", 20);
    let v = srv.json(&["audit", "tail", "-n", "1"]);
    let head = v["records"][0]["seq"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let got: BTreeSet<u64> = received(d).into_iter().collect();
            (1..=head).all(|s| got.contains(&s))
        }),
        "records did not arrive over TLS: {:?}",
        received(d).len()
    );
    stop(rs);
}
