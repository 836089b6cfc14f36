//! The nftables mechanism the firewall drivers share, on the in-process netlink client: add an
//! attachment's rules in one transaction (declaring the base objects only when the kernel says
//! they are missing), and find or remove the rules an owner's comment marks, reading only the
//! chains asked for.

use crate::kernel::nf_tables::{self, Batch, Client, Family, ListedRule, Rule};
use crate::protocol::error::{Error, Result};

/// nf_tables of the namespace the calling thread is in.
pub fn open() -> Result<Client> {
    Ok(Client::open()?)
}

/// Declares a table's base objects (exclusively: `create table` first, so of two racing first
/// ADDs exactly one declares them and its hook rules exist once).
pub type BaseObjects = fn(&mut Batch) -> nf_tables::Result<()>;

/// Appends `rules` as one transaction. The hot path is just the rules; when the kernel says
/// their table or chain is missing, the base objects and the rules go in one transaction, and
/// a racing ADD that made them first sends us back to the hot path.
pub fn add_rules(nft: &mut Client, rules: &[Rule], base: BaseObjects) -> Result<()> {
    add_rules_echoed(nft, rules, base).map(drop)
}

/// [`add_rules`], returning the rules as the kernel made them (with their handles).
pub fn add_rules_echoed(
    nft: &mut Client,
    rules: &[Rule],
    base: BaseObjects,
) -> Result<Vec<ListedRule>> {
    if rules.is_empty() {
        return Ok(Vec::new());
    }
    let mut batch = Batch::new();
    for rule in rules {
        batch.add_rule(rule)?;
    }
    for _ in 0..3 {
        match nft.commit_echoed(&batch) {
            Err(e) if e.is_not_found() => {}
            done => return Ok(done?),
        }
        let mut with_base = Batch::new();
        base(&mut with_base)?;
        for rule in rules {
            with_base.add_rule(rule)?;
        }
        match nft.commit_echoed(&with_base) {
            Err(e) if e.is_exists() => {}
            done => return Ok(done?),
        }
    }
    Err(Error::internal(
        "the nftables base objects keep appearing and disappearing",
    ))
}

/// The rules of `chains` (of one table) whose comment `pick` accepts. A missing table or
/// chain has none.
pub fn rules_where(
    nft: &mut Client,
    family: Family,
    table: &str,
    chains: &[&str],
    pick: impl Fn(&str) -> bool,
) -> Result<Vec<ListedRule>> {
    let mut found = Vec::new();
    for chain in chains {
        found.extend(
            nft.list_rules(family, table, chain)?
                .into_iter()
                .filter(|r| r.comment.as_deref().is_some_and(&pick)),
        );
    }
    Ok(found)
}

/// Deletes `rules` (of any tables and families) in one transaction. A rule that vanished
/// meanwhile (a concurrent GC) fails the transaction; then what is left is listed again and
/// deleted.
pub fn delete(
    nft: &mut Client,
    rules: Vec<ListedRule>,
    relist: impl Fn(&mut Client) -> Result<Vec<ListedRule>>,
) -> Result<()> {
    let mut rules = rules;
    for _ in 0..3 {
        if rules.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for r in &rules {
            batch.delete_rule(r)?;
        }
        match nft.commit(&batch) {
            Err(e) if e.is_not_found() => rules = relist(nft)?,
            done => return Ok(done?),
        }
    }
    Err(Error::internal(
        "nftables rules keep changing while they are deleted",
    ))
}

/// Lists and deletes in one go: the rules of `chains` whose comment `pick` accepts.
pub fn remove_where(
    nft: &mut Client,
    family: Family,
    table: &str,
    chains: &[&str],
    pick: impl Fn(&str) -> bool,
) -> Result<()> {
    let list = |nft: &mut Client| rules_where(nft, family, table, chains, &pick);
    let rules = list(nft)?;
    delete(nft, rules, list)
}

/// Whether nf_tables answers here (STATUS): a lookup of a table that need not exist.
pub fn usable(nft: &mut Client) -> Result<()> {
    nft.table_exists(Family::Inet, "rcni_probe")?;
    Ok(())
}
