//! The CNI error object: `{"cniVersion","code","msg","details"}` with the spec's codes.

use serde::{Deserialize, Serialize};

use crate::kernel::errno::Errno;
use crate::protocol::version::Version;

/// Error codes of the spec (and the two the Go library adds, kept for drop-in parity).
/// Only the wire format ([`Error::to_json`], [`Error::from_plugin_output`]) sees the numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion,
    UnsupportedField,
    UnknownContainer,
    InvalidEnv,
    Io,
    Decode,
    InvalidConfig,
    /// Go's `ErrInvalidNetNS`: `CNI_NETNS` is the plugin's own namespace.
    InvalidNetns,
    TryAgainLater,
    NotAvailable,
    LimitedConnectivity,
    /// Go's `ErrInternal`: a failure that fits no spec code (kernel refused, exec failed, …).
    Internal,
    /// Any other number another plugin reported: plugin-specific (100 and up) or one the spec
    /// reserves but does not name; carried through unchanged.
    Other(u32),
}

impl Code {
    pub fn number(self) -> u32 {
        match self {
            Code::IncompatibleVersion => 1,
            Code::UnsupportedField => 2,
            Code::UnknownContainer => 3,
            Code::InvalidEnv => 4,
            Code::Io => 5,
            Code::Decode => 6,
            Code::InvalidConfig => 7,
            Code::InvalidNetns => 8,
            Code::TryAgainLater => 11,
            Code::NotAvailable => 50,
            Code::LimitedConnectivity => 51,
            Code::Internal => 999,
            Code::Other(n) => n,
        }
    }

    pub fn from_number(n: u32) -> Code {
        const NAMED: [Code; 12] = [
            Code::IncompatibleVersion,
            Code::UnsupportedField,
            Code::UnknownContainer,
            Code::InvalidEnv,
            Code::Io,
            Code::Decode,
            Code::InvalidConfig,
            Code::InvalidNetns,
            Code::TryAgainLater,
            Code::NotAvailable,
            Code::LimitedConnectivity,
            Code::Internal,
        ];
        NAMED
            .into_iter()
            .find(|c| c.number() == n)
            .unwrap_or(Code::Other(n))
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.number())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!("; {details}") })]
pub struct Error {
    pub code: Code,
    pub msg: String,
    pub details: String,
    /// The kernel's verdict when the kernel refused a request (never on the wire), so a caller
    /// tells "not found" from "not allowed" without reading `msg`.
    errno: Option<Errno>,
    /// The failures this one stands for, when a teardown had several ([`all`]).
    causes: Vec<Error>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Teardown (DEL, GC) runs every step and reports every failure, not only the first: `Ok` when
/// all steps succeeded, else one error carrying them all ([`Error::causes`]).
pub fn all(steps: impl IntoIterator<Item = Result<()>>) -> Result<()> {
    let failures: Vec<Error> = steps.into_iter().filter_map(Result::err).collect();
    match failures.is_empty() {
        true => Ok(()),
        false => Err(Error::joined(failures)),
    }
}

impl Error {
    pub fn new(code: Code, msg: impl Into<String>) -> Self {
        Error {
            code,
            msg: msg.into(),
            details: String::new(),
            errno: None,
            causes: Vec::new(),
        }
    }

    /// Records the kernel's errno behind this error.
    pub fn with_errno(mut self, errno: Option<Errno>) -> Self {
        self.errno = errno;
        self
    }

    pub fn errno(&self) -> Option<Errno> {
        self.errno
    }

    /// Each failure of a teardown reported as this one; empty for a single failure.
    pub fn causes(&self) -> &[Error] {
        &self.causes
    }

    /// Several failures as one error. `msg` joins their messages, `details` lists each (with
    /// its own details) on a line of its own. The code, and the errno, are the first failure's:
    /// steps run in order, and an early failure (the namespace, the socket) is usually why the
    /// later ones failed too.
    fn joined(mut causes: Vec<Error>) -> Error {
        if causes.len() == 1 {
            return causes.remove(0);
        }
        let msg = causes.iter().map(|e| e.msg.as_str()).collect::<Vec<_>>();
        let details = causes.iter().map(Error::to_string).collect::<Vec<_>>();
        Error {
            code: causes[0].code,
            msg: msg.join("; "),
            details: details.join("\n"),
            errno: causes[0].errno,
            causes,
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
            code: self.code.number(),
            msg: self.msg.clone(),
            details: self.details.clone(),
        })
        .unwrap_or_default()
    }

    /// Reads a plugin's error object from its stdout, as a runtime or a delegating plugin does.
    pub fn from_plugin_output(stdout: &[u8]) -> Option<Error> {
        let wire: Wire = serde_json::from_slice(stdout).ok()?;
        Some(Error {
            code: Code::from_number(wire.code),
            msg: wire.msg,
            details: wire.details,
            errno: None,
            causes: Vec::new(),
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
            (Code::Internal, "boom", "")
        );
        assert!(Error::from_plugin_output(b"{\"cniVersion\":\"1.0.0\",\"ips\":[]}").is_none());
    }

    #[test]
    fn teardown_reports_every_failure_with_the_first_code() {
        assert_eq!(all([Ok(()), Ok(())]), Ok(()));
        let one = Error::io("cannot read lease");
        assert_eq!(all([Ok(()), Err(one.clone())]), Err(one));
        let link = Error::internal("cannot delete \"eth0\"").with_errno(Some(Errno::Denied));
        let lease = Error::io("cannot release lease").with_details("disk full");
        let e = all([Err(link.clone()), Ok(()), Err(lease.clone())]).unwrap_err();
        assert_eq!((e.code, e.errno()), (Code::Internal, Some(Errno::Denied)));
        assert_eq!(e.causes(), [link, lease]);
        assert_eq!(
            e.to_json(Version::V1_1_0),
            serde_json::json!({
                "cniVersion": "1.1.0",
                "code": 999,
                "msg": "cannot delete \"eth0\"; cannot release lease",
                "details": "cannot delete \"eth0\"\ncannot release lease; disk full",
            })
        );
    }

    #[test]
    fn every_code_keeps_its_number_on_the_wire() {
        for n in [
            1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 50, 51, 99, 100, 123, 999, 1000,
        ] {
            let e = Error::from_plugin_output(format!("{{\"code\":{n},\"msg\":\"m\"}}").as_bytes())
                .unwrap();
            assert_eq!(e.to_json(Version::V1_1_0)["code"], n, "{:?}", e.code);
        }
        assert_eq!(Code::from_number(11), Code::TryAgainLater);
        assert_eq!(Code::from_number(150), Code::Other(150));
    }
}
