//! SPA end to end, inside network namespaces joined by a veth pair (root only): the real
//! fwknop client against `kagi spad` on nftables, kagi's client against the real fwknopd,
//! replay across restarts and kill -9, refusals with a silent server, and IPv6.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{kagi_bin, skip_unless_ready, wait_until, Proc};

/// Two hosts: `srv` (10.201.N.1, fd00:201:N::1) and `cli` (.2 and .3, fd00:201:N::2).
struct Net {
    srv: String,
    cli: String,
    n: u32,
}

impl Net {
    fn new(tag: &str, n: u32) -> Net {
        let id = std::process::id() % 10_000;
        let net = Net {
            srv: format!("ks{tag}{id}"),
            cli: format!("kc{tag}{id}"),
            n,
        };
        let (s, c) = (&net.srv, &net.cli);
        let vs = format!("vs{tag}{id}");
        let vc = format!("vc{tag}{id}");
        let a = |x: u8| format!("10.201.{n}.{x}/24");
        for cmd in [
            vec!["netns", "add", s],
            vec!["netns", "add", c],
            vec!["link", "add", &vs, "type", "veth", "peer", "name", &vc],
            vec!["link", "set", &vs, "netns", s],
            vec!["link", "set", &vc, "netns", c],
            vec!["-n", s, "addr", "add", &a(1), "dev", &vs],
            vec!["-n", c, "addr", "add", &a(2), "dev", &vc],
            vec!["-n", c, "addr", "add", &a(3), "dev", &vc],
            vec![
                "-n",
                s,
                "addr",
                "add",
                &format!("fd00:201:{n}::1/64"),
                "dev",
                &vs,
                "nodad",
            ],
            vec![
                "-n",
                c,
                "addr",
                "add",
                &format!("fd00:201:{n}::2/64"),
                "dev",
                &vc,
                "nodad",
            ],
            vec!["-n", s, "link", "set", "lo", "up"],
            vec!["-n", c, "link", "set", "lo", "up"],
            vec!["-n", s, "link", "set", &vs, "up"],
            vec!["-n", c, "link", "set", &vc, "up"],
        ] {
            let st = Command::new("ip").args(&cmd).status().unwrap();
            assert!(st.success(), "ip {cmd:?} failed");
        }
        net
    }

    fn ip(&self, x: u8) -> String {
        format!("10.201.{}.{x}", self.n)
    }

    fn ip6(&self, x: u8) -> String {
        format!("fd00:201:{}::{x}", self.n)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// TCP connect from `from` to the server's port: true if it connects within 0.5 s.
    fn tcp_open(&self, from: &str, to: &str, port: u16) -> bool {
        let fam = if to.contains(':') {
            "socket.AF_INET6"
        } else {
            "socket.AF_INET"
        };
        let code = format!(
            "import socket,sys\ns=socket.socket({fam});s.bind(('{from}',0));s.settimeout(0.5)\ntry:\n  s.connect(('{to}',{port}));print('open')\nexcept Exception:\n  print('closed')"
        );
        let o = self
            .exec(&self.cli, &["python3", "-c", &code])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "open"
    }

    /// A TCP listener on the server (IPv4 and IPv6).
    /// A TCP connection from `from`:`sport` (0 = any) to `to`:`port`: does it open?
    fn tcp_open_port(&self, from: &str, sport: u16, to: &str, port: u16) -> bool {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('{from}',{sport}));s.settimeout(0.5)\ntry:\n  s.connect(('{to}',{port}));print('open')\nexcept Exception:\n  print('closed')"
        );
        let o = self
            .exec(&self.cli, &["python3", "-c", &code])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim() == "open"
    }

    fn listener(&self, port: u16) -> Child {
        let code = format!(
            "import socket\ns=socket.socket(socket.AF_INET6);s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);s.bind(('::',{port}));s.listen(64)\nwhile True:\n  c,_=s.accept();c.close()"
        );
        self.exec(&self.srv, &["python3", "-c", &code])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn send_udp(&self, from: &str, to: &str, payload: &[u8]) {
        let fam = if to.contains(':') {
            "socket.AF_INET6"
        } else {
            "socket.AF_INET"
        };
        let code = format!("import socket,sys\ns=socket.socket({fam},socket.SOCK_DGRAM);s.bind(('{from}',0));s.sendto(sys.stdin.buffer.read(),('{to}',62201))");
        let mut c = self
            .exec(&self.cli, &["python3", "-c", &code])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(payload).unwrap();
        assert!(c.wait().unwrap().success());
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.srv])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.cli])
            .status();
    }
}

