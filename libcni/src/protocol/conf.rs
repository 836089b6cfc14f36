//! The network configuration a plugin reads on stdin: the keys every plugin shares, typed; the
//! whole object kept as JSON so a plugin can read its own keys and delegates get it unchanged.

use serde::Deserialize;
use serde_json::Value;

use crate::protocol::error::{Error, Result};
use crate::protocol::json::Lenient;
use crate::protocol::result::{CniResult, Dns};
use crate::protocol::version::Version;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    pub ipam: Option<IpamRef>,
    /// Read only by ADD ([`NetConf::dns`]): a bad one must not block DEL.
    pub dns: Lenient<Dns>,
    pub args: Option<Value>,
    #[serde(rename = "prevResult")]
    pub prev_result: Option<Value>,
    /// Kept loose: Go's NetConf has no such field, so a malformed one must not fail every command.
    #[serde(rename = "runtimeConfig")]
    pub runtime_config: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// What libcni before 1.2 sent, and still sends beside the new key.
    #[serde(rename = "cni.dev/attachments")]
    pub legacy_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IpamRef {
    #[serde(rename = "type")]
    pub plugin_type: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Reads the shared keys of a config object. libcni sends the attachment lists of a
    /// network without attachments as a nil Go slice, `null`: that is an empty list, not an
    /// absent key (CRI-O's GC of an unused network).
    pub fn parse(raw: &Value) -> std::result::Result<NetConf, crate::protocol::json::KeyError> {
        let mut conf: NetConf = crate::protocol::json::from_value(raw.clone())?;
        let sent_null = |key: &str| raw.get(key).is_some_and(Value::is_null);
        if conf.valid_attachments.is_none() && sent_null("cni.dev/valid-attachments") {
            conf.valid_attachments = Some(Vec::new());
        }
        if conf.legacy_attachments.is_none() && sent_null("cni.dev/attachments") {
            conf.legacy_attachments = Some(Vec::new());
        }
        Ok(conf)
    }

    /// The type of the IPAM plugin, `None` for L2-only configs (`"ipam": {}` or no key).
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam
            .as_ref()
            .map(|i| i.plugin_type.as_str())
            .filter(|t| !t.is_empty())
    }

    /// `prevResult` converted to the internal shape; absent when the runtime sent none.
    pub fn prev_result(&self, version: Version) -> Result<Option<CniResult>> {
        match &self.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::parse(v, version)
                .map(|(_, r)| Some(r))
                .map_err(|e| e.context("invalid prevResult")),
        }
    }

    /// The `dns` key, for results.
    pub fn dns(&self) -> Result<Option<&Dns>> {
        match &self.dns {
            Lenient::Absent => Ok(None),
            Lenient::Valid(dns) => Ok(Some(dns)),
            Lenient::Invalid(why) => Err(Error::decode(format!(
                "error parsing network config: key \"dns\": {why}"
            ))),
        }
    }

    /// A capability argument the runtime passed in `runtimeConfig`.
    pub fn runtime(&self, capability: &str) -> Option<&Value> {
        self.runtime_config.as_ref()?.as_object()?.get(capability)
    }

    /// The attachments a GC must keep (`cni.dev/valid-attachments`, else the legacy key). A GC
    /// without either key is refused: read as "nothing is valid" it would free what running
    /// containers hold. An explicit empty list does mean "nothing is valid".
    pub fn gc_attachments(&self) -> Result<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.legacy_attachments.as_deref())
            .ok_or_else(|| {
                Error::invalid_config(
                    "GC needs \"cni.dev/valid-attachments\" (it may be an empty list)",
                )
            })
    }

    /// `args.cni.<key>` (the args convention).
    pub fn cni_arg(&self, key: &str) -> Option<&Value> {
        self.args.as_ref()?.get("cni")?.get(key)
    }
}

/// Checks a network name (and a container ID): `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub fn valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Checks an interface name the way the kernel and the Go skel do.
pub fn validate_ifname(name: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid_env(format!("invalid CNI_IFNAME {name:?}: {why}"));
    if name.is_empty() {
        return Err(bad("interface name is empty"));
    }
    if name.len() > 15 {
        return Err(bad("interface name is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(bad("interface name may not be . or .."));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(bad("interface name may not contain '/', ':' or whitespace"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers() {
        for ok in ["a", "Z9", "net-1_2.3", "0abc"] {
            assert!(valid_identifier(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "_a", "a b", "a/b", "a;b", "é"] {
            assert!(!valid_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn ifnames() {
        for ok in ["eth0", "a", "123456789012345", "net1.100"] {
            assert!(validate_ifname(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            let e = validate_ifname(bad).unwrap_err();
            assert_eq!(e.code, crate::Code::InvalidEnv, "{bad}");
            assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        }
    }

    #[test]
    fn shared_keys() {
        let c: NetConf = crate::protocol::json::from_value(json!({
            "cniVersion": "1.1.0", "Name": "n", "type": "bridge", "ipam": {},
            "runtimeConfig": {"mac": "aa:bb:cc:dd:ee:ff"}, "args": {"cni": {"ips": ["10.0.0.9"]}},
            "cni.dev/attachments": [{"containerID": "c1", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(c.name, "n");
        assert_eq!(c.ipam_type(), None);
        assert_eq!(c.runtime("mac"), Some(&json!("aa:bb:cc:dd:ee:ff")));
        assert_eq!(c.cni_arg("ips"), Some(&json!(["10.0.0.9"])));
        assert_eq!(c.gc_attachments().unwrap()[0].container_id, "c1");
        let bad_dns = NetConf::parse(&json!({"name": "n", "dns": "x"})).unwrap();
        let e = bad_dns.dns().unwrap_err();
        assert_eq!(e.code, crate::Code::Decode);
        assert!(e.msg.contains("key \"dns\""), "{}", e.msg);
        let none = NetConf::parse(&json!({"name": "n"})).unwrap();
        assert_eq!(
            none.gc_attachments().unwrap_err().code,
            crate::Code::InvalidConfig
        );
        // libcni's nil slice: an empty list.
        let null = NetConf::parse(&json!({"name": "n", "cni.dev/valid-attachments": null}));
        assert!(null.unwrap().gc_attachments().unwrap().is_empty());
        let legacy = NetConf::parse(&json!({"name": "n", "cni.dev/attachments": null}));
        assert!(legacy.unwrap().gc_attachments().unwrap().is_empty());
    }
}
