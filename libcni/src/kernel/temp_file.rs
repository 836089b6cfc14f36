//! Temporary files for atomic writes (write, then link or rename into place): created
//! exclusively and never through a symlink, under a name nobody can predict, so a link planted
//! in the directory can neither redirect the write nor make it fail for good.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Names tried before giving up; a clash with a random 64-bit suffix is already unheard of.
const TRIES: usize = 8;

/// A new file `<dir>/<stem><pid>.<16 random hex digits>` with permission bits `mode`.
pub fn create(dir: &Path, stem: &str, mode: u32) -> io::Result<(PathBuf, File)> {
    create_with(dir, stem, mode, || {
        Ok(format!(
            "{}.{}",
            std::process::id(),
            crate::kernel::random::hex::<8>()?
        ))
    })
}

/// Whether `name` is a file [`create`] made under `stem` (`<stem><pid>.<hex digits>`), e.g. one
/// left by a process killed between creating it and renaming it into place.
pub fn is_made_under(name: &str, stem: &str) -> bool {
    let digits = |s: &str, hex: bool| {
        !s.is_empty()
            && s.bytes().all(|b| match hex {
                true => b.is_ascii_hexdigit(),
                false => b.is_ascii_digit(),
            })
    };
    name.strip_prefix(stem)
        .and_then(|rest| rest.split_once('.'))
        .is_some_and(|(pid, random)| digits(pid, false) && digits(random, true))
}

fn create_with(
    dir: &Path,
    stem: &str,
    mode: u32,
    mut suffix: impl FnMut() -> io::Result<String>,
) -> io::Result<(PathBuf, File)> {
    let mut clash = None;
    for _ in 0..TRIES {
        let path = dir.join(format!("{stem}{}", suffix()?));
        // O_EXCL already refuses any existing name, a symlink included; O_NOFOLLOW says so.
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        match opened {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => clash = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(clash.unwrap_or_else(|| io::Error::other("no temporary file name left to try")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_never_followed_and_another_name_is_tried() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join(".x.tmp.1")).unwrap();
        let mut names = ["1", "2"].into_iter();
        let (path, _file) = create_with(dir.path(), ".x.tmp.", 0o600, || {
            Ok(names.next().unwrap().into())
        })
        .unwrap();
        assert_eq!(path, dir.path().join(".x.tmp.2"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
    }

    #[test]
    fn its_names_are_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = create(dir.path(), ".n-c-eth0.tmp", 0o600).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(is_made_under(name, ".n-c-eth0.tmp"));
        for other in [
            ".n-c-eth0.tmp",
            ".n-c-eth0.tmp1.",
            ".n-c-eth0.tmp1.tmp2.ab",
            "n-c-eth0",
        ] {
            assert!(!is_made_under(other, ".n-c-eth0.tmp"), "{other}");
        }
        // Another interface's temp file is not this entry's.
        assert!(!is_made_under(".n-c-eth0.tmp1.tmp2.ab", ".n-c-eth0.tmp"));
        assert!(is_made_under(
            ".n-c-eth0.tmp1.tmp2.ab",
            ".n-c-eth0.tmp1.tmp"
        ));
    }

    #[test]
    fn names_are_unpredictable_and_modes_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, _) = create(dir.path(), ".t.", 0o600).unwrap();
        let (b, _) = create(dir.path(), ".t.", 0o600).unwrap();
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&format!(".t.{}.", std::process::id())),
            "{name}"
        );
        let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o600, 0);
    }
}
