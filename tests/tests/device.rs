//! End to end, the device tier: a real server process with a host-sim device tier, a
//! same-host client moving bytes by device copies, demotion to dram under watermark
//! pressure, and segments contributed by another process (a `strata mount-segment` child)
//! that is then stopped gracefully or killed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use strata_client::device::{Backend, DeviceMemory};
use strata_client::{Client, ClientConfig, MemoryKind, Placement, Transport};
use strata_tests::{block_value, cli_binary, eventually, ServerProcess};

const MIB: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tier_puts_gets_and_demotes_under_pressure() {
    let server = ServerProcess::start(&["--device-capacity", "16MiB"]);
    let client = Client::connect(server.client_config()).await.unwrap();
    let info = client.server_info().await.unwrap();
    let offer = info
        .device
        .expect("the default server has a host-sim device tier");
    assert_eq!((offer.tier, offer.backend.as_str()), (0, "host-sim"));

    // 6 x 4 MiB into a 16 MiB tier: the first land on the device, the tier passes its
    // watermark, maintenance demotes the least recently used to dram.
    let values: Vec<Vec<u8>> = (0..6).map(|i| block_value(i, 4 * MIB)).collect();
    for (i, v) in values.iter().enumerate() {
        client
            .put_from(format!("d{i}").as_bytes(), v)
            .await
            .unwrap();
    }
    let t = client.transport_stats();
    assert!(
        t.device_puts >= 3,
        "puts into the device tier go by device copy: {t:?}"
    );
    let under_watermark = eventually(Duration::from_secs(10), || async {
        let stats = client.stats().await.unwrap();
        stats.demotions >= 1 && stats.tiers[0].used <= 16 * MIB as u64 * 9 / 10
    });
    assert!(
        under_watermark.await,
        "the device tier was never brought under its watermark: {:?}",
        client.stats().await.unwrap()
    );
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.tiers[0].kind, "device");
    assert!(stats.tiers[1].objects >= 1, "demoted objects are in dram");

    // Every value intact wherever it is, through the device/shm client and over QUIC.
    let quic = Client::connect(ClientConfig {
        transport: Transport::Quic,
        ..server.client_config()
    })
    .await
    .unwrap();
    for (i, v) in values.iter().enumerate() {
        let key = format!("d{i}");
        assert!(
            client.get(key.as_bytes()).await.unwrap() == v[..],
            "{key} via direct"
        );
        assert!(
            quic.get(key.as_bytes()).await.unwrap() == v[..],
            "{key} via quic"
        );
    }
    let t = client.transport_stats();
    assert!(t.device_gets >= 1 && t.shm_gets >= 1, "{t:?}");

    // Registered buffers: a device buffer gets the value device-to-device, a host one
    // device-to-host; a device buffer is put from directly.
    let device = Backend::HostSim.open(0).unwrap();
    let dev_buf = DeviceMemory::alloc(&device, 8 * MIB as u64).unwrap();
    let mut host_buf = vec![0u8; 8 * MIB];
    // SAFETY: both regions live until the end of the test and nothing else touches them.
    let (dev_id, host_id) = unsafe {
        (
            client
                .register_buffer(dev_buf.ptr() as usize, 8 * MIB, MemoryKind::Device)
                .unwrap(),
            client
                .register_buffer(host_buf.as_mut_ptr() as usize, 8 * MIB, MemoryKind::Host)
                .unwrap(),
        )
    };
    let fresh = block_value(99, MIB);
    client
        .put_placed(b"fresh", &fresh, Placement::Device)
        .await
        .unwrap();
    let n = client
        .get_into_buffer(b"fresh", dev_id, 4096)
        .await
        .unwrap();
    assert_eq!(n, MIB);
    let mut back = vec![0u8; MIB];
    dev_buf.read(4096, &mut back).unwrap();
    assert!(
        back == fresh,
        "device-to-device copy into the registered buffer"
    );
    client.get_into_buffer(b"fresh", host_id, 0).await.unwrap();
    assert!(host_buf[..MIB] == fresh[..]);
    client
        .put_from_buffer(b"from-device", dev_id, 4096, MIB)
        .await
        .unwrap();
    assert!(quic.get(b"from-device").await.unwrap() == fresh[..]);
    let e = client
        .get_into_buffer(b"fresh", dev_id, 8 * MIB - 10)
        .await
        .unwrap_err();
    assert_eq!(e.code(), strata_client::ErrorCode::InvalidArgument);

    // A batch into the device buffer, as an engine loads a prefix into its pool: every
    // value at its own offset, a missing key failing alone, a value on another tier
    // (dram) still arriving, one that does not fit refused alone.
    let blocks: Vec<Vec<u8>> = (0..4).map(|i| block_value(200 + i, MIB / 2)).collect();
    for (i, b) in blocks.iter().enumerate() {
        let placement = if i == 3 {
            Placement::Dram
        } else {
            Placement::Device
        };
        client
            .put_placed(format!("batch{i}").as_bytes(), b, placement)
            .await
            .unwrap();
    }
    let before = client.transport_stats().device_gets;
    let keys = ["batch0", "batch1", "missing", "batch2", "batch3", "batch0"];
    let offsets = [0, MIB / 2, MIB, 3 * MIB / 2, 2 * MIB, 8 * MIB - 10];
    let got = client.batch_get_into_buffer(&keys, dev_id, &offsets).await;
    let codes: Vec<_> = got
        .iter()
        .map(|r| r.as_ref().map_err(|e| e.code()))
        .collect();
    use strata_client::ErrorCode::{InvalidArgument, NotFound};
    assert_eq!(
        codes,
        vec![
            Ok(&(MIB / 2)),
            Ok(&(MIB / 2)),
            Err(NotFound),
            Ok(&(MIB / 2)),
            Ok(&(MIB / 2)),
            Err(InvalidArgument)
        ]
    );
    for (i, at) in [(0, 0), (1, MIB / 2), (2, 3 * MIB / 2), (3, 2 * MIB)] {
        let mut back = vec![0u8; MIB / 2];
        dev_buf.read(at as u64, &mut back).unwrap();
        assert!(back == blocks[i], "batch{i} at {at}");
    }
    // Copies may run side by side: a value overlapping another's range is refused.
    let got = client
        .batch_get_into_buffer(&["batch1", "batch0"], dev_id, &[4096, 0])
        .await;
    assert_eq!(got[1].as_ref().ok(), Some(&(MIB / 2)));
    assert_eq!(
        got[0].as_ref().unwrap_err().code(),
        InvalidArgument,
        "{got:?}"
    );
    // This server's device tier is under pressure, so maintenance may have demoted some
    // of them to dram by then (they then come through get_into_buffer, as batch3 does).
    // On a busy machine it may have demoted all three before the read: then none may
    // still be on the device tier.
    if client.transport_stats().device_gets == before {
        let still = client.get_locations(&["batch0", "batch1", "batch2"]).await;
        for (i, l) in still.iter().enumerate() {
            if let Ok(l) = l {
                assert_ne!(
                    l.location.tier, offer.tier,
                    "batch{i} is on the device tier, yet no value came by the module's copy"
                );
            }
        }
    }
}

