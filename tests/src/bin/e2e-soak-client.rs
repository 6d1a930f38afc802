//! A client process of the soak test (`tests/tests/soak.rs`): puts, gets, prefix lookups
//! and removes over a fixed key space, every value's bytes derived from its key, every
//! value read checked. It tolerates what a chaotic server does (restarts, full tiers,
//! leased or missing keys) and refuses only what must never happen: a wrong byte.
//!
//! `e2e-soak-client ADDR CERT TRANSPORT SEED SECONDS` prints one line at the end:
//! `ops N checked C failed F corrupt 0`; on a wrong byte it prints the key and exits 3.

use std::time::{Duration, Instant};

use strata_client::{Client, ClientConfig, ErrorCode, Transport};

/// Keys of the space the clients share.
const KEYS: u64 = 1500;

/// The value of `key`: 1 to 192 KiB, its bytes a function of the key.
pub fn value_of(key: &str) -> Vec<u8> {
    let h = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    strata_tests::block_value(h, 1024 * (1 + (h % 192) as usize))
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Failures a chaotic server may cause; anything else is a bug.
fn tolerated(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound
            | ErrorCode::AlreadyExists
            | ErrorCode::Busy
            | ErrorCode::NoSpace
            | ErrorCode::LeaseExpired
            | ErrorCode::Leased
            | ErrorCode::Timeout
            | ErrorCode::Unavailable
            | ErrorCode::Corrupt
    )
}

fn corrupt(key: &str, len: usize) -> ! {
    println!("corrupt {key}: {len} bytes differ from what was put");
    std::process::exit(3);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, transport, seed, seconds] = &args[..] else {
        panic!("usage: e2e-soak-client ADDR CERT TRANSPORT SEED SECONDS");
    };
    let config = ClientConfig {
        server: addr.clone(),
        ca_cert: Some(cert.into()),
        transport: transport.parse().unwrap_or(Transport::Auto),
        connect_timeout: Duration::from_secs(2),
        transfer_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds.parse().expect("seconds"));
    let mut rng = Rng(seed.parse::<u64>().expect("seed") | 1);
    let (mut ops, mut checked, mut failed) = (0u64, 0u64, 0u64);
    let mut client = None;
    while Instant::now() < deadline && ops < 10_000_000 {
        let Some(c) = &client else {
            match Client::connect(config.clone()).await {
                Ok(c) => client = Some(c),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            continue;
        };
        ops += 1;
        let k = rng.next() % KEYS;
        let key = format!("soak-{k}");
        let result = match rng.next() % 20 {
            0..=7 => c
                .put_from(key.as_bytes(), &value_of(&key))
                .await
                .map(|_| ()),
            8..=14 => match c.get(key.as_bytes()).await {
                Ok(v) => {
                    if v[..] != value_of(&key)[..] {
                        corrupt(&key, v.len());
                    }
                    checked += 1;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            15..=17 => {
                // A prefix of 8 keys, then a load of what matched, each checked.
                let groups: Vec<Vec<String>> = (0..8)
                    .map(|i| vec![format!("soak-{}", (k + i) % KEYS)])
                    .collect();
                match c.prefix_len_leased(&groups).await {
                    Ok(m) => {
                        let keys: Vec<&String> = groups[..m.len].iter().flatten().collect();
                        let mut bufs: Vec<Vec<u8>> = vec![vec![0u8; 192 << 10]; keys.len()];
                        let mut slices: Vec<&mut [u8]> =
                            bufs.iter_mut().map(|b| &mut b[..]).collect();
                        let got = c.batch_get_into(&keys, &mut slices).await;
                        for ((key, r), buf) in keys.iter().zip(got).zip(&bufs) {
                            match r {
                                Ok(n) => {
                                    if buf[..n] != value_of(key)[..] {
                                        corrupt(key, n);
                                    }
                                    checked += 1;
                                }
                                Err(e) if tolerated(e.code()) => failed += 1,
                                Err(e) => panic!("{key}: {e}"),
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            _ => c.remove(key.as_bytes(), false).await,
        };
        match result {
            Ok(()) => {}
            Err(e) if tolerated(e.code()) => {
                failed += 1;
                if e.code() == ErrorCode::Unavailable {
                    // The server is away (restarting): connect afresh shortly.
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            Err(e) => panic!("{key}: {e}"),
        }
    }
    println!("ops {ops} checked {checked} failed {failed} corrupt 0");
}
