//! The kernel firewall boundary. kagi keeps everything in its own nftables table
//! (`inet kagi`): a drop rule for every protected port and, per accepted knock, an
//! `address . protocol . port` element with a kernel timeout in a set that an accept rule
//! in the same chain consults. Access therefore expires even if the daemon dies, and an
//! accept can never be overridden by kagi's own drop (both live in one chain; a drop in
//! *another* table would still win, which is why the drop must be kagi's).
//!
//! The table is driven through `nft -f -` transactions: no netlink code, no `unsafe`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use kagi_spa::Proto;

/// Why the firewall refused a change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirewallError {
    /// `nft` could not be run.
    #[error("cannot run nft ({0}); install nftables and run as root")]
    Spawn(String),
    /// `nft` refused the transaction.
    #[error("nft refused the change: {0}")]
    Refused(String),
}

/// One grant: traffic from `addr` (and, when `src_port` is set, only from that source port —
/// the 5-tuple pinhole of native SPA) to `proto`/`port`, for `timeout` seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// Client address.
    pub addr: IpAddr,
    /// Client source port; None = any.
    pub src_port: Option<u16>,
    /// Protocol.
    pub proto: Proto,
    /// Service port.
    pub port: u16,
    /// Seconds.
    pub timeout: u32,
}

impl Access {
    /// Any source port from `addr`.
    pub fn new(addr: IpAddr, proto: Proto, port: u16, timeout: u32) -> Self {
        Self {
            addr,
            src_port: None,
            proto,
            port,
            timeout,
        }
    }
}

/// What the daemon asks of a firewall.
pub trait Firewall: Send {
    /// Installs kagi's table, replacing any earlier one (so a crash leaves nothing stale).
    fn setup(
        &mut self,
        protected: &[(Proto, u16)],
        default_drop: bool,
    ) -> Result<(), FirewallError>;
    /// Opens `port` for `addr` for `timeout` seconds (refreshing an existing grant).
    fn grant(&mut self, grants: &[Access]) -> Result<(), FirewallError>;
    /// Removes kagi's table.
    fn teardown(&mut self) -> Result<(), FirewallError>;
}

/// `--firewall none`: decisions are only logged.
#[derive(Debug, Default)]
pub struct LogOnly;

impl Firewall for LogOnly {
    fn setup(&mut self, _: &[(Proto, u16)], _: bool) -> Result<(), FirewallError> {
        Ok(())
    }
    fn grant(&mut self, grants: &[Access]) -> Result<(), FirewallError> {
        for g in grants {
            tracing::info!(addr = %g.addr, src_port = ?g.src_port, proto = g.proto.as_str(), port = g.port, timeout = g.timeout, "firewall none: would open");
        }
        Ok(())
    }
    fn teardown(&mut self) -> Result<(), FirewallError> {
        Ok(())
    }
}

/// The nftables backend.
#[derive(Debug)]
pub struct Nftables {
    table: String,
    /// Whether `add element` on an existing element restarts its timeout (recent kernels;
    /// probed at setup). Without it a grant deletes and re-adds, which costs the kernel an
    /// RCU grace period (~12 ms here) per transaction.
    refresh_by_add: bool,
    /// Stealth host: drop every other TCP/UDP packet and pings too (the host answers
    /// nothing); the value is the SPA UDP port, which stays reachable.
    stealth: Option<u16>,
}

impl Default for Nftables {
    fn default() -> Self {
        Self {
            table: "kagi".into(),
            refresh_by_add: false,
            stealth: None,
        }
    }
}

impl Nftables {
    /// A stealth host: besides the protected ports, every TCP and UDP packet that is not
    /// granted, established, on loopback or for the SPA port `spa_udp_port` is dropped, and
    /// so are pings — a scan gets no reply packet at all.
    pub fn stealth(spa_udp_port: u16) -> Self {
        Self {
            stealth: Some(spa_udp_port),
            ..Self::default()
        }
    }
}

fn run_nft_output(args: &[&str]) -> Result<String, FirewallError> {
    let out = Command::new("nft")
        .args(args)
        .output()
        .map_err(|e| FirewallError::Spawn(e.to_string()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        ))
    }
}

/// The ruleset text for kagi's table (pure; shown in docs and tested). Connections that a
/// grant let in outlive the grant (`ct state established`): a knock opens the door for new
/// connections only. A mid-stream probe (conntrack's loose pickup) is still `new` and dropped.
pub fn ruleset(table: &str, protected: &[(Proto, u16)], default_drop: bool) -> String {
    ruleset_with(table, protected, default_drop, None)
}

