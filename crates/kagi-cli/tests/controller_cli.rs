//! The controller, enrollment and a controller-mode gateway on loopback without SPA (no root
//! needed): the whole chain works, and bad input — configs, policies, tokens — is refused with
//! one sentence and changes nothing.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{assert_one_line_error, free_port, kagi_bin, wait_until, Proc};

fn kagi(args: &[&str]) -> Output {
    Command::new(kagi_bin()).args(args).output().unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = kagi(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A service on 127.0.0.1:`port` that echoes one line back.
fn spawn_echo(port: u16) {
    let echo = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for c in echo.incoming().flatten() {
            std::thread::spawn(move || {
                use std::io::{BufRead, Write};
                let mut r = std::io::BufReader::new(c.try_clone().unwrap());
                let mut line = String::new();
                if r.read_line(&mut line).is_ok() {
                    let _ = (&c).write_all(line.as_bytes());
                }
            });
        }
    });
}

const HELLO: &str = "hello through the gateway\n";

/// Does a line sent through `kagi connect echo --dir DIR` come back?
fn echo_through(dir: &str) -> bool {
    let (_c, addr) = support::start_connect(
        Command::new(kagi_bin())
            .args(["connect", "echo", "--dir", dir])
            .stderr(Stdio::null()),
    );
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    if s.write_all(HELLO.as_bytes()).is_err() {
        return false;
    }
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got == HELLO
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

#[test]
fn controller_enrollment_and_gateway_on_loopback_and_bad_input_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let (cport, gport, sport) = (free_port(), free_port(), free_port());

    // A service: echoes one line back.
    spawn_echo(sport);

    std::fs::write(
        d.join("controller.toml"),
        format!(
            "listen = \"127.0.0.1:{cport}\"\nnames = [\"127.0.0.1\"]\nstate = \"{}\"\naudit = \"{}\"\n",
            p("ctl.db"),
            p("ctl-audit.db")
        ),
    )
    .unwrap();
    let conf = p("controller.toml");
    let ctl = |args: &[&str]| {
        let mut a = vec!["controller", "--config", &conf];
        a.extend_from_slice(args);
        kagi(&a)
    };

    // Bad input, refused with one sentence.
    assert_one_line_error(&ctl(&["token", "alice"]), "set a policy first");
    std::fs::write(
        d.join("bad-policy.toml"),
        "[[rule]]\nname = \"r\"\neffect = \"allow\"\nfrom = [\"nobody\"]\nto = [\"x\"]\n",
    )
    .unwrap();
    assert_one_line_error(&ctl(&["set-policy", &p("bad-policy.toml")]), "nobody");
    let status: serde_json::Value = serde_json::from_slice(&ctl(&["status"]).stdout).unwrap();
    assert_eq!(status["version"], 1, "a refused policy changed the state");
    std::fs::write(
        d.join("empty.toml"),
        format!("listen = \"127.0.0.1:{cport}\"\nnames = []\nstate = \"x\"\naudit = \"y\"\n"),
    )
    .unwrap();
    assert_one_line_error(
        &kagi(&["controller", "--config", &p("empty.toml")]),
        "names",
    );
    assert_one_line_error(&kagi(&["controller", "status"]), "--config");
    assert_one_line_error(
        &kagi(&[
            "enroll",
            "--controller",
            "127.0.0.1:1",
            "--token",
            "garbage",
            "--dir",
            &p("x"),
        ]),
        "kagi-enroll-v1.",
    );
    assert!(
        !d.join("x").exists(),
        "a refused enrollment wrote something"
    );

    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[[identity]]\nname = \"gw1\"\nkind = \"gateway\"\naddress = \"127.0.0.1:{gport}\"\n\
             [[identity]]\nname = \"alice\"\nkind = \"user\"\n\
             [[service]]\nname = \"echo\"\naddress = \"127.0.0.1:{sport}\"\ngateway = \"gw1\"\n\
             [[rule]]\nname = \"alice-echo\"\neffect = \"allow\"\nfrom = [\"alice\"]\nto = [\"echo\"]\n"
        ),
    )
    .unwrap();
    ok(&[
        "controller",
        "--config",
        &conf,
        "set-policy",
        &p("policy.toml"),
    ]);
    assert_one_line_error(
        &ctl(&["token", "mallory"]),
        "does not define identity mallory",
    );
    let t_gw = ok(&["controller", "--config", &conf, "token", "gw1"])
        .trim()
        .to_string();
    let t_alice = ok(&[
        "controller",
        "--config",
        &conf,
        "token",
        "alice",
        "--ttl",
        "5m",
    ])
    .trim()
    .to_string();
    // A token from another controller (another CA) is refused by the pin before anything is sent.
    let clog = d.join("controller.log");
    let _controller = Proc(
        Command::new(kagi_bin())
            .args(["controller", "--config", &conf])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&clog).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || log_has(
        &clog,
        "kagi controller listening"
    )));
    let caddr = format!("127.0.0.1:{cport}");
    let mut wrong_pin = t_alice.clone();
    {
        // Flip one bit of the CA pin (bytes 32..64 of the token body).
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut raw = b64
            .decode(wrong_pin.trim_start_matches("kagi-enroll-v1."))
            .unwrap();
        raw[40] ^= 1;
        wrong_pin = format!("kagi-enroll-v1.{}", b64.encode(raw));
    }
    let o = kagi(&[
        "enroll",
        "--controller",
        &caddr,
        "--token",
        &wrong_pin,
        "--dir",
        &p("alice"),
    ]);
    assert_one_line_error(&o, "not the one the enrollment token names");
    assert!(!d.join("alice").exists());

    // The real chain: gateway and alice enroll, alice reaches the service, revocation stops her.
    ok(&[
        "enroll",
        "--controller",
        &caddr,
        "--token",
        &t_gw,
        "--dir",
        &p("gw1"),
    ]);
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "listen = \"127.0.0.1:{gport}\"\ncontroller = \"{caddr}\"\nidentity_dir = \"{}\"\naudit = \"{}\"\n",
            p("gw1"),
            p("gw-audit.db")
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("gateway-bad.toml"),
        format!("listen = \"127.0.0.1:{gport}\"\ncontroller = \"{caddr}\"\naudit = \"x\"\n"),
    )
    .unwrap();
    assert_one_line_error(
        &kagi(&["gateway", "--config", &p("gateway-bad.toml")]),
        "controller and identity_dir go together",
    );
    let glog = d.join("gateway.log");
    let _gateway = Proc(
        Command::new(kagi_bin())
            .args(["gateway", "--config", &p("gateway.toml")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&glog).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || log_has(
        &glog,
        "perimeter state from the controller"
    )));
    let e: serde_json::Value = serde_json::from_str(&ok(&[
        "enroll",
        "--controller",
        &caddr,
        "--token",
        &t_alice,
        "--dir",
        &p("alice"),
    ]))
    .unwrap();
    assert_eq!(e["identity"], "alice");
    let o = kagi(&[
        "enroll",
        "--controller",
        &caddr,
        "--token",
        &t_alice,
        "--dir",
        &p("alice2"),
    ]);
    assert_one_line_error(&o, "already used");

    assert!(echo_through(&p("alice")));
    ok(&["controller", "--config", &conf, "revoke", "alice"]);
    assert!(wait_until(Duration::from_secs(5), || !echo_through(&p(
        "alice"
    ))));
    assert_one_line_error(&ctl(&["revoke", "alice"]), "alice");

    // The key service's console shows this perimeter: gateways with their last contact,
    // identities, decisions from the gateway's and the controller's chains, changes.
    let ks = support::Server::dev(
        &d.join("ks"),
        &[
            "--console-perimeter-state",
            &p("ctl.db"),
            "--console-perimeter-audit",
            &p("gw-audit.db"),
            "--console-perimeter-audit",
            &p("ctl-audit.db"),
        ],
    );
    let jar = d.join("jar");
    support::console_sign_in(&ks, &jar, &ks.token);
    let (_, page) = support::curl_jar(&jar, &[&format!("{}/ui/perimeter", ks.addr)]);
    assert!(
        page.contains("<th scope=\"row\">gw1</th><td><time"),
        "gw1's last contact: {page}"
    );
    assert!(
        page.contains("cert:alice") && page.contains("perimeter.connect"),
        "alice's connections: {page}"
    );
    assert!(
        page.contains("perimeter.enroll"),
        "the controller's enrollments: {page}"
    );
    assert!(
        page.contains("perimeter policy replaced"),
        "the changes: {page}"
    );
    assert!(
        page.contains("<td>gateway</td>") && page.contains("<td>user</td>"),
        "{page}"
    );
    assert!(
        page.contains("href=\"/ui/perimeter\""),
        "the navigation names the page"
    );
}

