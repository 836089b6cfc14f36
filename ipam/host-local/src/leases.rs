//! Who holds which address: a lease's owner as its file names it, and the leases as an
//! operation sees them, listed from the directory or looked up in the trusted table.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::ip::canonical;
use crate::table::Table;

/// Who holds a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Attachment {
        id: String,
        ifname: String,
    },
    /// Written by host-local before 0.7: the container ID alone.
    Legacy(String),
}

impl Owner {
    pub fn parse(content: &str) -> Owner {
        let content = content.trim();
        match content.split_once("\r\n") {
            Some((id, ifname)) => Owner::Attachment {
                id: id.trim().into(),
                ifname: ifname.trim().into(),
            },
            None => Owner::Legacy(content.into()),
        }
    }

    /// The container.
    pub fn id(&self) -> &str {
        match self {
            Owner::Attachment { id, .. } | Owner::Legacy(id) => id,
        }
    }

    /// The owner that lease content `content` names; `None`: a name that blocks its address.
    pub fn of_content(content: Option<&[u8]>) -> Owner {
        content.map_or(Owner::Legacy(String::new()), |c| {
            Owner::parse(&String::from_utf8_lossy(c))
        })
    }

    /// Whether this lease belongs to (`id`, `ifname`); a legacy lease belongs to every
    /// interface of its container, as the reference reads it.
    pub fn is(&self, id: &str, ifname: &str) -> bool {
        match self {
            Owner::Attachment { id: i, ifname: f } => i == id && f == ifname,
            Owner::Legacy(i) => i == id,
        }
    }
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Attachment { id, ifname } => write!(f, "container {id} interface {ifname}"),
            Owner::Legacy(id) => write!(f, "container {id}"),
        }
    }
}

/// Who holds which address, as an operation sees the store.
pub trait LeaseView {
    fn owner(&self, ip: IpAddr) -> Option<Owner>;
    /// Every lease of container `id`, whatever its interface, legacy ones too.
    fn of_container(&self, id: &str) -> Vec<(IpAddr, Owner)>;
}

impl LeaseView for HashMap<IpAddr, Owner> {
    fn owner(&self, ip: IpAddr) -> Option<Owner> {
        self.get(&ip).cloned()
    }

    fn of_container(&self, id: &str) -> Vec<(IpAddr, Owner)> {
        self.iter()
            .filter(|(_, owner)| owner.id() == id)
            .map(|(ip, owner)| (*ip, owner.clone()))
            .collect()
    }
}

/// The leases: listed from the directory, or as the trusted table has them.
#[derive(Debug)]
pub enum Leases {
    Listed(HashMap<IpAddr, Owner>),
    Tabled(Table),
}

impl Default for Leases {
    fn default() -> Leases {
        Leases::Listed(HashMap::new())
    }
}

impl Leases {
    /// Every lease (for GC and STATUS, which look at them all).
    pub fn all(&self) -> HashMap<IpAddr, Owner> {
        match self {
            Leases::Listed(leases) => leases.clone(),
            Leases::Tabled(table) => table
                .all()
                .into_iter()
                .filter_map(|(name, content)| {
                    let ip = name.parse().map(canonical).ok()?;
                    Some((ip, Owner::of_content(content.as_deref())))
                })
                .collect(),
        }
    }
}

impl LeaseView for Leases {
    fn owner(&self, ip: IpAddr) -> Option<Owner> {
        match self {
            Leases::Listed(leases) => leases.owner(ip),
            // A trusted table names every lease as we name addresses (see `scan_directory`).
            Leases::Tabled(table) => table
                .lease(&canonical(ip).to_string())
                .map(|content| Owner::of_content(content.as_deref())),
        }
    }

    fn of_container(&self, id: &str) -> Vec<(IpAddr, Owner)> {
        match self {
            Leases::Listed(leases) => leases.of_container(id),
            // Names that block an address have no content to search: they are the empty ID's.
            Leases::Tabled(_) if id.is_empty() => self.all().of_container(id),
            Leases::Tabled(table) => table
                .leases_holding(id.as_bytes())
                .into_iter()
                .filter_map(|(name, content)| {
                    let owner = Owner::of_content(Some(&content));
                    let ip = name.parse().map(canonical).ok()?;
                    (owner.id() == id).then_some((ip, owner))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_parse_like_the_reference() {
        assert_eq!(
            Owner::parse(" c1\r\neth0\n"),
            Owner::Attachment {
                id: "c1".into(),
                ifname: "eth0".into()
            }
        );
        assert_eq!(Owner::parse("c1\n"), Owner::Legacy("c1".into()));
        assert!(Owner::parse("c1").is("c1", "eth1"));
        assert!(!Owner::parse("c1\r\neth0").is("c1", "eth1"));
        assert_eq!(Owner::of_content(None), Owner::Legacy(String::new()));
    }
}
