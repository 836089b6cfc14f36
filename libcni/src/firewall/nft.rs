//! Talking to nf_tables through `nft -j`: list one chain, apply one batch.

use std::borrow::Cow;

use nftables::helper::{self, NftablesError};
use nftables::schema::{NfCmd, NfObject, Nftables};
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
    let args = ["list", "chain", family, table, chain];
    match helper::get_current_ruleset_raw(helper::DEFAULT_NFT, args) {
        Ok(out) => {
            let doc: Value = serde_json::from_str(&out)
                .map_err(|e| Error::internal(format!("nft printed invalid JSON: {e}")))?;
            let rules = doc["nftables"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|o| o.get("rule").cloned())
                        .collect()
                })
                .unwrap_or_default();
            Ok(Some(rules))
        }
        Err(NftablesError::NftFailed { stderr, .. })
            if stderr.contains("No such file or directory") =>
        {
            Ok(None)
        }
        Err(e) => Err(failure(&format!("list chain {family} {table} {chain}"), e)),
    }
}

/// Applies `commands` as one transaction.
pub fn apply(commands: Vec<NfCmd<'_>>) -> Result<()> {
    if commands.is_empty() {
        return Ok(());
    }
    let batch = Nftables {
        objects: Cow::Owned(commands.into_iter().map(NfObject::CmdObject).collect()),
    };
    helper::apply_ruleset(&batch).map_err(|e| failure("apply", e))
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
