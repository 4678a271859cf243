//! `kagi compliance report` answers from live state, and the answers change with it.
#![allow(clippy::unwrap_used)]

mod support;

use support::Server;

fn answer(srv: &Server, control: &str) -> (String, String) {
    let r: serde_json::Value =
        serde_json::from_str(&srv.ok(&["compliance", "report", "--format", "json"])).unwrap();
    let c = r["controls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["control"] == control)
        .unwrap_or_else(|| panic!("no control {control}"));
    (
        c["answer"].as_str().unwrap().to_string(),
        c["comment"].as_str().unwrap().to_string(),
    )
}

#[test]
fn the_report_follows_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let srv = Server::dev(&dir.path().join("d"), &[]);

    // Dev seal: the master key is on disk, so custody is "No".
    let (a, c) = answer(&srv, "10.1.2");
    assert_eq!(a, "No");
    assert!(c.contains("dev seal"), "{c}");
    assert_eq!(answer(&srv, "CEK-12").0, "N/A");

    // A key without a rotation period makes rotation "No", naming it.
    srv.ok(&["key", "create", "unrotated"]);
    let (a, c) = answer(&srv, "CEK-12");
    assert_eq!(a, "No");
    assert!(c.contains("unrotated"), "{c}");
    srv.ok(&["key", "create", "rotated", "--rotation-period", "90d"]);
    srv.ok(&["key", "disable", "unrotated"]);
    assert_eq!(answer(&srv, "CEK-12").0, "Yes");
    assert!(answer(&srv, "CEK-13").1.contains("unrotated"));

    // Destruction: N/A until a key is destroyed, then Yes with its name and time.
    assert_eq!(answer(&srv, "CEK-14").0, "N/A");
    srv.ok(&[
        "key",
        "schedule-deletion",
        "unrotated",
        "--pending-days",
        "0",
    ]);
    assert!(support::wait_until(
        std::time::Duration::from_secs(10),
        || { answer(&srv, "CEK-14").0 == "Yes" }
    ));
    assert!(answer(&srv, "CEK-14").1.contains("unrotated destroyed at"));
    assert!(answer(&srv, "CEK-21")
        .1
        .contains("unrotated (aes256-gcm, destroyed"));

    // Third-party requests: "No" until a policy refuses them.
    assert_eq!(answer(&srv, "10.1.1.9.PB").0, "No");
    let pol = dir.path().join("subpoena.toml");
    std::fs::write(
        &pol,
        "[[rule]]\neffect = \"deny\"\nkeys = [\"*\"]\noperations = [\"*\"]\n[rule.when]\njustifications = [\"THIRD_PARTY_DATA_REQUEST\"]\n",
    )
    .unwrap();
    srv.ok(&["policy", "write", "no-subpoena", pol.to_str().unwrap()]);
    let (a, c) = answer(&srv, "10.1.1.9.PB");
    assert_eq!(a, "Yes");
    assert!(c.contains("no-subpoena"), "{c}");

    // The audit chain as verified now.
    let (a, c) = answer(&srv, "CEK-09");
    assert_eq!(a, "Yes");
    assert!(c.contains("audit chain verified now"), "{c}");

    // Markdown and CSV carry the same answers.
    let md = srv.ok(&["compliance", "report"]);
    assert!(
        md.starts_with("# kagi compliance report")
            && md.contains("| CSA CCM v4 | CEK-12 Key Rotation |")
    );
    let csv = srv.ok(&["compliance", "report", "--format", "csv"]);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("framework,control,title,question,answer,comment")
    );
    assert!(lines.any(|l| l.starts_with("CSA CCM v4,CEK-12,Key Rotation,") && l.contains(",Yes,")));
}
