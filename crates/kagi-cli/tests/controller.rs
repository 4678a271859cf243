//! The perimeter with its controller, on four hosts (network namespaces on one bridge): the
//! key service on a service host that only the gateway may reach, a gateway and a controller
//! that answer nothing before SPA (stealth nftables), and a client that enrolls with one-time
//! tokens and reaches the key service with `kagi connect`. Needs root, nft, python3, tcpdump, ping.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{kagi_bin, skip_unless_ready, wait_until, Proc};

/// Five namespaces: a hub with a bridge, and four hosts on 10.203.30.0/24.
struct Hosts {
    tag: String,
}

const GW: &str = "10.203.30.1";
const CLI: &str = "10.203.30.2";
const CTL: &str = "10.203.30.3";
const SVC: &str = "10.203.30.4";

impl Hosts {
    fn new() -> Self {
        let tag = format!("{}", std::process::id() % 10_000);
        let h = Hosts { tag };
        let hub = h.ns("hub");
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?} failed");
        };
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for (i, (name, addr)) in [("gw", GW), ("cli", CLI), ("ctl", CTL), ("svc", SVC)]
            .iter()
            .enumerate()
        {
            let ns = h.ns(name);
            let (a, b) = (format!("pa{i}{}", h.tag), format!("pb{i}{}", h.tag));
            ip(&["netns", "add", &ns]);
            ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ip(&["link", "set", &a, "netns", &ns]);
            ip(&["link", "set", &b, "netns", &hub]);
            ip(&["-n", &hub, "link", "set", &b, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &b, "up"]);
            ip(&["-n", &ns, "link", "set", &a, "name", "eth0"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        h
    }

    fn ns(&self, name: &str) -> String {
        format!("kg{name}{}", self.tag)
    }

    fn exec(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).args(args);
        c
    }

    /// Runs a command on a host; panics with its stderr unless it succeeds.
    fn run(&self, host: &str, args: &[&str]) -> String {
        let o = self.exec(host, args).output().unwrap();
        assert!(
            o.status.success(),
            "{args:?} on {host} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Ports of `to` that accept a TCP connection from the client host.
    fn scan(&self, to: &str, ports: &[u16]) -> Vec<u16> {
        let code = format!(
            "import socket\nfor p in {ports:?}:\n  s=socket.socket();s.settimeout(0.3)\n  try:\n    s.connect(('{to}',p));print(p)\n  except Exception:\n    pass\n  s.close()"
        );
        self.run("cli", &["python3", "-c", &code])
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    }

    /// A TCP service on `host`, all addresses, `port`: sends `greeting` to each connection and
    /// closes it.
    fn tcp_service(&self, host: &str, port: u16, greeting: &str) -> Proc {
        let code = format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',{port}));s.listen(8)\nwhile True:\n  c,_=s.accept();c.sendall({greeting:?}.encode());c.close()"
        );
        Proc(
            self.exec(host, &["python3", "-c", &code])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn spawn_logged(&self, host: &str, args: &[&str], log: &Path) -> Proc {
        Proc(
            self.exec(host, args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for n in ["gw", "cli", "ctl", "svc", "hub"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

fn log_has(log: &Path, needle: &str) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(needle)
}

/// `kagi connect SERVICE` on the client host with identity `dir`; the local address.
fn connect(h: &Hosts, dir: &Path, service: &str, posture: &[&str]) -> (Proc, String) {
    connect_with(h, dir, service, posture, &[])
}

fn connect_with(
    h: &Hosts,
    dir: &Path,
    service: &str,
    posture: &[&str],
    flags: &[&str],
) -> (Proc, String) {
    let mut args = vec![
        kagi_bin(),
        "connect",
        service,
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    for p in posture {
        args.extend(["--posture", p]);
    }
    support::start_connect(h.exec("cli", &args).stderr(Stdio::inherit()))
}

/// `kagi datakey generate k1` through a tunnel as identity `dir`: did it work?
fn generate_through(h: &Hosts, dir: &Path, posture: &[&str], ks: &(String, String)) -> bool {
    generate_through_with(h, dir, posture, &[], ks)
}

fn generate_through_with(
    h: &Hosts,
    dir: &Path,
    posture: &[&str],
    flags: &[&str],
    ks: &(String, String),
) -> bool {
    let (_c, addr) = connect_with(h, dir, "kms", posture, flags);
    let o = h
        .exec(
            "cli",
            &[kagi_bin(), "datakey", "generate", "k1", "-o", "json"],
        )
        .env("KAGI_ADDR", format!("https://{addr}"))
        .env("KAGI_TOKEN", &ks.0)
        .env("KAGI_CACERT", &ks.1)
        .output()
        .unwrap();
    if !o.status.success() {
        eprintln!(
            "{}: datakey generate failed: {}",
            dir.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
        let log =
            std::fs::read_to_string(dir.parent().unwrap().join("gateway.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        eprintln!("gateway log (newest first):\n{}", tail.join("\n"));
    }
    o.status.success()
}

/// The gateway's audit records (JSON), oldest first.
fn audit_records(db: &Path) -> Vec<serde_json::Value> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut st = c
        .prepare("SELECT record FROM audit_records ORDER BY seq")
        .unwrap();
    st.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect()
}

/// The newest perimeter.connect record for `identity`.
fn last_connect(db: &Path, identity: &str) -> serde_json::Value {
    audit_records(db)
        .into_iter()
        .rev()
        .find(|r| {
            r["operation"] == "perimeter.connect" && r["principal"] == format!("cert:{identity}")
        })
        .unwrap_or_else(|| panic!("no perimeter.connect record for {identity}"))
}

#[test]
fn key_service_behind_controller_gateway_and_spa_on_four_hosts() {
    let test = "key_service_behind_controller_gateway_and_spa_on_four_hosts";
    if skip_unless_ready(test, &["nft", "python3", "tcpdump", "ping"]) {
        return;
    }
    let h = Hosts::new();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let p = |name: &str| d.join(name).to_str().unwrap().to_string();

    // The key service (production configuration, Shamir seal) on its own host; only the
    // gateway's address may reach its port.
    {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "key service test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        // Clients reach it as 127.0.0.1 through kagi connect: TLS runs end to end.
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec![SVC.to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "key service");
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(d.join("ks-ca.pem"), ca.pem()).unwrap();
        std::fs::write(d.join("ks.pem"), cert.pem()).unwrap();
        std::fs::write(d.join("ks.key"), key.serialize_pem()).unwrap();
    }
    std::fs::write(
        d.join("kagi.toml"),
        format!(
            "listen = \"{SVC}:7300\"\n[storage]\nbackend = \"sqlite\"\npath = \"{}\"\n[seal]\ntype = \"shamir\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            p("kms.db"),
            p("ks.pem"),
            p("ks.key")
        ),
    )
    .unwrap();
    let _ks = h.spawn_logged(
        "svc",
        &[kagi_bin(), "server", "--config", &p("kagi.toml")],
        &d.join("kms.log"),
    );
    let svc_kagi = |token: &str, args: &[&str]| -> serde_json::Value {
        let mut a = vec![kagi_bin()];
        a.extend_from_slice(args);
        a.extend(["-o", "json"]);
        let o = h
            .exec("svc", &a)
            .env("KAGI_ADDR", format!("https://{SVC}:7300"))
            .env("KAGI_CACERT", d.join("ks-ca.pem"))
            .env("KAGI_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    assert!(
        wait_until(Duration::from_secs(10), || h
            .exec("svc", &[kagi_bin(), "status"])
            .env("KAGI_ADDR", format!("https://{SVC}:7300"))
            .env("KAGI_CACERT", d.join("ks-ca.pem"))
            .output()
            .is_ok_and(|o| o.status.success())),
        "the key service did not start: {}",
        std::fs::read_to_string(d.join("kms.log")).unwrap_or_default()
    );
    let init = svc_kagi(
        "",
        &["operator", "init", "--shares", "1", "--threshold", "1"],
    );
    let root = init["root_token"].as_str().unwrap().to_string();
    let token = (root.clone(), p("ks-ca.pem"));
    svc_kagi(
        "",
        &["operator", "unseal", init["shares"][0].as_str().unwrap()],
    );
    svc_kagi(&root, &["key", "create", "k1"]);
    h.run(
        "svc",
        &[
            "nft",
            &format!("add table inet svc\nadd chain inet svc input {{ type filter hook input priority 0; policy accept; }}\nadd rule inet svc input tcp dport {{ 7300, 22 }} ip saddr != {GW} drop\n"),
        ],
    );
    // Something else on the service host that no rule allows (the egress check).
    let _ssh = h.tcp_service("svc", 22, "SSH-2.0-test\r\n");

    // The policy: ops (alice, dave) reach kms from an encrypted disk; bob only in a window
    // that is not now; carol is known but no rule lets her in.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let later = now
        .checked_add(jiff::SignedDuration::from_hours(6))
        .unwrap();
    let policy = |ops_allowed: bool| {
        let mut s = format!(
            "[[identity]]\nname = \"gw1\"\nkind = \"gateway\"\naddress = \"{GW}:8443\"\n\
             [[identity]]\nname = \"alice\"\nkind = \"user\"\ngroups = [\"ops\"]\n\
             [[identity]]\nname = \"dave\"\nkind = \"device\"\ngroups = [\"ops\"]\n\
             [[identity]]\nname = \"bob\"\nkind = \"user\"\n\
             [[identity]]\nname = \"carol\"\nkind = \"user\"\n\
             [[service]]\nname = \"kms\"\naddress = \"{SVC}:7300\"\ngateway = \"gw1\"\n\
             [[service]]\nname = \"ssh\"\naddress = \"{SVC}:22\"\ngateway = \"gw1\"\n\
             [[rule]]\nname = \"bob-window\"\neffect = \"allow\"\nfrom = [\"bob\"]\nto = [\"kms\"]\n\
             [[rule.when.time]]\nstart = \"{:02}:00\"\nend = \"{:02}:30\"\ntz = \"UTC\"\n",
            later.hour(),
            later.hour()
        );
        if ops_allowed {
            s.push_str(
                "[[rule]]\nname = \"ops-kms\"\neffect = \"allow\"\nfrom = [\"group:ops\"]\nto = [\"kms\"]\n\
                 [rule.when.posture]\ndisk_encryption = true\n",
            );
        }
        s
    };
    std::fs::write(d.join("policy.toml"), policy(true)).unwrap();
    std::fs::write(d.join("policy-closed.toml"), policy(false)).unwrap();

    // The controller, hidden behind SPA on a stealth host.
    std::fs::write(
        d.join("controller.toml"),
        format!(
            "listen = \"{CTL}:8444\"\nnames = [\"{CTL}\"]\nstate = \"{s}\"\naudit = \"{a}\"\nnode = \"ctl1\"\ncert_ttl = \"2m\"\n\
             [spa]\nkey_file = \"{k}\"\nreplay_cache = \"{r}\"\nstealth = true\n",
            s = p("controller.db"),
            a = p("controller-audit.db"),
            k = p("controller.spa"),
            r = p("controller.replay"),
        ),
    )
    .unwrap();
    let ctl_conf = p("controller.toml");
    let ctl = |args: &[&str]| -> String {
        let mut a = vec![kagi_bin(), "controller", "--config", &ctl_conf];
        a.extend_from_slice(args);
        h.run("ctl", &a)
    };
    ctl(&["set-policy", &p("policy.toml")]);
    let mut tokens = std::collections::HashMap::new();
    for who in ["gw1", "alice", "bob", "carol", "dave"] {
        let t = ctl(&["token", who, "--ttl", "10m"]).trim().to_string();
        assert!(t.starts_with("kagi-enroll-v1."), "{t}");
        tokens.insert(who, t);
    }
    // A token for an identity the policy does not define is refused.
    let o = h
        .exec(
            "ctl",
            &[
                kagi_bin(),
                "controller",
                "--config",
                &ctl_conf,
                "token",
                "mallory",
            ],
        )
        .output()
        .unwrap();
    assert!(!o.status.success());
    let ctl_log = d.join("controller.log");
    let start_controller = || {
        let c = h.spawn_logged(
            "ctl",
            &[kagi_bin(), "controller", "--config", &ctl_conf],
            &ctl_log,
        );
        assert!(
            wait_until(Duration::from_secs(10), || log_has(
                &ctl_log,
                "kagi spad listening"
            ) && log_has(
                &ctl_log,
                "kagi controller listening"
            )),
            "controller did not start: {}",
            std::fs::read_to_string(&ctl_log).unwrap_or_default()
        );
        c
    };
    let mut controller = Some(start_controller());

    // The gateway enrolls (knocking on the controller with its token), then runs.
    let enroll = |who: &str, host: &str| -> serde_json::Value {
        let out = h.run(
            host,
            &[
                kagi_bin(),
                "enroll",
                "--controller",
                &format!("{CTL}:8444"),
                "--token",
                &tokens[who],
                "--dir",
                &p(who),
            ],
        );
        serde_json::from_str(&out).unwrap()
    };
    let e = enroll("gw1", "gw");
    assert_eq!(e["identity"], "gw1");
    // A token works once.
    let o = h
        .exec(
            "gw",
            &[
                kagi_bin(),
                "enroll",
                "--controller",
                &format!("{CTL}:8444"),
                "--token",
                &tokens["gw1"],
                "--dir",
                &p("gw1-again"),
            ],
        )
        .output()
        .unwrap();
    assert!(!o.status.success(), "a used token enrolled again");
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "listen = \"{GW}:8443\"\ncontroller = \"{CTL}:8444\"\nidentity_dir = \"{i}\"\ngrace = \"8s\"\negress = true\naudit = \"{a}\"\nnode = \"gw1\"\n\
             [spa]\nreplay_cache = \"{r}\"\nstealth = true\n",
            i = p("gw1"),
            a = p("gateway-audit.db"),
            r = p("gateway.replay"),
        ),
    )
    .unwrap();
    let gw_log = d.join("gateway.log");
    let _gateway = h.spawn_logged(
        "gw",
        &[kagi_bin(), "gateway", "--config", &p("gateway.toml")],
        &gw_log,
    );
    assert!(
        wait_until(Duration::from_secs(10), || log_has(
            &gw_log,
            "perimeter state from the controller"
        )),
        "gateway did not sync: {}",
        std::fs::read_to_string(&gw_log).unwrap_or_default()
    );

    // Before SPA: a scan from the client host finds nothing open on the gateway or the
    // controller, and a capture on the client sees not one packet from either.
    let mut cap = h
        .exec(
            "cli",
            &[
                "tcpdump",
                "-i",
                "eth0",
                "-n",
                "-l",
                "-w",
                &p("scan.pcap"),
                &format!("ip and (src host {GW} or src host {CTL})"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("tcpdump.log")).unwrap())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || log_has(
        &d.join("tcpdump.log"),
        "listening on"
    )));
    let ports = [22, 80, 443, 7300, 8080, 8443, 8444, 62201];
    assert_eq!(
        h.scan(GW, &ports),
        Vec::<u16>::new(),
        "gateway ports open before SPA"
    );
    assert_eq!(
        h.scan(CTL, &ports),
        Vec::<u16>::new(),
        "controller ports open before SPA"
    );
    assert_eq!(
        h.scan(SVC, &[7300]),
        Vec::<u16>::new(),
        "key service reachable directly"
    );
    // (A host that is not hidden does answer: ping itself works.)
    let ping = h
        .exec("cli", &["ping", "-c", "1", "-W", "1", SVC])
        .output()
        .unwrap();
    assert!(ping.status.success(), "ping does not work here at all");
    let ping = h
        .exec("cli", &["ping", "-c", "1", "-W", "1", GW])
        .output()
        .unwrap();
    assert!(!ping.status.success(), "the gateway answered a ping");
    std::thread::sleep(Duration::from_millis(300));
    unsafe_free_sigint(&mut cap);
    let summary = std::fs::read_to_string(d.join("tcpdump.log")).unwrap();
    assert!(
        summary.contains("0 packets captured"),
        "the gateway or controller answered: {summary}"
    );

    // Clients enroll; alice reaches the key service through the gateway.
    for who in ["alice", "bob", "carol", "dave"] {
        let e = enroll(who, "cli");
        assert_eq!(e["identity"], who);
        assert_eq!(e["gateways"], serde_json::json!(["gw1"]));
    }
    let id = |who: &str| d.join(who);
    let gw_audit = d.join("gateway-audit.db");
    assert!(generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    ));
    assert_eq!(last_connect(&gw_audit, "alice")["outcome"], "success");
    assert_eq!(
        last_connect(&gw_audit, "alice")["context"]["rule"],
        "rule:ops-kms"
    );

    // With --pin-source-port each connection knocks for its own source port only.
    assert!(generate_through_with(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &["--pin-source-port"],
        &token
    ));
    assert!(audit_records(&gw_audit)
        .iter()
        .any(|r| r["operation"] == "perimeter.spa"
            && r["principal"] == "cert:alice"
            && r["reason"]
                .as_str()
                .unwrap_or("")
                .contains("from source port")));

    // Refusals, each on the gateway's audit chain with what decided.
    assert!(
        !generate_through(&h, &id("alice"), &[], &token),
        "failing posture let through"
    );
    let r = last_connect(&gw_audit, "alice");
    assert_eq!(r["outcome"], "denied");
    assert!(r["reason"].as_str().unwrap().contains("ops-kms"), "{r}");
    assert!(
        !generate_through(&h, &id("bob"), &[], &token),
        "outside the window let through"
    );
    let r = last_connect(&gw_audit, "bob");
    assert!(r["reason"].as_str().unwrap().contains("time window"), "{r}");
    assert!(!generate_through(
        &h,
        &id("carol"),
        &["disk_encryption=true"],
        &token
    ));
    let r = last_connect(&gw_audit, "carol");
    assert_eq!(
        (r["outcome"].as_str(), r["context"]["rule"].as_str()),
        (Some("denied"), Some("default"))
    );

    // Egress: the gateway's host reaches port 22 on the service host, but a tunnel there is
    // refused — only what the policy allows, and nothing the policy does not name.
    assert_eq!(h.run("gw", &["python3", "-c", &format!("import socket;s=socket.create_connection(('{SVC}',22),2);print(s.recv(64).decode().strip())")]).trim(), "SSH-2.0-test");
    // And the gateway's host itself can open new connections only to what the policy names
    // (kernel egress allow-list): a port on the service host that the client host reaches
    // is dropped from the gateway host.
    let _other = h.tcp_service("svc", 2200, "");
    assert!(wait_until(Duration::from_secs(5), || h.scan(SVC, &[2200])
        == vec![2200]));
    let from_gw = h.run(
        "gw",
        &["python3", "-c", &format!("import socket\ntry:\n  socket.create_connection(('{SVC}',2200),1);print('open')\nexcept Exception as e:\n  print(type(e).__name__)")],
    );
    assert_eq!(
        from_gw.trim(),
        "TimeoutError",
        "egress to an address outside the policy"
    );
    for service in ["ssh", SVC] {
        let (_c, addr) = connect(&h, &id("alice"), service, &["disk_encryption=true"]);
        let got = h.run(
            "cli",
            &["python3", "-c", &format!("import socket\ns=socket.create_connection(('{}',{}),3);s.settimeout(3)\ntry:\n  print(len(s.recv(64)))\nexcept Exception:\n  print(0)", addr.rsplit_once(':').unwrap().0, addr.rsplit_once(':').unwrap().1)],
        );
        assert_eq!(got.trim(), "0", "a tunnel to {service} carried bytes");
        let r = last_connect(&gw_audit, "alice");
        assert_eq!(r["outcome"], "denied", "{r}");
        assert_eq!(r["context"]["service"], service);
    }

    // Revocation: dave's live tunnel closes within 5 s and he is refused after.
    let (_dc, daddr) = connect(&h, &id("dave"), "kms", &["disk_encryption=true"]);
    let mut live = h
        .exec(
            "cli",
            &["python3", "-c", &format!(
                "import socket,ssl\nh,p='{}'.rsplit(':',1)\nctx=ssl.create_default_context(cafile='{}')\ns=ctx.wrap_socket(socket.create_connection((h,int(p)),3),server_hostname='127.0.0.1')\ns.settimeout(30)\nprint('up',flush=True)\ntry:\n  while s.recv(4096): pass\nexcept Exception:\n  pass\nprint('closed',flush=True)", daddr, p("ks-ca.pem"))],
        )
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(live.stdout.take().unwrap()));
    assert_eq!(lines.next().unwrap().unwrap(), "up");
    std::thread::sleep(Duration::from_millis(500));
    ctl(&["revoke", "dave"]);
    let revoked_at = Instant::now();
    assert_eq!(lines.next().unwrap().unwrap(), "closed");
    assert!(
        revoked_at.elapsed() < Duration::from_secs(5),
        "dave's tunnel outlived revocation by {:?}",
        revoked_at.elapsed()
    );
    let _ = live.wait();
    assert!(!generate_through(
        &h,
        &id("dave"),
        &["disk_encryption=true"],
        &token
    ));
    assert_eq!(
        last_connect(&gw_audit, "dave")["context"]["rule"],
        "revoked"
    );
    assert!(audit_records(&gw_audit)
        .iter()
        .any(|r| r["operation"] == "perimeter.revoke"
            && r["principal"] == "cert:dave"
            && r["context"]["rule"] == "revoked"));

    // A renewed certificate replaces the old one: the old copy is refused.
    copy_dir(&id("alice"), &id("alice-old"));
    h.run(
        "cli",
        &[kagi_bin(), "enroll", "--renew", "--dir", &p("alice")],
    );
    // A kagi connect left running renews alice's certificate by itself (checked at the end).
    let renew_log = d.join("connect-renew.log");
    let _long_connect = Proc(
        h.exec(
            "cli",
            &[
                kagi_bin(),
                "connect",
                "kms",
                "--dir",
                &p("alice"),
                "--listen",
                "127.0.0.1:7390",
                "--posture",
                "disk_encryption=true",
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&renew_log).unwrap())
        .spawn()
        .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(3), || !generate_through(
        &h,
        &id("alice-old"),
        &["disk_encryption=true"],
        &token
    )));
    assert_eq!(
        last_connect(&gw_audit, "alice")["context"]["rule"],
        "certificate"
    );
    assert!(generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    ));

    // Controller down: access keeps working through the grace period, then fails closed.
    drop(controller.take());
    let down = Instant::now();
    assert!(
        generate_through(&h, &id("alice"), &["disk_encryption=true"], &token),
        "refused within the grace period"
    );
    assert!(down.elapsed() < Duration::from_secs(8));
    assert!(wait_until(Duration::from_secs(20), || !generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    )));
    assert_eq!(last_connect(&gw_audit, "alice")["context"]["rule"], "grace");

    // Controller back: the gateway resyncs, and a policy change reaches it within 2 s.
    controller = Some(start_controller());
    assert!(wait_until(Duration::from_secs(10), || generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    )));
    let before = std::fs::read_to_string(&gw_log)
        .unwrap()
        .matches("perimeter state from the controller")
        .count();
    ctl(&["set-policy", &p("policy-closed.toml")]);
    let changed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || std::fs::read_to_string(&gw_log)
            .unwrap()
            .matches("perimeter state from the controller")
            .count()
            > before),
        "the policy change did not reach the gateway within 2 s"
    );
    let reached = changed.elapsed();
    assert!(!generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    ));
    eprintln!("policy change reached the gateway after {reached:?}");

    // Short-lived certificates: the gateway renews its own at two thirds of its life (80 s
    // here) and serves the new one; clients still get through.
    ctl(&["set-policy", &p("policy.toml")]);
    assert!(
        wait_until(Duration::from_secs(120), || log_has(
            &gw_log,
            "gateway certificate renewed"
        )),
        "the gateway did not renew its certificate"
    );
    assert!(generate_through(
        &h,
        &id("alice"),
        &["disk_encryption=true"],
        &token
    ));
    assert!(
        wait_until(Duration::from_secs(120), || log_has(
            &renew_log,
            "certificate renewed"
        )),
        "the running kagi connect did not renew: {}",
        std::fs::read_to_string(&renew_log).unwrap_or_default()
    );
    let o = h
        .exec(
            "cli",
            &[kagi_bin(), "datakey", "generate", "k1", "-o", "json"],
        )
        .env("KAGI_ADDR", "https://127.0.0.1:7390")
        .env("KAGI_TOKEN", &token.0)
        .env("KAGI_CACERT", &token.1)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "after renewal: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Both chains verify; the controller's records enrollments and changes.
    for db in ["gateway-audit.db", "controller-audit.db"] {
        let o = Command::new(kagi_bin())
            .args(["audit", "verify", "--db", &p(db)])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{db}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // SPA decisions are on the chains too: alice's accepted knocks, dave's refused one
    // after his key was withdrawn, and the one-time token keys at the controller.
    let g = audit_records(&gw_audit);
    assert!(g.iter().any(|r| r["operation"] == "perimeter.spa"
        && r["principal"] == "cert:alice"
        && r["outcome"] == "success"));
    assert!(g.iter().any(|r| r["operation"] == "perimeter.spa"
        && r["outcome"] == "denied"
        && r["source"] == CLI));
    // The gateway signs its chain's checkpoints with the key it logged at start.
    let log = std::fs::read_to_string(&gw_log).unwrap();
    let pk = log
        .split("public_key=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("the gateway logs its checkpoint key")
        .to_string();
    let o = Command::new(kagi_bin())
        .args([
            "audit",
            "verify",
            "--db",
            &p("gateway-audit.db"),
            "--public-key",
            &pk,
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["checkpoints"].as_u64().unwrap() >= 1, "{v}");
    let o = Command::new(kagi_bin())
        .args([
            "audit",
            "verify",
            "--db",
            &p("gateway-audit.db"),
            "--public-key",
            &"00".repeat(32),
        ])
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "checkpoints accepted under another key"
    );
    let c = audit_records(&d.join("controller-audit.db"));
    assert!(c.iter().any(|r| r["operation"] == "perimeter.spa"
        && r["principal"] == "cert:token:alice"
        && r["outcome"] == "success"));
    assert!(c.iter().any(|r| r["operation"] == "perimeter.enroll"
        && r["principal"] == "cert:alice"
        && r["outcome"] == "success"));
    assert!(c
        .iter()
        .any(|r| r["operation"] == "perimeter.enroll" && r["outcome"] == "denied"));
    assert!(c
        .iter()
        .any(|r| r["operation"] == "perimeter.change" && r["reason"] == "dave revoked"));
    drop(controller);
}

/// Stops tcpdump with SIGINT so it prints its packet count.
fn unsafe_free_sigint(c: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
