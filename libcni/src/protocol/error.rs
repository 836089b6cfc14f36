//! The CNI error object: `{"cniVersion","code","msg","details"}` with the spec's codes.

use serde::{Deserialize, Serialize};

use crate::protocol::version::Version;

/// Error codes of the spec (and the two the Go library adds, kept for drop-in parity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    /// Go's `ErrInvalidNetNS`: `CNI_NETNS` is the plugin's own namespace.
    InvalidNetns = 8,
    TryAgainLater = 11,
    NotAvailable = 50,
    LimitedConnectivity = 51,
    /// Go's `ErrInternal`: a failure that fits no spec code (kernel refused, exec failed, …).
    Internal = 999,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!("; {details}") })]
pub struct Error {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Error {
            code: code as u32,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Prefixes the message with what was being done, keeping the code.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.msg = format!("{what}: {}", self.msg);
        self
    }

    pub fn incompatible(msg: impl Into<String>) -> Self {
        Error::new(Code::IncompatibleVersion, msg)
    }
    pub fn unsupported_field(msg: impl Into<String>) -> Self {
        Error::new(Code::UnsupportedField, msg)
    }
    pub fn invalid_env(msg: impl Into<String>) -> Self {
        Error::new(Code::InvalidEnv, msg)
    }
    pub fn io(msg: impl Into<String>) -> Self {
        Error::new(Code::Io, msg)
    }
    pub fn decode(msg: impl Into<String>) -> Self {
        Error::new(Code::Decode, msg)
    }
    pub fn invalid_config(msg: impl Into<String>) -> Self {
        Error::new(Code::InvalidConfig, msg)
    }
    pub fn try_again(msg: impl Into<String>) -> Self {
        Error::new(Code::TryAgainLater, msg)
    }
    pub fn not_available(msg: impl Into<String>) -> Self {
        Error::new(Code::NotAvailable, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::new(Code::Internal, msg)
    }

    /// The object printed on stdout, labelled with the version the runtime asked for.
    pub fn to_json(&self, version: Version) -> serde_json::Value {
        serde_json::to_value(Wire {
            cni_version: Some(version.as_str().to_string()),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        })
        .unwrap_or_default()
    }

    /// Reads a plugin's error object from its stdout, as a runtime or a delegating plugin does.
    pub fn from_plugin_output(stdout: &[u8]) -> Option<Error> {
        let wire: Wire = serde_json::from_slice(stdout).ok()?;
        Some(Error {
            code: wire.code,
            msg: wire.msg,
            details: wire.details,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(
        rename = "cniVersion",
        skip_serializing_if = "Option::is_none",
        default
    )]
    cni_version: Option<String>,
    code: u32,
    msg: String,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    details: String,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_carries_version_code_msg_details() {
        let e = Error::invalid_config("bad \"mtu\"").with_details("must be a number");
        assert_eq!(
            e.to_json(Version::V0_4_0),
            serde_json::json!({"cniVersion":"0.4.0","code":7,"msg":"bad \"mtu\"","details":"must be a number"})
        );
        let e = Error::new(Code::InvalidEnv, "x");
        assert_eq!(
            e.to_json(Version::V1_1_0)["details"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn reads_go_style_error_without_version() {
        let e =
            Error::from_plugin_output(b"{\n    \"code\": 999,\n    \"msg\": \"boom\"\n}").unwrap();
        assert_eq!(
            (e.code, e.msg.as_str(), e.details.as_str()),
            (999, "boom", "")
        );
        assert!(Error::from_plugin_output(b"{\"cniVersion\":\"1.0.0\",\"ips\":[]}").is_none());
    }
}
