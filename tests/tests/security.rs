//! End to end, who can read what on the server's host (docs/security.md): the data dir
//! and everything under it private to the server's user whatever the umask, an open data
//! dir tightened, another user's refused, another uid unable to read the stored values,
//! and auth tokens read from private files instead of the command line.

use std::fs::Permissions;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use strata_client::{Client, ClientConfig, ErrorCode};
use strata_engine::private_files::shared_paths;
use strata_tests::{
    block_value, cli_binary, run_bounded, server_binary, skip_or_fail, ssd_files, ServerProcess,
    StartOptions,
};

const MIB: usize = 1 << 20;
/// A small dram tier over an ssd tier: 48 values of 1 MiB push most of them to ssd.
const ARGS: &[&str] = &[
    "--dram-capacity",
    "16MiB",
    "--ssd-capacity",
    "128MiB",
    "--device-plugin",
    "off",
];
const VALUES: u64 = 48;
/// A uid no account on the host uses, for the other local user.
const OTHER_UID: u32 = 61_234;

fn key(i: u64) -> Vec<u8> {
    format!("model@tp_rank:0@{i:016x}").into_bytes()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, Permissions::from_mode(mode)).unwrap();
}

/// A directory others may enter (as /home/<user> or /var/lib usually are), so what keeps
/// them out of the data dir inside it is the data dir's own mode.
fn open_parent() -> tempfile::TempDir {
    let parent = tempfile::tempdir().unwrap();
    chmod(parent.path(), 0o755);
    parent
}

/// Puts [`VALUES`] values, enough that most are demoted to ssd, and checks they were.
async fn fill(server: &ServerProcess) {
    let client = Client::connect(server.client_config()).await.unwrap();
    for i in 0..VALUES {
        client
            .put_from(&key(i), &block_value(i, MIB))
            .await
            .unwrap();
    }
    let stats = client.stats().await.unwrap();
    assert!(stats.demotions >= VALUES / 2, "{stats:?}");
    client.close().await;
}