/// [`ruleset`], optionally for a stealth host (see [`Nftables::stealth`]).
pub fn ruleset_with(
    table: &str,
    protected: &[(Proto, u16)],
    default_drop: bool,
    stealth: Option<u16>,
) -> String {
    let mut s = format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n\
         \tset allowed4 {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}\n\
         \tset allowed6 {{ type ipv6_addr . inet_proto . inet_service; flags timeout; }}\n\
         \tset pinhole4 {{ type ipv4_addr . inet_service . inet_proto . inet_service; flags timeout; }}\n\
         \tset pinhole6 {{ type ipv6_addr . inet_service . inet_proto . inet_service; flags timeout; }}\n\
         \tchain input {{\n\t\ttype filter hook input priority 0; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\tip saddr . meta l4proto . th dport @allowed4 accept\n\
         \t\tip6 saddr . meta l4proto . th dport @allowed6 accept\n\
         \t\tip saddr . th sport . meta l4proto . th dport @pinhole4 accept\n\
         \t\tip6 saddr . th sport . meta l4proto . th dport @pinhole6 accept\n"
    );
    if default_drop {
        for proto in [Proto::Tcp, Proto::Udp] {
            let ports: Vec<String> = protected
                .iter()
                .filter(|(p, _)| *p == proto)
                .map(|(_, n)| n.to_string())
                .collect();
            if !ports.is_empty() {
                s.push_str(&format!(
                    "\t\t{} dport {{ {} }} drop\n",
                    proto.as_str(),
                    ports.join(", ")
                ));
            }
        }
    }
    if let Some(spa) = stealth {
        s.push_str(&format!(
            "\t\tiifname \"lo\" accept\n\
             \t\tudp dport {spa} accept\n\
             \t\tmeta l4proto {{ tcp, udp }} drop\n\
             \t\ticmp type echo-request drop\n\
             \t\ticmpv6 type echo-request drop\n"
        ));
    }
    s.push_str("\t}\n}\n");
    s
}

/// The one transaction that opens `grants`. Per element: add (so the delete cannot fail),
/// delete, add with the timeout — which restarts the timeout of an existing grant.
pub fn grant_script(table: &str, grants: &[Access]) -> String {
    grant_script_with(table, grants, false)
}

/// As [`grant_script`]; with `refresh_by_add` a plain `add element` per grant, for kernels
/// where that restarts an existing element's timeout.
pub fn grant_script_with(table: &str, grants: &[Access], refresh_by_add: bool) -> String {
    let mut s = String::new();
    for g in grants {
        let (v4, a) = match g.addr.to_canonical() {
            IpAddr::V4(v4) => (true, v4.to_string()),
            IpAddr::V6(v6) => (false, v6.to_string()),
        };
        let (set, el) = match g.src_port {
            None => (
                if v4 { "allowed4" } else { "allowed6" },
                format!("{a} . {} . {}", g.proto.as_str(), g.port),
            ),
            Some(sp) => (
                if v4 { "pinhole4" } else { "pinhole6" },
                format!("{a} . {sp} . {} . {}", g.proto.as_str(), g.port),
            ),
        };
        let timeout = g.timeout;
        if refresh_by_add {
            s.push_str(&format!(
                "add element inet {table} {set} {{ {el} timeout {timeout}s }}\n"
            ));
            continue;
        }
        s.push_str(&format!(
            "add element inet {table} {set} {{ {el} timeout 1s }}\ndelete element inet {table} {set} {{ {el} }}\nadd element inet {table} {set} {{ {el} timeout {timeout}s }}\n"
        ));
    }
    s
}

fn run_nft(script: &str) -> Result<(), FirewallError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| FirewallError::Spawn(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| FirewallError::Spawn(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| FirewallError::Spawn(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(FirewallError::Refused(
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', " "),
        ))
    }
}

impl Firewall for Nftables {
    fn setup(
        &mut self,
        protected: &[(Proto, u16)],
        default_drop: bool,
    ) -> Result<(), FirewallError> {
        run_nft(&ruleset_with(
            &self.table,
            protected,
            default_drop,
            self.stealth,
        ))?;
        // Probe: does a second add with a longer timeout restart the first one's?
        let t = &self.table;
        let el = "127.0.0.255 . tcp . 9";
        run_nft(&format!(
            "add element inet {t} allowed4 {{ {el} timeout 2s }}\nadd element inet {t} allowed4 {{ {el} timeout 3600s }}\n"
        ))?;
        let listed = run_nft_output(&["list", "set", "inet", t, "allowed4"])?;
        self.refresh_by_add = listed.contains("expires 59m") || listed.contains("expires 1h");
        run_nft(&format!("delete element inet {t} allowed4 {{ {el} }}\n"))?;
        tracing::debug!(
            refresh_by_add = self.refresh_by_add,
            "nftables element timeout refresh probe"
        );
        Ok(())
    }

    fn grant(&mut self, grants: &[Access]) -> Result<(), FirewallError> {
        if grants.is_empty() {
            return Ok(());
        }
        run_nft(&grant_script_with(&self.table, grants, self.refresh_by_add))
    }

    fn teardown(&mut self) -> Result<(), FirewallError> {
        let t = &self.table;
        run_nft(&format!("table inet {t}\ndelete table inet {t}\n"))
    }
}

/// Default-deny egress for a gateway host, in its own table: new outbound TCP and UDP
/// connections leave only for the allowed (address, protocol, port) destinations; established
/// traffic, loopback and ICMP are untouched. A compromised process on the host cannot call
/// out (the Log4Shell callback), and the gateway cannot be talked into connecting elsewhere.
#[derive(Debug)]
pub struct Egress {
    table: String,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            table: "kagi_egress".into(),
        }
    }
}

