//! Talking to nf_tables through `nft -j`: list one chain, apply one batch.

use std::borrow::Cow;

use nftables::helper::{self, NftablesError};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables, Rule};
use nftables::types::NfFamily;
use serde_json::Value;

use crate::error::{Error, Result};

pub fn installed() -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nft").is_file()))
        .unwrap_or(false)
        || std::path::Path::new("/usr/sbin/nft").is_file()
}

fn failure(what: &str, e: NftablesError) -> Error {
    Error::internal(format!("nft {what}: {e}"))
}

/// The rules of one chain as `nft -j` prints them, or `None` when the table or chain does not
/// exist (yet).
pub fn list_chain(family: &str, table: &str, chain: &str) -> Result<Option<Vec<Value>>> {
    list_rules(&["list", "chain", family, table, chain])
}

/// Every rule of a table, or `None` when the table does not exist.
pub fn list_table(family: &str, table: &str) -> Result<Option<Vec<Value>>> {
    list_rules(&["list", "table", family, table])
}

fn list_rules(args: &[&str]) -> Result<Option<Vec<Value>>> {
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args.iter().copied()) {
        Ok(out) => {
            let doc: Value = serde_json::from_str(&out)
                .map_err(|e| Error::internal(format!("nft printed invalid JSON: {e}")))?;
            let items = doc["nftables"].as_array().cloned().unwrap_or_default();
            Ok(Some(
                items
                    .into_iter()
                    .filter_map(|o| o.get("rule").cloned())
                    .collect(),
            ))
        }
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(failure(&args.join(" "), e)),
    }
}

/// `delete` commands for listed rules (each names its own chain), by handle.
pub fn delete_cmds(family: NfFamily, table: &str, rules: &[&Value]) -> Vec<NfCmd<'static>> {
    rules
        .iter()
        .filter_map(|r| {
            Some(NfCmd::Delete(NfListObject::Rule(Rule {
                family,
                table: table.to_string().into(),
                chain: r.get("chain")?.as_str()?.to_string().into(),
                handle: Some(handle(r)?),
                ..Default::default()
            })))
        })
        .collect()
}

/// Applies `commands` as one transaction; `Missing` when a table or chain they refer to does
/// not exist (the caller then creates it: the hot path never lists to find out).
pub fn apply_or_missing(commands: Vec<NfCmd<'_>>) -> Result<Applied> {
    let batch = Nftables {
        objects: Cow::Owned(commands.into_iter().map(NfObject::CmdObject).collect()),
    };
    let json = serde_json::to_string(&batch)
        .map_err(|e| Error::internal(format!("cannot encode nft batch: {e}")))?;
    run(&["-j", "-f", "-"], &json)
}

/// Applies `commands` as one transaction.
pub fn apply(commands: Vec<NfCmd<'_>>) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    match apply_or_missing(commands)? {
        Applied::Done => Ok(()),
        other => Err(Error::internal(format!(
            "nft batch failed: {other:?} object"
        ))),
    }
}

/// The `comment` of a listed rule.
pub fn comment(rule: &Value) -> Option<&str> {
    rule.get("comment").and_then(Value::as_str)
}

/// The `handle` of a listed rule.
pub fn handle(rule: &Value) -> Option<u32> {
    rule.get("handle")
        .and_then(Value::as_u64)
        .and_then(|h| u32::try_from(h).ok())
}

/// Outcome of a text batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    Done,
    /// A table or chain the batch refers to does not exist.
    Missing,
    /// A `create` found the object already there.
    Exists,
}

/// Applies an nft script in text syntax as one transaction. Text, not JSON: user-supplied
/// match conditions (`conditionsV4`) are nft text, and nft 1.0.6's JSON parser crashes on some
/// NAT forms that its text parser accepts.
pub fn apply_text(script: &str) -> Result<Applied> {
    run(&["-f", "-"], script)
}

/// Runs `nft <args>` with `input` on stdin; a missing or already existing object is an outcome,
/// any other failure an error carrying what nft said.
fn run(args: &[&str], input: &str) -> Result<Applied> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::internal(format!("cannot run nft: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::internal(format!("nft: {e}")))?;
    if out.status.success() {
        return Ok(Applied::Done);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No such file or directory") {
        Ok(Applied::Missing)
    } else if stderr.contains("File exists") {
        Ok(Applied::Exists)
    } else {
        Err(Error::internal(format!(
            "nft failed: {}\n{input}",
            stderr.trim()
        )))
    }
}

/// `delete rule <family> <table> <chain> handle <n>` for each listed rule.
pub fn delete_rules_script(family: &str, table: &str, rules: &[&Value]) -> String {
    rules
        .iter()
        .filter_map(|r| {
            Some(format!(
                "delete rule {family} {table} {} handle {}\n",
                r.get("chain")?.as_str()?,
                handle(r)?
            ))
        })
        .collect()
}

/// Every table of the namespace as (family, name): one cheap listing that tells which tables
/// are worth listing in full.
pub fn tables() -> Result<Vec<(String, String)>> {
    let out = helper::get_current_ruleset_raw(helper::DEFAULT_NFT, ["list", "tables"])
        .map_err(|e| failure("list tables", e))?;
    let doc: Value = serde_json::from_str(&out)
        .map_err(|e| Error::internal(format!("nft printed invalid JSON: {e}")))?;
    Ok(doc["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let t = o.get("table")?;
            Some((
                t.get("family")?.as_str()?.to_string(),
                t.get("name")?.as_str()?.to_string(),
            ))
        })
        .collect())
}