/// Every path under `data_dir` is private: none that group or others may access.
fn assert_private(data_dir: &Path, when: &str) {
    let shared = shared_paths(data_dir).unwrap();
    assert!(
        shared.is_empty(),
        "{when}: paths others may access: {:?}",
        shared
            .iter()
            .map(|(p, m)| format!("{} {m:04o}", p.display()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_under_the_data_dir_is_private_across_puts_demotion_and_restart() {
    let parent = open_parent();
    let data_dir = parent.path().join("data");
    // The loosest umask there is: the server must not rely on the one it inherits.
    let open_umask = || StartOptions {
        umask: Some(0o000),
        ..StartOptions::default()
    };
    let mut server = ServerProcess::start_with(&data_dir, "127.0.0.1:0", ARGS, open_umask());
    fill(&server).await;
    // The walk below must have something to check: the files a demotion writes.
    let files = ssd_files(&data_dir.join("ssd"));
    assert!(
        !files.is_empty(),
        "no ssd files under {}",
        data_dir.display()
    );
    for expected in ["ssd/LOCK", "server-cert.pem", "server-key.pem", "shm.sock"] {
        assert!(data_dir.join(expected).exists(), "{expected} missing");
    }
    assert_private(&data_dir, "after puts and demotions");
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&files[0]), 0o600);

    assert!(server.terminate().success());
    let server = ServerProcess::start_with(&data_dir, "127.0.0.1:0", ARGS, open_umask());
    let client = Client::connect(server.client_config()).await.unwrap();
    let got = client.get(&key(0)).await.unwrap();
    assert!(
        got[..] == block_value(0, MIB)[..],
        "recovered value differs"
    );
    client.put_from(b"after-restart", b"v").await.unwrap();
    client.close().await;
    assert_private(&data_dir, "after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_left_open_is_tightened_at_start_with_a_warning() {
    let parent = open_parent();
    let data_dir = parent.path().join("data");
    std::fs::create_dir_all(data_dir.join("ssd")).unwrap();
    std::fs::write(data_dir.join("ssd/LOCK"), b"").unwrap();
    chmod(&data_dir, 0o755);
    chmod(&data_dir.join("ssd"), 0o777);
    chmod(&data_dir.join("ssd/LOCK"), 0o644);
    let log = parent.path().join("server.log");
    let options = StartOptions {
        stderr: Some(std::fs::File::create(&log).unwrap()),
        ..StartOptions::default()
    };
    let server = ServerProcess::start_with(&data_dir, "127.0.0.1:0", ARGS, options);
    assert_private(&data_dir, "after start");
    assert_eq!(mode(&data_dir), 0o700);
    assert_eq!(mode(&data_dir.join("ssd")), 0o700);
    drop(server);
    let log = std::fs::read_to_string(&log).unwrap();
    let named = format!(
        "{} was readable by other users (mode 0755)",
        data_dir.display()
    );
    assert!(log.contains(&named), "no warning naming the change: {log}");
    assert!(log.contains("mode 0777"), "{log}");
}

fn running_as_root() -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        skip_or_fail("this test switches to another uid, which needs root");
    }
    root
}

/// Runs `cat path` as [`OTHER_UID`]: whether it read the file, and what it said.
fn cat_as_other_user(path: &Path) -> (bool, String) {
    let (status, _, err) = run_bounded(
        Command::new("cat").arg(path).uid(OTHER_UID).gid(OTHER_UID),
        Duration::from_secs(10),
    );
    (status.success(), err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_local_user_cannot_read_the_stored_values() {
    if !running_as_root() {
        return;
    }
    let parent = open_parent();
    let data_dir = parent.path().join("data");
    let server = ServerProcess::start_with(
        &data_dir,
        "127.0.0.1:0",
        ARGS,
        StartOptions {
            umask: Some(0o022),
            ..StartOptions::default()
        },
    );
    fill(&server).await;
    // The control: the other user reaches the parent and reads what is open to it, so a
    // refusal below is the data dir's doing.
    let control = parent.path().join("control");
    std::fs::write(&control, b"open").unwrap();
    chmod(&control, 0o644);
    let (read, err) = cat_as_other_user(&control);
    assert!(read, "the other uid cannot even read an open file: {err}");

    let files = ssd_files(&data_dir.join("ssd"));
    assert!(!files.is_empty());
    for path in files.iter().chain([&data_dir.join("ssd/LOCK")]) {
        let (read, _) = cat_as_other_user(path);
        assert!(!read, "uid {OTHER_UID} read {}", path.display());
    }
    // Not even by a path the server's user opened up below: the data dir itself is shut.
    chmod(&files[0], 0o644);
    let (read, err) = cat_as_other_user(&files[0]);
    assert!(!read, "the data dir let uid {OTHER_UID} through");
    assert!(err.contains("Permission denied"), "{err}");
    chmod(&files[0], 0o600);
    assert_ne!(std::fs::metadata(&data_dir).unwrap().uid(), OTHER_UID);
}

#[test]
fn a_data_dir_of_another_user_is_refused() {
    if !running_as_root() {
        return;
    }
    let parent = open_parent();
    let data_dir = parent.path().join("theirs");
    std::fs::create_dir(&data_dir).unwrap();
    std::os::unix::fs::chown(&data_dir, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let (status, _, err) = run_bounded(
        Command::new(server_binary())
            .args(["--port", "0", "--data-dir"])
            .arg(&data_dir)
            .args(ARGS),
        Duration::from_secs(30),
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("uid {OTHER_UID}")), "{err}");
    assert!(err.contains("chown"), "{err}");
}

/// A token file with `mode` in `dir`.
fn token_file(dir: &Path, name: &str, token: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    chmod(&path, mode);
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_private_file_works_for_server_cli_and_client() {
    let secrets = tempfile::tempdir().unwrap();
    let server_token = token_file(secrets.path(), "server", "s3cret", 0o600);
    let log = secrets.path().join("server.log");
    let server = ServerProcess::start_with(
        &secrets.path().join("data"),
        "127.0.0.1:0",
        &["--auth-token-file", server_token.to_str().unwrap()],
        StartOptions {
            stderr: Some(std::fs::File::create(&log).unwrap()),
            ..StartOptions::default()
        },
    );
    let right = token_file(secrets.path(), "right", "s3cret", 0o600);
    let wrong = token_file(secrets.path(), "wrong", "guess", 0o600);
    let with_file = |file: &Path| ClientConfig {
        auth_token_file: Some(file.to_owned()),
        ..server.client_config()
    };
    let client = Client::connect(with_file(&right)).await.unwrap();
    client.put_from(b"k", b"v").await.unwrap();
    client.close().await;
    let e = Client::connect(with_file(&wrong)).await.err().unwrap();
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");
    let e = Client::connect(server.client_config()).await.err().unwrap();
    assert_eq!(e.code(), ErrorCode::Unauthorized, "{e}");

    let cli = |file: &Path| {
        let (status, out, err) = run_bounded(
            Command::new(cli_binary())
                .args(["--server", &server.addr.to_string(), "--ca"])
                .arg(&server.cert)
                .arg("--auth-token-file")
                .arg(file)
                .args(["get", "k"])
                .env_remove("STRATA_AUTH_TOKEN"),
            Duration::from_secs(30),
        );
        (status.code(), out, err)
    };
    assert_eq!(cli(&right), (Some(0), "v".into(), String::new()));
    let open = token_file(secrets.path(), "open", "s3cret", 0o644);
    let (code, _, err) = cli(&open);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("other users can read it"), "{err}");
    assert!(err.contains(&*open.to_string_lossy()), "{err}");
    drop(server);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(!log.contains("visible to every local user"), "{log}");
}

#[test]
fn the_server_refuses_a_missing_or_open_token_file_and_warns_of_a_token_flag() {
    let dir = tempfile::tempdir().unwrap();
    let start = |extra: &[&str]| {
        run_bounded(
            Command::new(server_binary())
                .args(["--port", "0", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(ARGS)
                .args(extra)
                .env_remove("STRATA_AUTH_TOKEN")
                .env_remove("STRATA_AUTH_TOKEN_FILE"),
            Duration::from_secs(30),
        )
    };
    let missing = dir.path().join("no-such-token");
    let (status, _, err) = start(&["--auth-token-file", missing.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
    assert!(err.contains("No such file"), "{err}");

    let open = token_file(dir.path(), "open", "s3cret", 0o604);
    let (status, _, err) = start(&["--auth-token-file", open.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("mode 0604: other users can read it"), "{err}");
    assert!(err.contains("chmod 600"), "{err}");

    // A token in the config file holds that file to the same rule.
    let config = token_file(dir.path(), "strata.toml", "auth-token = \"s3cret\"", 0o644);
    let (status, _, err) = start(&["--config", config.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("holds auth-token but has mode 0644"), "{err}");

    // The flag still works, with a warning naming the leak and the alternatives; the
    // bad --data-plane makes this start end right after the warning.
    let (status, _, err) = start(&["--auth-token", "s3cret", "--data-plane", "rdma"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("visible to every local user"), "{err}");
    assert!(err.contains("--auth-token-file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_of_another_uid_gets_no_shared_memory_even_through_an_open_socket() {
    if !running_as_root() {
        return;
    }
    let parent = open_parent();
    let data_dir = parent.path().join("data");
    // The socket in a directory anyone may enter, as an operator might put it.
    let socket_dir = parent.path().join("run");
    std::fs::create_dir(&socket_dir).unwrap();
    chmod(&socket_dir, 0o755);
    let socket = socket_dir.join("strata.sock");
    let socket_flag = socket.to_str().unwrap().to_owned();
    let mut args = ARGS.to_vec();
    args.extend(["--shm-socket", &socket_flag]);
    let server = ServerProcess::start_in(&data_dir, "127.0.0.1:0", &args);
    fill(&server).await;
    let ask = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect refused:", e)
    sys.exit(0)
try:
    s.send(b"\0" * 16)
except OSError:
    pass  # refused before the ticket: the reply is already queued
print("reply:", s.recv(512)[1:].decode(errors="replace"))
"#;
    let as_other = |path: &Path| {
        let (status, out, err) = run_bounded(
            Command::new(python3())
                .args(["-c", ask])
                .arg(path)
                .uid(OTHER_UID)
                .gid(OTHER_UID),
            Duration::from_secs(20),
        );
        assert!(status.success(), "{out}{err}");
        out
    };
    // The server made the socket 0600: the other uid cannot even connect.
    assert_eq!(mode(&socket) & 0o777, 0o600);
    let out = as_other(&socket);
    assert!(out.contains("connect refused"), "{out}");
    // Opened up by mistake, the socket still checks the peer's uid and refuses it.
    chmod(&socket, 0o666);
    let out = as_other(&socket);
    assert!(out.contains("reply:") && out.contains("uid"), "{out}");
    assert!(out.contains("server's user only"), "{out}");
}

/// The system's Python, which another uid may run (a per-user shim on PATH may not be).
fn python3() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("python3"))
}