fn keygen() -> (String, String) {
    let o = Command::new(kagi_bin())
        .args(["spa", "keygen"])
        .output()
        .unwrap();
    let t = String::from_utf8(o.stdout).unwrap();
    let get = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    (get("KEY_BASE64:"), get("HMAC_KEY_BASE64:"))
}

fn start_spad(net: &Net, dir: &Path, log: &str) -> Proc {
    let conf = dir.join("access.conf");
    start_spad_with(net, dir, log, &["--access-conf", conf.to_str().unwrap()])
}

/// `kagi spad --config DIR/spad.toml [extra...]` in the server namespace, once it listens.
fn start_spad_with(net: &Net, dir: &Path, log: &str, extra: &[&str]) -> Proc {
    let out = std::fs::File::create(dir.join(log)).unwrap();
    let config = dir.join("spad.toml");
    let mut args = vec![kagi_bin(), "spad", "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let child = net
        .exec(&net.srv, &args)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap();
    let p = Proc(child);
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            dir.join(log)
        )
        .unwrap_or_default()
        .contains("listening")),
        "spad did not start: {}",
        std::fs::read_to_string(dir.join(log)).unwrap_or_default()
    );
    p
}

fn tables(net: &Net) -> String {
    String::from_utf8(
        net.exec(&net.srv, &["nft", "list", "tables"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
}

fn setup_conf(dir: &Path, key: &str, hmac: &str, timeout: u32) {
    std::fs::write(
        dir.join("access.conf"),
        format!("SOURCE ANY\nOPEN_PORTS tcp/7300\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\nFW_ACCESS_TIMEOUT {timeout}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.join("spad.toml"),
        format!("replay_cache = \"{}\"\n", dir.join("replay").display()),
    )
    .unwrap();
}

#[test]
fn fwknop_client_opens_kagi_spad_then_access_expires_and_replays_fail() {
    if skip_unless_ready(
        "fwknop_client_opens_kagi_spad",
        &["nft", "fwknop", "python3"],
    ) {
        return;
    }
    let net = Net::new("a", 11);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, hmac) = keygen();
    setup_conf(d, &key, &hmac, 2);
    let _listener = Proc(net.listener(7300));
    let spad = start_spad(&net, d, "spad1.log");
    let (me, other, srv) = (net.ip(2), net.ip(3), net.ip(1));
    assert!(!net.tcp_open(&me, &srv, 7300), "port open before any knock");

    let pkt = d.join("pkt1");
    let o = net
        .exec(
            &net.cli,
            &[
                "fwknop",
                "--no-rc-file",
                "--no-save-args",
                "-A",
                "tcp/7300",
                "-a",
                &me,
                "-D",
                &srv,
                "--key-base64-rijndael",
                &key,
                "--key-base64-hmac",
                &hmac,
                "-B",
                pkt.to_str().unwrap(),
            ],
        )
        .env("HOME", d)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "fwknop: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(1), || net.tcp_open(&me, &srv, 7300)),
        "not open within 1 s of the knock"
    );
    assert!(
        !net.tcp_open(&other, &srv, 7300),
        "another source address got in"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !net.tcp_open(&me, &srv, 7300)),
        "access did not expire"
    );

    // Replay of the captured packet: refused, also after kill -9 and a restart.
    let packet = std::fs::read(&pkt).unwrap();
    let packet = String::from_utf8(packet)
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec();
    net.send_udp(&me, &srv, &packet);
    assert!(wait_until(Duration::from_secs(3), || {
        std::fs::read_to_string(d.join("spad1.log"))
            .unwrap()
            .contains("replayed")
    }));
    let mut spad = spad;
    let _ = Command::new("kill")
        .args(["-9", &spad.0.id().to_string()])
        .status();
    let _ = spad.0.wait();
    let _spad2 = start_spad(&net, d, "spad2.log");
    assert_eq!(
        tables(&net).matches("table inet kagi").count(),
        1,
        "stale or duplicate tables: {}",
        tables(&net)
    );
    net.send_udp(&me, &srv, &packet);
    assert!(
        wait_until(Duration::from_secs(3), || std::fs::read_to_string(
            d.join("spad2.log")
        )
        .unwrap()
        .contains("replayed")),
        "replay after kill -9 not refused"
    );
    assert!(!net.tcp_open(&me, &srv, 7300));
    // A clean stop (SIGTERM) removes kagi's table.
    let _ = Command::new("kill")
        .args(["-TERM", &_spad2.0.id().to_string()])
        .status();
    assert!(
        wait_until(Duration::from_secs(5), || !tables(&net)
            .contains("table inet kagi")),
        "table left behind: {}",
        tables(&net)
    );
}

#[test]
fn refused_packets_get_no_answer_at_all() {
    if skip_unless_ready(
        "refused_packets_get_no_answer_at_all",
        &["nft", "fwknop", "python3"],
    ) {
        return;
    }
    let net = Net::new("b", 12);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, hmac) = keygen();
    setup_conf(d, &key, &hmac, 30);
    let _listener = Proc(net.listener(7300));
    let _spad = start_spad(&net, d, "spad.log");
    let (me, srv) = (net.ip(2), net.ip(1));
    // Count every UDP or ICMP packet the server sends to the client.
    let watch = d.join("watch.nft");
    std::fs::write(
        &watch,
        format!(
            "table inet watch {{\n  counter replies {{ }}\n  chain input {{\n    type filter hook input priority -200; policy accept;\n    ip saddr {srv} meta l4proto {{ udp, icmp }} counter name \"replies\"\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let st = net
        .exec(&net.cli, &["nft", "-f", watch.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let (wrong_key, wrong_hmac) = keygen();
    let fw = |extra: &[&str], k: &str, h: &str, name: &str| {
        let p = d.join(name);
        let mut args = vec![
            "fwknop",
            "--no-rc-file",
            "--no-save-args",
            "-a",
            me.as_str(),
            "-D",
            srv.as_str(),
            "--key-base64-rijndael",
            k,
            "--key-base64-hmac",
            h,
            "-B",
            p.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = net.exec(&net.cli, &args).env("HOME", d).output().unwrap();
        assert!(
            o.status.success(),
            "fwknop {extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::read_to_string(p).unwrap().trim().to_string()
    };
    let stale = fw(
        &["-A", "tcp/7300", "--time-offset-minus", "300s"],
        &key,
        &hmac,
        "stale",
    );
    let future = fw(
        &["-A", "tcp/7300", "--time-offset-plus", "300s"],
        &key,
        &hmac,
        "future",
    );
    let _ = fw(&["-A", "tcp/7300"], &wrong_key, &hmac, "wrongkey");
    let _ = fw(&["-A", "tcp/7300"], &key, &wrong_hmac, "wronghmac");
    let _ = fw(&["-A", "tcp/7301"], &key, &hmac, "port");
    let good = fw(&["-A", "tcp/7300", "-T"], &key, &hmac, "good");
    let mut flipped = good.clone().into_bytes();
    flipped[60] = if flipped[60] == b'A' { b'B' } else { b'A' };
    net.send_udp(&me, &srv, &flipped);
    net.send_udp(
        &me,
        &srv,
        "this is not an SPA packet at all, just garbage long enough to pass the length check. "
            .repeat(3)
            .as_bytes(),
    );
    let _ = fw(&["-C", "uname -a"], &key, &hmac, "command");
    let log = || std::fs::read_to_string(d.join("spad.log")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || log()
            .matches("verdict=\"reject\"")
            .count()
            >= 8),
        "{}",
        log()
    );
    let l = log();
    assert!(l.contains("stale packet"), "{l}");
    assert!(l.contains("from the future"), "{l}");
    assert!(l.contains("HMAC does not match"), "{l}");
    assert!(l.contains("port is not allowed"), "{l}");
    assert!(l.contains("outside the base64 alphabet"), "{l}");
    assert!(l.contains("command messages are refused"), "{l}");
    assert!(l.contains("decryption failed"), "{l}");
    assert!(!l.contains("verdict=\"accept\""), "{l}");
    assert!(!net.tcp_open(&me, &srv, 7300));
    // Offline, `kagi spa inspect` gives the same reasons.
    let o = Command::new(kagi_bin())
        .args([
            "spa",
            "inspect",
            "--access-conf",
            d.join("access.conf").to_str().unwrap(),
            "--expect-reject",
            &stale,
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("stale"));
    let o = Command::new(kagi_bin())
        .args([
            "spa",
            "inspect",
            "--access-conf",
            d.join("access.conf").to_str().unwrap(),
            "--expect-reject",
            &future,
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("future"));
    let counter = String::from_utf8(
        net.exec(
            &net.cli,
            &["nft", "list", "counter", "inet", "watch", "replies"],
        )
        .output()
        .unwrap()
        .stdout,
    )
    .unwrap();
    assert!(
        counter.contains("packets 0 "),
        "the server answered: {counter}"
    );
}

#[test]
fn kagi_knock_is_accepted_by_the_real_fwknopd() {
    if skip_unless_ready(
        "kagi_knock_is_accepted_by_the_real_fwknopd",
        &["fwknopd", "python3"],
    ) {
        return;
    }
    let net = Net::new("c", 13);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("run")).unwrap();
    let (key, hmac) = keygen();
    let run = d.join("run");
    std::fs::write(
        d.join("fwknopd.conf"),
        format!(
            "ENABLE_UDP_SERVER Y;\nUDPSERV_PORT 62201;\nENABLE_SPA_PACKET_AGING Y;\nMAX_SPA_PACKET_AGE 120;\nENABLE_DIGEST_PERSISTENCE Y;\nFWKNOP_RUN_DIR {r};\nFWKNOP_PID_FILE {r}/fwknopd.pid;\nDIGEST_FILE {r}/digest.cache;\n",
            r = run.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("access.conf"),
        format!(
            "SOURCE ANY\nOPEN_PORTS tcp/7300\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\nCMD_CYCLE_OPEN /usr/bin/touch {p}/open.$IP.$PROTO.$PORT\nCMD_CYCLE_CLOSE NONE\nCMD_CYCLE_TIMER 2\n",
            p = d.display()
        ),
    )
    .unwrap();
    for f in ["fwknopd.conf", "access.conf"] {
        let _ = Command::new("chmod")
            .args(["600", d.join(f).to_str().unwrap()])
            .status();
    }
    let log = std::fs::File::create(d.join("fwknopd.log")).unwrap();
    let _daemon = Proc(
        net.exec(
            &net.srv,
            &[
                "fwknopd",
                "-c",
                d.join("fwknopd.conf").to_str().unwrap(),
                "-a",
                d.join("access.conf").to_str().unwrap(),
                "-f",
                "-U",
                "-v",
            ],
        )
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(800));
    let (me, srv) = (net.ip(2), net.ip(1));
    let saved = d.join("kagi.pkt");
    let o = net
        .exec(
            &net.cli,
            &[
                kagi_bin(),
                "spa",
                "knock",
                "--server",
                &srv,
                "--key-base64",
                &key,
                "--hmac-key-base64",
                &hmac,
                "--access",
                "tcp/7300",
                "--allow-ip",
                &me,
                "--save-packet",
                saved.to_str().unwrap(),
            ],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let opened = d.join(format!("open.{me}.6.7300"));
    assert!(
        wait_until(Duration::from_secs(5), || opened.exists()),
        "fwknopd did not accept kagi's packet: {}",
        std::fs::read_to_string(d.join("fwknopd.log")).unwrap()
    );
    // fwknopd treats a re-send as a replay: the packet is byte-for-byte a real SPA packet.
    net.send_udp(&me, &srv, &std::fs::read(&saved).unwrap());
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(d.join("fwknopd.log"))
            .unwrap()
            .contains("Replay detected")
    }));
}

#[test]
fn ipv6_knock_with_kagi_client_opens_and_expires() {
    if skip_unless_ready(
        "ipv6_knock_with_kagi_client_opens_and_expires",
        &["nft", "python3"],
    ) {
        return;
    }
    let net = Net::new("d", 14);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, hmac) = keygen();
    setup_conf(d, &key, &hmac, 2);
    let _listener = Proc(net.listener(7300));
    let _spad = start_spad(&net, d, "spad.log");
    let (me, srv) = (net.ip6(2), net.ip6(1));
    assert!(!net.tcp_open(&me, &srv, 7300), "open before the knock");
    let o = net
        .exec(
            &net.cli,
            &[
                kagi_bin(),
                "spa",
                "knock",
                "--server",
                &srv,
                "--key-base64",
                &key,
                "--hmac-key-base64",
                &hmac,
                "--access",
                "tcp/7300",
                "--source-ip",
            ],
        )
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        wait_until(Duration::from_secs(1), || net.tcp_open(&me, &srv, 7300)),
        "not open within 1 s: {}",
        std::fs::read_to_string(d.join("spad.log")).unwrap()
    );
    assert!(
        !net.tcp_open(&net.ip(2), &net.ip(1), 7300),
        "IPv4 opened by an IPv6 knock"
    );
    assert!(
        wait_until(Duration::from_secs(8), || !net.tcp_open(&me, &srv, 7300)),
        "IPv6 access did not expire"
    );
}

fn native_keys() -> (String, String) {
    let o = Command::new(kagi_bin())
        .args(["spa", "keygen", "--native"])
        .output()
        .unwrap();
    let t = String::from_utf8(o.stdout).unwrap();
    let get = |k: &str| {
        t.lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .trim()
            .to_string()
    };
    (get("PRIVATE_KEY:"), get("PUBLIC_KEY:"))
}

#[test]
fn native_knock_opens_only_its_five_tuple() {
    let test = "native_knock_opens_only_its_five_tuple";
    if skip_unless_ready(test, &["nft", "python3"]) {
        return;
    }
    let net = Net::new("e", 15);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (gw_private, gw_public) = native_keys();
    let (alice_private, alice_public) = native_keys();
    let (eve_private, _) = native_keys();
    std::fs::write(d.join("gateway.key"), &gw_private).unwrap();
    std::fs::write(d.join("alice.key"), &alice_private).unwrap();
    std::fs::write(d.join("eve.key"), &eve_private).unwrap();
    std::fs::write(
        d.join("spad.toml"),
        format!(
            "replay_cache = \"{}\"\n[native]\nkey_file = \"{}\"\ntimeout = 30\n[native.services]\nkms = [\"tcp/7300\"]\n[[native.client]]\nname = \"alice\"\npublic_key = \"{alice_public}\"\nservices = [\"kms\"]\n",
            d.join("replay").display(),
            d.join("gateway.key").display()
        ),
    )
    .unwrap();
    let log = d.join("spad.log");
    let _spad = start_spad_with(&net, d, "spad.log", &[]);
    let _svc = Proc(net.listener(7300));
    let (srv, cli, cli2) = (net.ip(1), net.ip(2), net.ip(3));
    assert!(
        !net.tcp_open_port(&cli, 41_000, &srv, 7300),
        "open before any knock"
    );
    let knock = |key: &str| {
        let st = net
            .exec(
                &net.cli,
                &[
                    kagi_bin(),
                    "spa",
                    "knock-native",
                    "--server",
                    &srv,
                    "--key-file",
                    d.join(key).to_str().unwrap(),
                    "--gateway-key",
                    &gw_public,
                    "--service",
                    "kms",
                    "--source-port",
                    "41000",
                    "--source",
                    &cli,
                ],
            )
            .status()
            .unwrap();
        assert!(st.success());
    };
    // A client the gateway never enrolled: nothing opens, and spad says why.
    knock("eve.key");
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("no enrolled client")
    }));
    assert!(!net.tcp_open_port(&cli, 41_000, &srv, 7300));
    // Alice: exactly her declared 5-tuple opens — not another port, not another address.
    knock("alice.key");
    assert!(
        wait_until(Duration::from_secs(5), || net
            .tcp_open_port(&cli, 41_000, &srv, 7300)),
        "alice's pinhole did not open: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        !net.tcp_open_port(&cli, 41_001, &srv, 7300),
        "another source port got in"
    );
    assert!(
        !net.tcp_open_port(&cli2, 41_000, &srv, 7300),
        "another address got in"
    );
    let l = std::fs::read_to_string(&log).unwrap();
    assert!(
        l.contains("client=alice") && l.contains("source_port=Some(41000)"),
        "{l}"
    );
}

