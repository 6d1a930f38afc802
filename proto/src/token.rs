//! The shared auth token: read from a file only that file's owner (and group) can read.
//!
//! A token given as a command-line flag is visible to every local user in
//! `/proc/<pid>/cmdline`; a token in a file others cannot read, or in the environment
//! (`STRATA_AUTH_TOKEN`: `/proc/<pid>/environ` is private to the process's user), is not.
//! Server, command-line client and library client all read token files here, so they
//! accept and refuse the same files with the same messages.

use std::path::Path;

use crate::{Error, ErrorCode, Result};

/// Permission bits that let users other than the owner and the group touch a file.
const OTHERS: u32 = 0o007;

fn invalid(msg: String) -> Error {
    Error::new(ErrorCode::InvalidArgument, msg)
}

/// Reads the token in `path`: the file's text, trailing whitespace (the newline an editor
/// or `echo` adds) dropped. Refused with `InvalidArgument`, naming the file: a file that
/// is missing or unreadable, one that other users may read or write (permission bits
/// 0o007: `chmod 600` it), and one holding no token.
pub fn read_token_file(path: &Path) -> Result<String> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| invalid(format!("auth token file {shown}: {e}")))?;
    if !meta.is_file() {
        return Err(invalid(format!(
            "auth token file {shown} is not a regular file"
        )));
    }
    refuse_if_others_may_read(path, &meta, &format!("auth token file {shown}"))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("auth token file {shown}: {e}")))?;
    let token = text.trim_end();
    if token.is_empty() {
        return Err(invalid(format!("auth token file {shown} is empty")));
    }
    if token.contains(['\n', '\r']) {
        return Err(invalid(format!(
            "auth token file {shown} holds more than one line"
        )));
    }
    Ok(token.to_owned())
}

/// Refuses a file holding a secret (a token file, a config file with a token in it) that
/// users other than its owner and group may access; `subject` names it in the error.
pub fn check_secret_file(path: &Path, subject: &str) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| invalid(format!("{subject}: {e}")))?;
    refuse_if_others_may_read(path, &meta, subject)
}

#[cfg(unix)]
fn refuse_if_others_may_read(path: &Path, meta: &std::fs::Metadata, subject: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & OTHERS != 0 {
        return Err(invalid(format!(
            "{subject} has mode {mode:04o}: other users can read it; make it private to its \
             owner (chmod 600 {})",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn refuse_if_others_may_read(_: &Path, _: &std::fs::Metadata, _: &str) -> Result<()> {
    Ok(())
}

/// The token given either directly or as a file, never both. `names` are the two
/// settings as the caller's user knows them, for the errors (e.g. `--auth-token` and
/// `--auth-token-file`).
pub fn resolve_token(
    direct: Option<String>,
    file: Option<&Path>,
    names: (&str, &str),
) -> Result<Option<String>> {
    let (flag, file_flag) = names;
    match (direct, file) {
        (Some(_), Some(_)) => Err(invalid(format!("give {flag} or {file_flag}, not both"))),
        (Some(t), None) if t.is_empty() => Err(invalid(format!("{flag} must not be empty"))),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(path)) => read_token_file(path).map(Some),
        (None, None) => Ok(None),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file_with(dir: &Path, name: &str, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn temp_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("strata-token-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_private_file_gives_its_token_without_the_newline() {
        let dir = temp_dir("ok");
        let path = file_with(&dir, "t", "s3cret\n", 0o600);
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
        // Group-readable is the operator's choice (a service group); others are not.
        let path = file_with(&dir, "g", "s3cret", 0o640);
        assert_eq!(read_token_file(&path).unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_open_and_empty_files_are_refused_by_name() {
        let dir = temp_dir("bad");
        let missing = dir.join("missing");
        let e = read_token_file(&missing).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains(&*missing.to_string_lossy()), "{e}");

        let open = file_with(&dir, "open", "s3cret\n", 0o644);
        let e = read_token_file(&open).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(e.message().contains("0644"), "{e}");
        assert!(e.message().contains("chmod 600"), "{e}");

        let empty = file_with(&dir, "empty", "\n", 0o600);
        let e = read_token_file(&empty).unwrap_err();
        assert!(e.message().contains("is empty"), "{e}");

        let two = file_with(&dir, "two", "a\nb\n", 0o600);
        assert!(read_token_file(&two).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const FLAGS: (&str, &str) = ("--auth-token", "--auth-token-file");

    #[test]
    fn a_token_comes_from_one_place_only() {
        let dir = temp_dir("both");
        let path = file_with(&dir, "t", "s3cret", 0o600);
        let e = resolve_token(Some("x".into()), Some(&path), FLAGS).unwrap_err();
        assert!(e.message().contains("--auth-token-file"), "{e}");
        assert_eq!(
            resolve_token(None, Some(&path), FLAGS).unwrap(),
            Some("s3cret".into())
        );
        assert_eq!(
            resolve_token(Some("x".into()), None, FLAGS).unwrap(),
            Some("x".into())
        );
        assert!(resolve_token(Some(String::new()), None, FLAGS).is_err());
        assert_eq!(resolve_token(None, None, FLAGS).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