/// Several controllers share their state in PostgreSQL: a token created at one is redeemed at
/// the other, a gateway synced from the second hears of a revocation made at the first.
#[test]
fn two_controllers_share_state_on_postgres() {
    let test = "two_controllers_share_state_on_postgres";
    let Some(backend) = support::Backend::postgres(test) else {
        return;
    };
    let support::Backend::Postgres { url, .. } = &backend else {
        unreachable!("Backend::postgres returns a PostgreSQL backend")
    };
    let url = url.clone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |n: &str| d.join(n).to_str().unwrap().to_string();
    let (a_port, b_port, gport, sport) = (free_port(), free_port(), free_port(), free_port());
    spawn_echo(sport);
    for (name, port) in [("a", a_port), ("b", b_port)] {
        std::fs::write(
            d.join(format!("{name}.toml")),
            format!(
                "listen = \"127.0.0.1:{port}\"\nnames = [\"127.0.0.1\"]\nstate_url_env = \"KAGI_TEST_STATE\"\naudit = \"{}\"\nnode = \"ctl-{name}\"\n",
                p(&format!("{name}-audit.db"))
            ),
        )
        .unwrap();
    }
    let at = |name: &str, args: &[&str]| -> Output {
        let conf = p(&format!("{name}.toml"));
        let mut a = vec!["controller", "--config", conf.as_str()];
        a.extend_from_slice(args);
        Command::new(kagi_bin())
            .args(&a)
            .env("KAGI_TEST_STATE", &url)
            .output()
            .unwrap()
    };
    let out = |o: Output| -> String {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    std::fs::write(
        d.join("policy.toml"),
        format!(
            "[[identity]]\nname = \"gw1\"\nkind = \"gateway\"\naddress = \"127.0.0.1:{gport}\"\n\
             [[identity]]\nname = \"alice\"\nkind = \"user\"\n\
             [[service]]\nname = \"echo\"\naddress = \"127.0.0.1:{sport}\"\ngateway = \"gw1\"\n\
             [[rule]]\nname = \"alice-echo\"\neffect = \"allow\"\nfrom = [\"alice\"]\nto = [\"echo\"]\n"
        ),
    )
    .unwrap();
    out(at("a", &["set-policy", &p("policy.toml")]));
    let t_gw = out(at("a", &["token", "gw1"])).trim().to_string();
    let t_alice = out(at("a", &["token", "alice"])).trim().to_string();
    let mut procs = Vec::new();
    for name in ["a", "b"] {
        let log = d.join(format!("{name}.log"));
        procs.push(Proc(
            Command::new(kagi_bin())
                .args(["controller", "--config", &p(&format!("{name}.toml"))])
                .env("KAGI_TEST_STATE", &url)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        ));
        assert!(wait_until(Duration::from_secs(10), || log_has(
            &log,
            "kagi controller listening"
        )));
    }
    // Tokens from A, redeemed at B (same CA: the pin holds).
    let b_addr = format!("127.0.0.1:{b_port}");
    ok(&[
        "enroll",
        "--controller",
        &b_addr,
        "--token",
        &t_gw,
        "--dir",
        &p("gw1"),
    ]);
    ok(&[
        "enroll",
        "--controller",
        &b_addr,
        "--token",
        &t_alice,
        "--dir",
        &p("alice"),
    ]);
    let status: serde_json::Value = serde_json::from_str(&out(at("a", &["status"]))).unwrap();
    assert_eq!(
        status["identities"].as_array().unwrap().len(),
        2,
        "{status}"
    );
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "listen = \"127.0.0.1:{gport}\"\ncontroller = [\"{b_addr}\", \"127.0.0.1:{a_port}\"]\nidentity_dir = \"{}\"\naudit = \"{}\"\n",
            p("gw1"),
            p("gw-audit.db")
        ),
    )
    .unwrap();
    let glog = d.join("gateway.log");
    let _gateway = Proc(
        Command::new(kagi_bin())
            .args(["gateway", "--config", &p("gateway.toml")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&glog).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || log_has(
        &glog,
        "perimeter state from the controller"
    )));
    let reach = || echo_through(&p("alice"));
    assert!(reach());
    // Revoked through A; the gateway listens to B.
    out(at("a", &["revoke", "alice"]));
    assert!(
        wait_until(Duration::from_secs(3), || !reach()),
        "B's gateway did not hear of A's revocation"
    );
    // B, the gateway's first controller, goes away: the gateway fails over to A and still
    // hears every change.
    drop(procs.pop());
    let v: serde_json::Value =
        serde_json::from_str(&out(at("a", &["set-policy", &p("policy.toml")]))).unwrap();
    let seen = format!(
        "perimeter state from the controller version={}",
        v["version"]
    );
    assert!(
        wait_until(Duration::from_secs(5), || log_has(&glog, &seen)),
        "the gateway did not fail over to A"
    );
    assert!(log_has(&glog, "controller unreachable"));
    // Both controllers put every change on their own chains.
    for name in ["a", "b"] {
        let db = d.join(format!("{name}-audit.db"));
        assert!(
            wait_until(Duration::from_secs(3), || {
                let c = rusqlite::Connection::open(&db).unwrap();
                c.query_row(
                    "SELECT count(*) FROM audit_records WHERE record LIKE '%alice revoked%'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap_or(0)
                    == 1
            }),
            "controller {name} did not record the revocation"
        );
    }
    drop(procs);
    // The console reads the shared state from PostgreSQL: the gateway's last contact is there.
    let ks = support::Server::dev(&d.join("ks"), &["--console-perimeter-state", &url]);
    let jar = d.join("jar");
    support::console_sign_in(&ks, &jar, &ks.token);
    let (_, page) = support::curl_jar(&jar, &[&format!("{}/ui/perimeter", ks.addr)]);
    assert!(
        page.contains("<th scope=\"row\">gw1</th><td><time"),
        "gw1's last contact: {page}"
    );
    assert!(page.contains("alice"), "{page}");
}