/// The perimeter end to end on two hosts (network namespaces): the key service listens only on
/// the gateway host's loopback; the gateway's TLS port is dropped until a native SPA knock;
/// then `kagi connect` carries `kagi datakey generate` from the client host.
#[test]
fn key_service_behind_spa_and_gateway_reached_with_kagi_connect() {
    let test = "key_service_behind_spa_and_gateway_reached_with_kagi_connect";
    if skip_unless_ready(test, &["nft", "python3"]) {
        return;
    }
    let net = Net::new("f", 16);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw_ip = net.ip(1);
    let cli_ip = net.ip(2);
    support::perimeter_certs(d, &gw_ip, &["alice"]);

    // The key service, on the gateway host's loopback only.
    let mut ks = net
        .exec(
            &net.srv,
            &[
                kagi_bin(),
                "server",
                "--dev",
                "--listen",
                "127.0.0.1:7300",
                "--data-dir",
                d.join("kms").to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut token = String::new();
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(ks.stdout.take().unwrap()).lines();
        while token.is_empty() {
            let l = lines.next().unwrap().unwrap();
            if let Some(t) = l.strip_prefix("export KAGI_TOKEN=") {
                token = t.to_string();
            }
        }
    }
    let _ks = Proc(ks);
    let st = net
        .exec(&net.srv, &[kagi_bin(), "key", "create", "k1"])
        .env("KAGI_ADDR", "http://127.0.0.1:7300")
        .env("KAGI_TOKEN", &token)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    // SPA in front of the gateway's port 8443.
    let (gw_private, gw_public) = native_keys();
    let (alice_private, alice_public) = native_keys();
    std::fs::write(d.join("gateway.key"), &gw_private).unwrap();
    std::fs::write(d.join("alice.spa"), &alice_private).unwrap();
    std::fs::write(
        d.join("spad.toml"),
        format!(
            "replay_cache = \"{}\"\n[native]\nkey_file = \"{}\"\ntimeout = 30\n[native.services]\ngateway = [\"tcp/8443\"]\n[[native.client]]\nname = \"alice\"\npublic_key = \"{alice_public}\"\nservices = [\"gateway\"]\n",
            d.join("replay").display(),
            d.join("gateway.key").display()
        ),
    )
    .unwrap();
    let _spad = start_spad_with(&net, d, "spad.log", &[]);

    // The gateway: alice may reach kms, which is 127.0.0.1:7300 on its host.
    std::fs::write(
        d.join("perimeter.toml"),
        "[[identity]]\nname = \"alice\"\nkind = \"user\"\n[[service]]\nname = \"kms\"\naddress = \"127.0.0.1:7300\"\n[[rule]]\nname = \"alice-kms\"\neffect = \"allow\"\nfrom = [\"alice\"]\nto = [\"kms\"]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("gateway.toml"),
        format!(
            "listen = \"{gw_ip}:8443\"\ncert = \"{p}/gw.pem\"\nkey = \"{p}/gw.key\"\nclient_ca = \"{p}/ca.pem\"\npolicy = \"{p}/perimeter.toml\"\naudit = \"{p}/gateway-audit.db\"\n",
            p = d.display()
        ),
    )
    .unwrap();
    let glog = d.join("gateway.log");
    let _gw = Proc(
        net.exec(
            &net.srv,
            &[
                kagi_bin(),
                "gateway",
                "--config",
                d.join("gateway.toml").to_str().unwrap(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&glog).unwrap())
        .spawn()
        .unwrap(),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&glog)
            .unwrap_or_default()
            .contains("listening")
    }));

    // Before SPA: neither the gateway nor the key service is reachable from the client.
    assert!(
        !net.tcp_open(&cli_ip, &gw_ip, 8443),
        "gateway port open before SPA"
    );
    assert!(
        !net.tcp_open(&cli_ip, &gw_ip, 7300),
        "key service reachable directly"
    );

    let knock = net
        .exec(
            &net.cli,
            &[
                kagi_bin(),
                "spa",
                "knock-native",
                "--server",
                &gw_ip,
                "--key-file",
                d.join("alice.spa").to_str().unwrap(),
                "--gateway-key",
                &gw_public,
                "--service",
                "gateway",
            ],
        )
        .status()
        .unwrap();
    assert!(knock.success());
    assert!(wait_until(Duration::from_secs(5), || net
        .tcp_open(&cli_ip, &gw_ip, 8443)));

    // kagi connect on the client host, then a key operation through it.
    let (_connect, local) = support::start_connect(
        net.exec(
            &net.cli,
            &[
                kagi_bin(),
                "connect",
                "kms",
                "--gateway",
                &format!("{gw_ip}:8443"),
                "--cert",
                d.join("alice.pem").to_str().unwrap(),
                "--key",
                d.join("alice.key").to_str().unwrap(),
                "--gateway-ca",
                d.join("ca.pem").to_str().unwrap(),
            ],
        )
        .stderr(Stdio::null()),
    );
    let o = net
        .exec(
            &net.cli,
            &[kagi_bin(), "datakey", "generate", "k1", "-o", "json"],
        )
        .env("KAGI_ADDR", format!("http://{local}"))
        .env("KAGI_TOKEN", &token)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["key"], "k1");
}
