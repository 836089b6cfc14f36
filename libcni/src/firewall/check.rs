//! CHECK of an attachment's firewall rules wherever they may be: in the layout of either of
//! our backends, or in the reference plugins' (a pod the Go plugins ADDed before the node
//! switched to ours, or one our earlier version made). Each layout is counted on its own
//! ([`Tally`]), looked up by the attachment's names and comments only where its table or
//! chain exists, so the cost stays flat in the number of pods and no process is started where
//! iptables has no chain of the attachment. CHECK passes when one layout holds all of the
//! attachment's rules and no layout holds only part of them.

use std::fmt;

use ipnetwork::IpNetwork;

use super::{Owner, masquerade, nftables, portmap, portmap_iptables};
use crate::protocol::error::Result;

/// How many of one kind of rule a layout holds, and how many the attachment needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub what: String,
    pub have: usize,
    pub want: usize,
}

/// What one layout holds of an attachment's rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub layout: String,
    pub counts: Vec<Count>,
}

impl Tally {
    pub fn new(layout: impl Into<String>) -> Tally {
        Tally {
            layout: layout.into(),
            counts: Vec::new(),
        }
    }

    pub fn count(&mut self, what: impl Into<String>, have: usize, want: usize) {
        self.counts.push(Count {
            what: what.into(),
            have,
            want,
        });
    }

    fn absent(&self) -> bool {
        self.counts.iter().all(|c| c.have == 0)
    }

    fn complete(&self) -> bool {
        self.counts.iter().all(|c| c.have >= c.want)
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|c| format!("{} of {} {}", c.have, c.want, c.what))
            .collect();
        write!(f, "{}: {}", self.layout, counts.join(", "))
    }
}

/// `None` when one layout is complete and none holds only part of the rules; otherwise what
/// was found, layout by layout.
pub fn verdict(tallies: &[Tally]) -> Option<String> {
    let join = |ts: Vec<&Tally>| {
        ts.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let partial: Vec<&Tally> = tallies
        .iter()
        .filter(|t| !t.absent() && !t.complete())
        .collect();
    if !partial.is_empty() {
        return Some(format!("only part of them present: {}", join(partial)));
    }
    if tallies.iter().any(Tally::complete) {
        return None;
    }
    Some(format!("none present: {}", join(tallies.iter().collect())))
}

/// CHECK of portmap: the attachment's mappings in our nftables table or our iptables chain,
/// or the Go portmap's for the container (its `cni_hostport` tables or its `CNI-DN-…` chain
/// with the shared chains).
pub fn port_mappings(a: &portmap::Attachment<'_>) -> Result<Option<String>> {
    let mut nft = nftables::open()?;
    let tallies = [
        portmap::tally(&mut nft, a)?,
        portmap_iptables::tally(&mut nft, a)?,
        portmap::reference_tally(&mut nft, a)?,
        portmap_iptables::reference_tally(&mut nft, a)?,
    ];
    Ok(verdict(&tallies))
}

/// CHECK of bridge `ipMasq`: masquerade of `ips`, the attachment's addresses, in our table or
/// chain (or an earlier version's per-network rules), or the Go bridge's (its `CNI-…` chain
/// with the POSTROUTING jumps, or its `inet cni_plugins_masquerade` rules).
pub fn masquerade(owner: &Owner<'_>, ips: &[IpNetwork]) -> Result<Option<String>> {
    let mut nft = nftables::open()?;
    let mut tallies = masquerade::tally_nft(&mut nft, owner, ips)?.to_vec();
    tallies.extend(masquerade::tally_iptables(&mut nft, owner, ips)?);
    tallies.push(masquerade::reference_tally_iptables(&mut nft, owner, ips)?);
    tallies.push(masquerade::reference_tally_nft(&mut nft, owner, ips)?);
    Ok(verdict(&tallies))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(layout: &str, counts: &[(usize, usize)]) -> Tally {
        let mut t = Tally::new(layout);
        for &(have, want) in counts {
            t.count("rules", have, want);
        }
        t
    }

    #[test]
    fn one_complete_layout_and_no_partial_one_passes() {
        let ours = tally("ours", &[(2, 2), (3, 3)]);
        let theirs = tally("theirs", &[(0, 2), (0, 3)]);
        assert_eq!(verdict(&[ours.clone(), theirs.clone()]), None);
        assert_eq!(verdict(&[theirs.clone(), ours.clone()]), None);
        // Nothing to have is complete too (no addresses, no mappings of a family).
        assert_eq!(verdict(&[tally("ours", &[(0, 0)])]), None);
    }

    #[test]
    fn nothing_or_a_part_fails_naming_the_layouts() {
        let none = verdict(&[tally("ours", &[(0, 1), (0, 2)]), tally("theirs", &[(0, 1)])]);
        assert_eq!(
            none.as_deref(),
            Some("none present: ours: 0 of 1 rules, 0 of 2 rules; theirs: 0 of 1 rules")
        );
        let part = verdict(&[
            tally("ours", &[(0, 1), (0, 2)]),
            tally("theirs", &[(1, 1), (0, 2)]),
        ]);
        assert_eq!(
            part.as_deref(),
            Some("only part of them present: theirs: 1 of 1 rules, 0 of 2 rules")
        );
        // A complete layout does not hide a partial one.
        let both = verdict(&[tally("ours", &[(1, 1)]), tally("theirs", &[(1, 2)])]);
        assert!(both.unwrap().contains("theirs: 1 of 2"));
    }
}