/// The egress table's text for `allow` (pure; tested).
pub fn egress_ruleset(table: &str, allow: &[(std::net::IpAddr, Proto, u16)]) -> String {
    let mut s = format!(
        "table inet {table}\ndelete table inet {table}\ntable inet {table} {{\n\
         \tchain output {{\n\t\ttype filter hook output priority 0; policy accept;\n\
         \t\tct state established,related accept\n\
         \t\toifname \"lo\" accept\n"
    );
    for (addr, proto, port) in allow {
        let fam = if addr.is_ipv4() { "ip" } else { "ip6" };
        s.push_str(&format!(
            "\t\t{fam} daddr {addr} {} dport {port} accept\n",
            proto.as_str()
        ));
    }
    s.push_str("\t\tmeta l4proto { tcp, udp } drop\n\t}\n}\n");
    s
}

impl Egress {
    /// Replaces the egress allow-list (one transaction: there is never a moment without it).
    pub fn apply(&self, allow: &[(std::net::IpAddr, Proto, u16)]) -> Result<(), FirewallError> {
        run_nft(&egress_ruleset(&self.table, allow))
    }

    /// Removes the egress table.
    pub fn remove(&self) -> Result<(), FirewallError> {
        let t = &self.table;
        run_nft(&format!("table inet {t}\ndelete table inet {t}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_allows_only_the_list_after_established_and_loopback() {
        let r = egress_ruleset(
            "kagi_egress",
            &[
                ("10.0.0.4".parse().unwrap(), Proto::Tcp, 7300),
                ("fd00::3".parse().unwrap(), Proto::Udp, 62201),
            ],
        );
        let pos = |needle: &str| r.find(needle).unwrap();
        assert!(
            pos("ct state established,related accept")
                < pos("ip daddr 10.0.0.4 tcp dport 7300 accept")
        );
        assert!(
            pos("ip6 daddr fd00::3 udp dport 62201 accept") < pos("meta l4proto { tcp, udp } drop")
        );
        assert!(r.contains("hook output"));
    }

    #[test]
    fn ruleset_drops_protected_ports_in_its_own_table() {
        let r = ruleset(
            "kagi",
            &[(Proto::Tcp, 22), (Proto::Tcp, 7300), (Proto::Udp, 53)],
            true,
        );
        assert!(r.starts_with("table inet kagi\ndelete table inet kagi\n"));
        assert!(r.contains("tcp dport { 22, 7300 } drop"));
        assert!(r.contains("udp dport { 53 } drop"));
        assert!(r.contains("@allowed4 accept"));
        assert!(r.contains("ip saddr . th sport . meta l4proto . th dport @pinhole4 accept"));
        let open = ruleset("kagi", &[(Proto::Tcp, 22)], false);
        assert!(!open.contains("drop"));
        // Established connections come first; a stealth host drops the rest after the grants.
        let st = ruleset_with("kagi", &[(Proto::Tcp, 8443)], true, Some(62201));
        let pos = |needle: &str| st.find(needle).unwrap();
        assert!(pos("ct state established,related accept") < pos("@allowed4 accept"));
        assert!(pos("@pinhole6 accept") < pos("udp dport 62201 accept"));
        assert!(pos("udp dport 62201 accept") < pos("meta l4proto { tcp, udp } drop"));
        assert!(!r.contains("meta l4proto { tcp, udp } drop"));
    }

    #[test]
    fn grants_refresh_and_pick_the_family() {
        let g = grant_script(
            "kagi",
            &[
                Access::new("10.0.0.2".parse().unwrap(), Proto::Tcp, 22, 30),
                Access::new("::ffff:10.0.0.3".parse().unwrap(), Proto::Udp, 53, 5),
                Access::new("fd00::2".parse().unwrap(), Proto::Tcp, 22, 9),
                Access {
                    src_port: Some(40_000),
                    ..Access::new("10.0.0.4".parse().unwrap(), Proto::Tcp, 7300, 7)
                },
            ],
        );
        assert!(g.contains(
            "add element inet kagi pinhole4 { 10.0.0.4 . 40000 . tcp . 7300 timeout 7s }"
        ));
        assert!(g.contains("add element inet kagi allowed4 { 10.0.0.2 . tcp . 22 timeout 30s }"));
        assert!(g.contains("delete element inet kagi allowed4 { 10.0.0.3 . udp . 53 }"));
        assert!(g.contains("add element inet kagi allowed6 { fd00::2 . tcp . 22 timeout 9s }"));
        let fast = grant_script_with(
            "kagi",
            &[Access::new("10.0.0.2".parse().unwrap(), Proto::Tcp, 22, 30)],
            true,
        );
        assert_eq!(
            fast,
            "add element inet kagi allowed4 { 10.0.0.2 . tcp . 22 timeout 30s }\n"
        );
    }
}
