//! `kagi compliance report`: the key service's CAIQ-style answers from its live state, as
//! Markdown (default), JSON or CSV.

use clap::Subcommand;
use serde_json::Value;

use crate::output::{s, Fail};
use crate::Conn;

#[derive(Subcommand, Debug)]
pub enum ComplianceCmd {
    /// Answers (Yes / No / N/A with evidence) to the control questions a key service can answer.
    Report {
        /// md, json or csv.
        #[arg(long, default_value = "md", value_parser = ["md", "json", "csv"])]
        format: String,
    },
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

fn markdown(r: &Value) -> String {
    let mut out = format!(
        "# kagi compliance report\n\nGenerated {} on node {}, from the live state of this deployment.\n\n",
        s(&r["generated_at"]),
        s(&r["node"])
    );
    out.push_str("| framework | control | question | answer | evidence |\n|---|---|---|---|---|\n");
    for c in r["controls"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "| {} | {} {} | {} | **{}** | {} |\n",
            s(&c["framework"]),
            s(&c["control"]),
            s(&c["title"]),
            s(&c["question"]),
            s(&c["answer"]),
            s(&c["comment"]).replace('|', "\\|")
        ));
    }
    out
}

fn csv(r: &Value) -> String {
    let mut out = String::from("framework,control,title,question,answer,comment\n");
    for c in r["controls"].as_array().into_iter().flatten() {
        let row: Vec<String> = [
            "framework",
            "control",
            "title",
            "question",
            "answer",
            "comment",
        ]
        .iter()
        .map(|f| csv_field(&s(&c[*f])))
        .collect();
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// `kagi compliance ...`.
pub async fn run(conn: &Conn, cmd: ComplianceCmd) -> Result<(), Fail> {
    let c = conn.client()?;
    match cmd {
        ComplianceCmd::Report { format } => {
            let r: Value = c.get("/v1/compliance/report").await?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default()),
                "csv" => print!("{}", csv(&r)),
                _ => print!("{}", markdown(&r)),
            }
        }
    }
    Ok(())
}