/// A `strata mount-segment` child: the second process, contributing device memory.
struct Owner {
    child: Child,
    /// Kept open: the child reports its unmount here.
    stdout: BufReader<std::process::ChildStdout>,
    segment: u32,
}

fn mount_owner(server: &ServerProcess, size: &str) -> Owner {
    let mut child = Command::new(cli_binary())
        .args(["--server", &server.addr.to_string()])
        .arg("--ca")
        .arg(&server.cert)
        .args(["mount-segment", size])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning strata mount-segment");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let segment = line
        .strip_prefix("mounted segment ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output of mount-segment: {line:?}"));
    Owner {
        child,
        stdout,
        segment,
    }
}

async fn put_into_segment(client: &Client, prefix: &str, segment: u32, n: u64) -> Vec<Vec<u8>> {
    let mut values = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}{i}");
        let v = block_value(1000 + i, 2 * MIB + i as usize);
        client
            .put_placed(key.as_bytes(), &v, Placement::Device)
            .await
            .unwrap();
        let lease = client
            .get_locations(&[key.as_bytes()])
            .await
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(
            (lease.location.tier, lease.location.segment),
            (0, segment),
            "the only device segment is the contributed one"
        );
        values.push(v);
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contributed_segment_serves_a_third_process_until_its_owner_stops() {
    let server = ServerProcess::start(&[
        "--device-capacity",
        "0",
        "--segment-heartbeat-timeout",
        "1500",
        // Short leases: a graceful unmount waits for the leases on its objects.
        "--default-kv-lease-ttl",
        "500",
    ]);
    let client = Client::connect(server.client_config()).await.unwrap();
    let dram = block_value(7, MIB);
    client
        .put_placed(b"in-dram", &dram, Placement::Dram)
        .await
        .unwrap();

    // Graceful: SIGTERM makes the owner unmount; its objects move to dram.
    let mut owner = mount_owner(&server, "16MiB");
    let values = put_into_segment(&client, "g", owner.segment, 3).await;
    for (i, v) in values.iter().enumerate() {
        assert!(client.get(format!("g{i}").as_bytes()).await.unwrap() == v[..]);
    }
    assert!(client.transport_stats().device_gets >= 3);
    let pid = owner.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut report = String::new();
    owner.stdout.read_line(&mut report).unwrap();
    assert_eq!(
        report.trim(),
        "unmounted: 3 objects moved to dram, 0 dropped"
    );
    let status = owner.child.wait().unwrap();
    assert!(
        status.success(),
        "mount-segment exits cleanly after unmounting: {status}"
    );
    for (i, v) in values.iter().enumerate() {
        let key = format!("g{i}");
        let lease = client
            .get_locations(&[key.as_bytes()])
            .await
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(lease.location.tier, 1, "{key} moved to dram");
        assert!(client.get(key.as_bytes()).await.unwrap() == v[..]);
    }

    // Killed: heart-beats stop, the server drops the segment with its objects only.
    let mut owner = mount_owner(&server, "16MiB");
    assert_ne!(owner.segment, 0, "segment numbers are not reused");
    put_into_segment(&client, "k", owner.segment, 3).await;
    owner.child.kill().unwrap();
    owner.child.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            client.stats().await.unwrap().unmounted_objects == 3
        })
        .await,
        "the silent owner's segment was never dropped"
    );
    for i in 0..3 {
        let key = format!("k{i}");
        assert!(
            !client.exists(key.as_bytes()).await.unwrap(),
            "{key} disappeared"
        );
        let e = client.get(key.as_bytes()).await.unwrap_err();
        assert_eq!(e.code(), strata_client::ErrorCode::NotFound, "{e}");
    }
    // Nothing else was lost and the server still serves.
    assert!(client.get(b"in-dram").await.unwrap() == dram[..]);
    for (i, v) in values.iter().enumerate() {
        assert!(client.get(format!("g{i}").as_bytes()).await.unwrap() == v[..]);
    }
    client.ping().await.unwrap();
    let stats = client.stats().await.unwrap();
    assert_eq!(stats.tiers[0].capacity, 0, "no device segment left");
}
