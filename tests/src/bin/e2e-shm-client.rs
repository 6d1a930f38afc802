//! A same-host client process for the shared-memory end-to-end tests, which need a client
//! they can kill or whose mappings they can inspect from outside the test process.
//!
//! `e2e-shm-client ADDR CERT hold`: stores `committed`, reserves 8 MiB for `torn` the way a
//! shared-memory put does (put_start, nothing committed), prints `reserved`, and waits to
//! be killed.
//!
//! `e2e-shm-client ADDR CERT unmap`: prints `mapped N` (segments of the server mapped here
//! while connected), closes the client, and prints `mapped N` again.

use std::time::Duration;

use strata_client::{Client, ClientConfig, Transport};

fn mapped_segments() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .expect("reading /proc/self/maps")
        .lines()
        .filter(|l| l.contains("strata-dram"))
        .count()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, addr, cert, mode] = &args[..] else {
        panic!("usage: e2e-shm-client ADDR CERT hold|unmap");
    };
    let config = ClientConfig {
        server: addr.clone(),
        ca_cert: Some(cert.into()),
        transport: Transport::Shm,
        ..ClientConfig::default()
    };
    let client = Client::connect(config).await.expect("connect through shm");
    assert_eq!(client.transport().await.unwrap(), Transport::Shm);
    match mode.as_str() {
        "hold" => {
            client
                .put_from(b"committed", &strata_tests::block_value(1, 1 << 20))
                .await
                .expect("put");
            client.put_start(b"torn", 8 << 20).await.expect("put_start");
            println!("reserved");
            // The test kills this process; never outlive it for long.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        "unmap" => {
            client
                .put_from(b"unmap", &strata_tests::block_value(2, 4096))
                .await
                .expect("put");
            println!("mapped {}", mapped_segments());
            client.close().await;
            drop(client);
            // The background prefault thread lets go of the mappings within one step.
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while mapped_segments() > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            println!("mapped {}", mapped_segments());
        }
        other => panic!("unknown mode {other}"),
    }
}
