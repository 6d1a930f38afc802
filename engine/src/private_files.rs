//! Directories and files private to the server's user: directories 0700, files 0600,
//! whatever the process umask.
//!
//! Stored values are KV blocks derived from users' prompts, and the ssd tier keeps them in
//! plain files: any local user who can read those files reads the prompts. So every
//! directory the engine or the server creates is made 0700, every file 0600 (set
//! explicitly after creation, since a umask only ever removes bits and a strict one would
//! leave the server unable to reopen its own files), and a directory given to it that
//! already exists is tightened — each change reported so the caller can warn — or refused
//! when it belongs to another user, who could widen it again.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the directories the server creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of the files the server creates.
pub const FILE_MODE: u32 = 0o600;
/// The bits a private path never has: any access by group or others.
const SHARED_BITS: u32 = 0o077;
/// How deep [`private_dir`] walks: the server's own trees are two levels deep.
const MAX_DEPTH: usize = 8;

/// One path whose mode [`private_dir`] narrowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tightened {
    /// The path.
    pub path: PathBuf,
    /// Its permission bits before.
    pub from: u32,
    /// Its permission bits now.
    pub to: u32,
}

impl std::fmt::Display for Tightened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was readable by other users (mode {:04o}); made it {:04o}",
            self.path.display(),
            self.from,
            self.to
        )
    }
}

fn current_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn not_owned(path: &Path, owner: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "{} belongs to uid {owner}, not to the server's user (uid {}), so the server \
             cannot keep it private: chown it to the server's user or choose another directory",
            path.display(),
            current_uid()
        ),
    )
}

/// Makes `dir` a private directory: creates it (and its missing parents) 0700, or, when
/// it exists, checks that the server's user owns it and takes group and other bits off it
/// and off everything under it (symbolic links are left alone: what they point to is not
/// the server's). Returns what it changed, for the caller to warn about. Fails with
/// `PermissionDenied` when the directory, or a path under it that needs tightening,
/// belongs to another user.
pub fn private_dir(dir: &Path) -> io::Result<Vec<Tightened>> {
    create_missing(dir)?;
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        ));
    }
    if meta.uid() != current_uid() {
        return Err(not_owned(dir, meta.uid()));
    }
    let mut changed = Vec::new();
    tighten(dir, &meta, &mut changed)?;
    walk(dir, 0, &mut changed)?;
    Ok(changed)
}

/// Creates each missing component of `dir` as 0700 (exactly: the umask may have taken
/// bits the server needs).
fn create_missing(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for path in missing.into_iter().rev() {
        match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
            Ok(()) => std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?,
            // Another process made it meanwhile: it is checked like any existing one.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn tighten(path: &Path, meta: &std::fs::Metadata, changed: &mut Vec<Tightened>) -> io::Result<()> {
    let from = meta.permissions().mode() & 0o7777;
    if from & SHARED_BITS == 0 {
        return Ok(());
    }
    if meta.uid() != current_uid() {
        return Err(not_owned(path, meta.uid()));
    }
    let to = from & !SHARED_BITS;
    std::fs::set_permissions(path, Permissions::from_mode(to))?;
    changed.push(Tightened {
        path: path.to_owned(),
        from,
        to,
    });
    Ok(())
}

fn walk(dir: &Path, depth: usize, changed: &mut Vec<Tightened>) -> io::Result<()> {
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        tighten(&path, &meta, changed)?;
        if meta.is_dir() {
            walk(&path, depth + 1, changed)?;
        }
    }
    Ok(())
}

/// Opens `path` with `options`, a file it creates being 0600 whatever the umask; an
/// existing file it opens is made 0600 too.
pub fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    let file = options.mode(FILE_MODE).open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    if mode != FILE_MODE {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(file)
}

/// Writes `contents` to a new or truncated private file at `path`.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = open_private(
        OpenOptions::new().write(true).create(true).truncate(true),
        path,
    )?;
    file.write_all(contents)
}

/// The paths under `dir` (itself included) that group or others may access, with their
/// modes: empty for a private tree. Symbolic links are not followed.
pub fn shared_paths(dir: &Path) -> io::Result<Vec<(PathBuf, u32)>> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & SHARED_BITS != 0 {
            found.push((path.clone(), mode));
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn new_directories_and_files_are_private_whatever_the_umask_left() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b/data");
        assert!(private_dir(&dir).unwrap().is_empty(), "nothing to tighten");
        for d in [root.path().join("a"), root.path().join("a/b"), dir.clone()] {
            assert_eq!(mode(&d), DIR_MODE, "{}", d.display());
        }
        let file = dir.join("f");
        write_private(&file, b"x").unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        // A file opened again keeps its mode; one left wider by hand is narrowed.
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        open_private(OpenOptions::new().read(true), &file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
        assert!(shared_paths(&dir).unwrap().is_empty());
    }

    #[test]
    fn an_open_tree_is_tightened_and_each_change_reported() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        std::fs::create_dir_all(dir.join("ssd")).unwrap();
        std::fs::write(dir.join("ssd/LOCK"), b"").unwrap();
        std::fs::write(dir.join("private"), b"").unwrap();
        std::fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.join("ssd"), Permissions::from_mode(0o775)).unwrap();
        std::fs::set_permissions(dir.join("ssd/LOCK"), Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(dir.join("private"), Permissions::from_mode(0o600)).unwrap();
        // A link out of the tree is not followed: its target is not the server's.
        let outside = root.path().join("outside");
        std::fs::write(&outside, b"").unwrap();
        std::fs::set_permissions(&outside, Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("link")).unwrap();

        assert_eq!(shared_paths(&dir).unwrap().len(), 3);
        let mut changed = private_dir(&dir).unwrap();
        changed.sort_by(|a, b| a.path.cmp(&b.path));
        let summary: Vec<(PathBuf, u32, u32)> = changed
            .iter()
            .map(|t| (t.path.clone(), t.from, t.to))
            .collect();
        assert_eq!(
            summary,
            vec![
                (dir.clone(), 0o755, 0o700),
                (dir.join("ssd"), 0o775, 0o700),
                (dir.join("ssd/LOCK"), 0o644, 0o600),
            ]
        );
        assert!(changed[0].to_string().contains("0755"), "{}", changed[0]);
        assert!(shared_paths(&dir).unwrap().is_empty());
        assert_eq!(mode(&outside), 0o644, "the link's target is untouched");
        assert!(
            private_dir(&dir).unwrap().is_empty(),
            "a second start changes nothing"
        );
    }

    #[test]
    fn a_file_in_place_of_the_directory_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let file = root.path().join("f");
        std::fs::write(&file, b"").unwrap();
        let e = private_dir(&file).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
    }

    #[test]
    fn another_users_directory_is_refused() {
        if current_uid() != 0 {
            eprintln!("skipped: making a directory owned by another user needs root");
            return;
        }
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let e = private_dir(&dir).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("uid 65534"), "{e}");
    }
}
