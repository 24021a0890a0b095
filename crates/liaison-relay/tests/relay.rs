//! End-to-end tests of the relay over real QUIC on 127.0.0.1: framing semantics, the durable
//! queue (restart, SIGKILL, expiry, quotas), the allow list, and hostile input.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use liaison_hop::{HopKey, HopLimits, spki_hash};
use liaison_relay::RelayConfig;
use liaison_wire::hop::{HopFrame, err};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

fn dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_post_reaches_subscriber_else_no_subscriber() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let inbox = rand16();
    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[inbox]).await;
    assert!(sub.sync().await.is_empty());

    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, false, b"hello live").await;
    assert_eq!(
        sub.next().await,
        Got::Deliver {
            inbox,
            envelope_id: [0; 16],
            blob: b"hello live".to_vec()
        }
    );
    let nobody = rand16();
    poster.post(nobody, false, b"into the void").await;
    assert_eq!(
        poster.next().await,
        Got::Err(err::NO_SUBSCRIBER, envelope_id(b"into the void"))
    );
    // a live post is never stored
    let m = relay.scrape().await;
    assert_eq!(metric(&m, "liaison_relay_queued_envelopes"), 0);
    assert_eq!(metric(&m, "liaison_relay_forwarded_total"), 1);
    assert_eq!(metric(&m, "liaison_relay_connections"), 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_offline_delivered_once_acked_and_idempotent() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let inbox = rand16();
    let blob = b"sealed envelope".to_vec();
    let id = envelope_id(&blob);

    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, true, &blob).await;
    assert_eq!(poster.next().await, Got::Ack(id));
    // a re-post after a reconnect is acknowledged and not stored twice
    drop(poster);
    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, true, &blob).await;
    assert_eq!(poster.next().await, Got::Ack(id));
    let m = relay.scrape().await;
    assert_eq!(metric(&m, "liaison_relay_queued_envelopes"), 1);
    assert_eq!(metric(&m, "liaison_relay_stored_total"), 1);
    assert_eq!(metric(&m, "liaison_relay_duplicates_total"), 1);

    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[rand16(), inbox]).await;
    assert_eq!(
        sub.next().await,
        Got::Deliver {
            inbox,
            envelope_id: id,
            blob: blob.clone()
        }
    );
    // an ACK for an inbox this client did not subscribe to deletes nothing
    let mut stranger = Node::connect(&relay).await;
    stranger.ack(id).await;
    relay.handle.store_barrier().await;
    assert_eq!(
        metric(&relay.scrape().await, "liaison_relay_queued_envelopes"),
        1
    );
    sub.ack(id).await;
    assert!(sub.sync().await.is_empty());
    relay
        .wait_metric("liaison_relay_queued_envelopes", |v| v == 0)
        .await;

    // a second subscription gets nothing more
    let mut again = Node::connect(&relay).await;
    again.subscribe(&[inbox]).await;
    assert!(again.sync().await.is_empty());

    // store = 1 with a live subscriber: ACK to the poster and DELIVER with its id
    let blob2 = b"second".to_vec();
    poster.post(inbox, true, &blob2).await;
    assert_eq!(poster.next().await, Got::Ack(envelope_id(&blob2)));
    for s in [&mut sub, &mut again] {
        assert_eq!(
            s.next().await,
            Got::Deliver {
                inbox,
                envelope_id: envelope_id(&blob2),
                blob: blob2.clone()
            }
        );
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_survives_restart_and_shutdown_drains() {
    let tmp = dir();
    let config = test_config(tmp.path());
    let relay = TestRelay::start(config.clone()).await;
    let inbox = rand16();
    let mut poster = Node::connect(&relay).await;
    // pipelined posts; every one the relay acknowledges must survive
    let blobs: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("envelope {i}").into_bytes())
        .collect();
    for b in &blobs {
        poster.post(inbox, true, b).await;
    }
    let mut acked = Vec::new();
    while acked.len() < 10 {
        match poster.next().await {
            Got::Ack(id) => acked.push(id),
            other => panic!("{other:?}"),
        }
    }
    let card_before = relay.ready.card_text.clone();
    relay.stop().await;
    // the poster's connection was closed with SHUTTING_DOWN after the acknowledgements
    loop {
        match poster.next().await {
            Got::Ack(id) => acked.push(id),
            Got::Closed(_) => break,
            other => panic!("{other:?}"),
        }
    }
    poster.assert_closed_with(err::SHUTTING_DOWN).await;

    let mut config2 = config;
    config2.bind = "127.0.0.1:0".parse().unwrap();
    let relay = TestRelay::start(config2).await;
    assert_eq!(
        relay.ready.card.hop_key,
        liaison_relay::verify_relay_card(&card_before)
            .unwrap()
            .hop_key,
        "the key is kept in the home"
    );
    let queued = metric(&relay.scrape().await, "liaison_relay_queued_envelopes");
    assert!(queued >= acked.len() as u64, "{queued} < {}", acked.len());
    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[inbox]).await;
    let delivered: Vec<[u8; 16]> = sub
        .delivers(queued as usize)
        .await
        .into_iter()
        .map(|(_, id, _)| id)
        .collect();
    assert!(sub.sync().await.is_empty(), "nothing more");
    for id in &acked {
        assert!(delivered.contains(id), "an acknowledged envelope was lost");
    }
    // delivered in posting order
    let order: Vec<usize> = delivered
        .iter()
        .map(|id| blobs.iter().position(|b| envelope_id(b) == *id).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelopes_expire_after_ttl() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.ttl = Duration::from_millis(400);
    config.expiry_interval = Duration::from_millis(100);
    let relay = TestRelay::start(config).await;
    let inbox = rand16();
    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, true, b"short-lived").await;
    assert!(matches!(poster.next().await, Got::Ack(_)));
    let deadline = Instant::now() + WAIT;
    loop {
        let m = relay.scrape().await;
        if metric(&m, "liaison_relay_expired_total") == 1 {
            assert_eq!(metric(&m, "liaison_relay_queued_envelopes"), 0);
            break;
        }
        assert!(Instant::now() < deadline, "not expired in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[inbox]).await;
    assert!(sub.sync().await.is_empty());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_refuse_with_clear_errors() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.quotas.inbox_envelopes = 3;
    config.quotas.total_bytes = 10_000;
    config.quotas.max_blob_bytes = 2000;
    let relay = TestRelay::start(config).await;
    let inbox = rand16();
    let mut poster = Node::connect(&relay).await;
    let mut answers = Vec::new();
    for i in 0..6u8 {
        let blob = vec![i; 100];
        poster.post(inbox, true, &blob).await;
        answers.push((envelope_id(&blob), poster.next().await));
    }
    for (i, (id, got)) in answers.iter().enumerate() {
        if i < 3 {
            assert_eq!(*got, Got::Ack(*id));
        } else {
            assert_eq!(*got, Got::Err(err::QUOTA, *id));
        }
    }
    let big = vec![7u8; 3000];
    poster.post(rand16(), true, &big).await;
    assert_eq!(
        poster.next().await,
        Got::Err(err::TOO_LARGE, envelope_id(&big))
    );
    // total bytes: 10 KB across many inboxes, then refusals; the queue never grows past it
    let mut refused = 0;
    for i in 0..20u8 {
        let blob = vec![i; 1500];
        poster.post(rand16(), true, &blob).await;
        match poster.next().await {
            Got::Ack(_) => {}
            Got::Err(err::QUOTA, _) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert!(refused >= 14, "{refused}");
    let m = relay.scrape().await;
    assert!(metric(&m, "liaison_relay_queued_bytes") <= 10_000);
    assert!(m.contains("liaison_relay_rejected_total{reason=\"quota\"} "));
    relay.stop().await;
}

/// On an open relay hop keys cost nothing, so the quota of what one client holds is per
/// address: fresh keys from one address together hold no more than the address's share
/// (refused with `ERR QUOTA`, as a poster over its own quota is), while a client from another
/// address still gets its envelopes held, and acknowledging frees the address's room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_keys_from_one_address_share_its_quota() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.quotas.poster_envelopes = 3;
    config.quotas.address_envelopes = 5;
    let relay = TestRelay::start(config).await;
    let inbox = rand16();
    let (mut held, mut refused) = (Vec::new(), 0);
    let mut posters = Vec::new();
    for k in 0..6u8 {
        // each fresh key stays within its own quota
        let mut n = Node::connect(&relay).await;
        for j in 0..2u8 {
            let blob = vec![k, j, 0x5a];
            n.post(inbox, true, &blob).await;
            match n.next().await {
                Got::Ack(id) => held.push(id),
                Got::Err(err::QUOTA, id) => {
                    assert_eq!(id, envelope_id(&blob));
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        posters.push(n);
    }
    assert_eq!(
        (held.len(), refused),
        (5, 7),
        "keys from one address hold the address quota at most"
    );
    let m = relay.scrape().await;
    assert_eq!(metric(&m, "liaison_relay_queued_envelopes"), 5);

    // another address: its own share
    let mut other = try_connect_from(
        "127.0.0.2:0".parse().unwrap(),
        relay.addr,
        &relay.spki,
        &HopKey::generate().unwrap(),
        &client_limits(),
    )
    .await
    .expect("connect from 127.0.0.2");
    for j in 0..3u8 {
        let blob = vec![0xee, j];
        other.post(inbox, true, &blob).await;
        assert_eq!(other.next().await, Got::Ack(envelope_id(&blob)));
    }

    // the recipient acknowledges one of the first address's envelopes: room for one more
    let mut recipient = Node::connect(&relay).await;
    recipient.subscribe(&[inbox]).await;
    assert_eq!(recipient.delivers(8).await.len(), 8);
    recipient.ack(held[0]).await;
    recipient.sync().await;
    relay.handle.store_barrier().await;
    let blob = b"after an ack".to_vec();
    posters[0].post(inbox, true, &blob).await;
    assert_eq!(posters[0].next().await, Got::Ack(envelope_id(&blob)));
    posters[1].post(inbox, true, b"one too many").await;
    assert_eq!(
        posters[1].next().await,
        Got::Err(err::QUOTA, envelope_id(b"one too many"))
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_list_refuses_and_reload_admits() {
    let tmp = dir();
    let alice = HopKey::generate().unwrap();
    let bob = HopKey::generate().unwrap();
    let allow = tmp.path().join("allow");
    let line = |k: &HopKey| format!("{}\n", hex::encode(spki_hash(&k.spki())));
    std::fs::write(&allow, format!("# operators' list\n{}", line(&alice))).unwrap();
    let mut config = test_config(tmp.path());
    config.allow_file = Some(allow.clone());
    let relay = TestRelay::start(config).await;

    let mut a = Node::connect_key(&relay, &alice).await;
    a.subscribe(&[rand16()]).await;
    a.sync().await;
    let refused = try_connect_with(relay.addr, &relay.spki, &bob, &HopLimits::default())
        .await
        .err()
        .expect("bob is not on the list");
    assert!(refused.is_tls_refusal(), "{refused:?}");

    std::fs::write(&allow, line(&bob)).unwrap();
    let r = relay.handle.reload_allow_list().unwrap();
    assert_eq!(r.entries, Some(1));
    assert_eq!(r.disconnected, 1, "alice is no longer allowed");
    a.assert_closed_with(err::NOT_ALLOWED).await;
    let mut b = Node::connect_key(&relay, &bob).await;
    b.sync().await;

    // a damaged file keeps the list in force
    std::fs::write(&allow, "garbage\n").unwrap();
    assert!(relay.handle.reload_allow_list().is_err());
    b.sync().await;
    assert!(
        try_connect_with(relay.addr, &relay.spki, &alice, &HopLimits::default())
            .await
            .is_err()
    );
    relay.stop().await;
}

/// A small deterministic generator (xorshift64*), so the datagrams are reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, b: &mut [u8]) {
        for chunk in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_datagrams_do_not_take_it_down() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let target = relay.addr;
    let started = Instant::now();
    tokio::task::spawn_blocking(move || {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut buf = [0u8; 1500];
        for i in 0..20_000u32 {
            let len = 1 + (rng.next() % 1500) as usize;
            let d = &mut buf[..len];
            rng.fill(d);
            match i % 4 {
                // QUIC v1 long-header Initial with random connection ids and payload
                0 if len > 7 => {
                    d[0] = 0xc0 | (d[0] & 0x0f);
                    d[1..5].copy_from_slice(&1u32.to_be_bytes());
                    d[5] = 8;
                }
                // short header (1-RTT) packets
                1 => d[0] = 0x40 | (d[0] & 0x3f),
                _ => {}
            }
            let _ = sock.send_to(d, target);
            if i % 2000 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(relay.is_running());

    let inbox = rand16();
    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[inbox]).await;
    sub.sync().await;
    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, false, b"still here").await;
    assert!(matches!(sub.next().await, Got::Deliver { blob, .. } if blob == b"still here"));
    poster.post(inbox, true, b"stored too").await;
    assert!(matches!(poster.next().await, Got::Ack(_)));
    let m = relay.scrape().await;
    assert_eq!(metric(&m, "liaison_relay_connections"), 2);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_get_malformed_and_others_unaffected() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let inbox = rand16();
    let mut sub = Node::connect(&relay).await;
    sub.subscribe(&[inbox]).await;
    sub.sync().await;

    let cases: Vec<Vec<u8>> = vec![
        vec![1, 0, 0, 0, 0x77],                        // unknown type
        vec![2, 0, 0, 0, 0x10, 0],                     // truncated SUBSCRIBE
        vec![0xff, 0xff, 0xff, 0xff, 0x11],            // length over the limit
        vec![0, 0, 0, 0],                              // zero length
        HopFrame::Blob(b"direct-line frame").to_vec(), // valid frame, not a relay request
        HopFrame::Hello { version: 1 }.to_vec(),
    ];
    for bytes in cases {
        let mut bad = Node::connect(&relay).await;
        bad.hop.writer.send_encoded(&bytes).await.unwrap();
        assert_eq!(
            bad.next().await,
            Got::Err(err::MALFORMED, [0; 16]),
            "{bytes:02x?}"
        );
        assert!(matches!(bad.next().await, Got::Closed(_)));
        bad.assert_closed_with(err::MALFORMED).await;
    }
    let mut poster = Node::connect(&relay).await;
    poster.post(inbox, false, b"others are fine").await;
    assert!(matches!(sub.next().await, Got::Deliver { blob, .. } if blob == b"others are fine"));
    let m = relay.scrape().await;
    assert!(
        m.contains("liaison_relay_rejected_total{reason=\"malformed\"} 6\n"),
        "{m}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_frame_times_out() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.frame_timeout = Duration::from_millis(300);
    let relay = TestRelay::start(config).await;
    let mut bad = Node::connect(&relay).await;
    // announces 1,000 bytes, sends 3
    bad.hop
        .writer
        .send_encoded(&[0xe8, 0x03, 0, 0, 0x11, 0, 0])
        .await
        .unwrap();
    assert_eq!(bad.next().await, Got::Err(err::MALFORMED, [0; 16]));
    bad.assert_closed_with(err::MALFORMED).await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscriber_is_disconnected_not_buffered() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.client_queue_bytes = 128 * 1024;
    config.total_queue_bytes = 1 << 20;
    // posters wait this long for a full subscriber before it is dropped
    config.write_timeout = Duration::from_secs(2);
    let relay = TestRelay::start(config).await;
    let inbox = rand16();
    // a subscriber with small windows that never reads
    let small = HopLimits {
        stream_window: 64 * 1024,
        connection_window: 64 * 1024,
        ..HopLimits::default()
    };
    let mut slow = try_connect_with(
        relay.addr,
        &relay.spki,
        &HopKey::generate().unwrap(),
        &small,
    )
    .await
    .unwrap();
    slow.subscribe(&[inbox]).await;
    slow.sync().await;

    let mut poster = Node::connect(&relay).await;
    let blob = vec![0x5a; 60_000];
    let mut peak_outbound = 0;
    let mut no_subscriber = false;
    for _ in 0..400 {
        poster.post(inbox, false, &blob).await;
        if let Some(Got::Err(err::NO_SUBSCRIBER, _)) =
            poster.next_within(Duration::from_millis(1)).await
        {
            no_subscriber = true;
            break;
        }
        let m = relay.handle.metrics();
        peak_outbound =
            peak_outbound.max(m.outbound_bytes.load(std::sync::atomic::Ordering::Relaxed));
    }
    assert!(no_subscriber, "the slow subscriber was never dropped");
    assert!(peak_outbound <= 1 << 20, "{peak_outbound}");
    slow.assert_closed_with(err::QUOTA).await;
    let m = relay.scrape().await;
    assert!(
        m.contains("liaison_relay_dropped_total{reason=\"slow_client\"} 1\n"),
        "{m}"
    );
    relay
        .wait_metric("liaison_relay_outbound_bytes", |v| v == 0)
        .await;
    // the poster is unaffected
    poster.sync().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.max_connections_per_ip = 2;
    let relay = TestRelay::start(config).await;
    let a = Node::connect(&relay).await;
    let _b = Node::connect(&relay).await;
    let limits = HopLimits {
        hello_timeout: Duration::from_secs(3),
        ..HopLimits::default()
    };
    let k = HopKey::generate().unwrap();
    assert!(
        try_connect_with(relay.addr, &relay.spki, &k, &limits)
            .await
            .is_err()
    );
    drop(a);
    relay
        .wait_metric("liaison_relay_connections", |v| v == 1)
        .await;
    let mut c = try_connect_with(relay.addr, &relay.spki, &k, &limits)
        .await
        .expect("a slot is free again");
    c.sync().await;
    let m = relay.scrape().await;
    assert!(
        m.contains("liaison_relay_rejected_total{reason=\"too_many_from_address\"} 1\n"),
        "{m}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_handshake_rate_limit() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.handshake_burst = 3;
    config.handshakes_per_ip_per_sec = 1;
    let relay = TestRelay::start(config).await;
    let limits = HopLimits {
        hello_timeout: Duration::from_secs(2),
        ..HopLimits::default()
    };
    let started = Instant::now();
    let mut ok = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match try_connect_with(
            relay.addr,
            &relay.spki,
            &HopKey::generate().unwrap(),
            &limits,
        )
        .await
        {
            Ok(n) => ok.push(n),
            Err(_) => refused += 1,
        }
    }
    // 3 at once, then 1 per second: within the first 2 s at most 4 get through
    if started.elapsed() < Duration::from_secs(2) {
        assert!(
            ok.len() <= 4 && refused >= 1,
            "{} ok, {refused} refused",
            ok.len()
        );
    }
    assert!(ok.len() >= 3, "the burst is admitted");
    let m = relay.scrape().await;
    assert!(
        metric_labelled(&m, "liaison_relay_rejected_total{reason=\"rate_limited\"}") == refused,
        "{m}"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_name_nothing_personal() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let inbox = rand16();
    let mut n = Node::connect(&relay).await;
    n.subscribe(&[inbox]).await;
    n.post(inbox, true, b"x").await;
    n.sync().await;
    let m = relay.scrape().await;
    for name in [
        "liaison_relay_connections",
        "liaison_relay_connections_total",
        "liaison_relay_handshakes",
        "liaison_relay_subscriptions",
        "liaison_relay_queued_envelopes",
        "liaison_relay_queued_bytes",
        "liaison_relay_outbound_bytes",
        "liaison_relay_forwarded_total",
        "liaison_relay_stored_total",
        "liaison_relay_duplicates_total",
        "liaison_relay_delivered_total",
        "liaison_relay_acked_total",
        "liaison_relay_expired_total",
        "liaison_relay_store_commits_total",
        "liaison_relay_store_committed_ops_total",
    ] {
        metric(&m, name);
    }
    assert_eq!(metric(&m, "liaison_relay_subscriptions"), 1);
    let lower = m.to_lowercase();
    for secret in [
        hex::encode(inbox),
        hex::encode(spki_hash(&n.key.spki())),
        hex::encode(&spki_hash(&n.key.spki())[..8]),
        "127.0.0.1".to_string(),
    ] {
        assert!(!lower.contains(&secret), "metrics leak {secret}");
    }
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_stores_thousands_per_second() {
    let tmp = dir();
    let relay = TestRelay::start(test_config(tmp.path())).await;
    let n = 3000usize;
    let mut posters = Vec::new();
    for _ in 0..4 {
        posters.push(Node::connect(&relay).await);
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (p, node) in posters.into_iter().enumerate() {
        tasks.spawn(async move {
            let inbox = rand16();
            let mut acks = 0;
            let per = n / 4;
            let (mut r, mut w) = (node.hop.reader, node.hop.writer);
            let writer = tokio::spawn(async move {
                for i in 0..per {
                    let blob = format!("poster {p} envelope {i} {}", "x".repeat(900)).into_bytes();
                    w.send(&HopFrame::Post {
                        dst: inbox,
                        store: true,
                        blob: &blob,
                    })
                    .await
                    .unwrap();
                }
                w
            });
            while acks < per {
                match tokio::time::timeout(Duration::from_secs(60), r.next()).await {
                    Ok(Ok(Some(HopFrame::Ack { .. }))) => acks += 1,
                    other => panic!("{other:?}"),
                }
            }
            let _w = writer.await.unwrap();
            drop((r, node.endpoint));
            acks
        });
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let m = relay.scrape().await;
    let commits = metric(&m, "liaison_relay_store_commits_total");
    eprintln!(
        "stored {total} envelopes in {secs:.2} s ({:.0}/s) with {commits} commits",
        total as f64 / secs
    );
    assert_eq!(total, n);
    assert_eq!(metric(&m, "liaison_relay_queued_envelopes"), n as u64);
    assert!(
        commits < n as u64 / 2,
        "group commit batches posts: {commits} commits"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unspecified_public_address_is_refused() {
    let tmp = dir();
    let mut config = RelayConfig::new(tmp.path().join("home"), "0.0.0.0:0".parse().unwrap());
    let r = liaison_relay::serve(
        config.clone(),
        tokio_util::sync::CancellationToken::new(),
        |_| {},
    )
    .await;
    assert!(
        r.unwrap_err().to_string().contains("--public-addr"),
        "refused with a clear error"
    );
    config.public_addr = Some("0.0.0.0:4433".into());
    assert!(
        liaison_relay::serve(config, tokio_util::sync::CancellationToken::new(), |_| {})
            .await
            .is_err()
    );
}

// ---- the relay in a child process, killed with SIGKILL ----

const CHILD_ENV: &str = "LIAISON_RELAY_TEST_CHILD_DIR";

/// Not a test: the body of the child relay process started by `queue_survives_sigkill`
/// (it re-runs this test binary with only this function selected).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by queue_survives_sigkill in a child process"]
async fn child_relay_process() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let config = test_config(std::path::Path::new(&dir));
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = liaison_relay::serve(config, stop.clone(), |r| {
        println!("RELAY-READY {} {}", r.addr, hex::encode(r.card.hop_key));
    });
    // never outlive the test that started us by much
    let _ = tokio::time::timeout(Duration::from_secs(60), serving).await;
}

/// A child process, killed by pid when dropped.
struct ChildRelay {
    child: Child,
    addr: std::net::SocketAddr,
    spki: [u8; 44],
}

impl ChildRelay {
    fn start(dir: &std::path::Path) -> ChildRelay {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "child_relay_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may print `test child_relay_process ... ` on the same line first
                if let Some(at) = line.find("RELAY-READY ") {
                    let _ = tx.send(line[at + "RELAY-READY ".len()..].trim().to_string());
                }
            }
        });
        let mut guard = ChildRelay {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            spki: [0; 44],
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child relay ready in time");
        let (addr, key) = line.split_once(' ').unwrap();
        guard.addr = addr.parse().unwrap();
        let key: [u8; 32] = hex::decode(key).unwrap().try_into().unwrap();
        guard.spki = liaison_hop::ed25519_spki(&key);
        guard
    }

    fn sigkill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        self.wait();
    }

    fn wait(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("child relay did not exit");
    }
}

impl Drop for ChildRelay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_survives_sigkill() {
    let tmp = dir();
    let mut child = ChildRelay::start(tmp.path());
    let inbox = rand16();
    let key = HopKey::generate().unwrap();
    let limits = HopLimits::default();
    let mut poster = try_connect_with(child.addr, &child.spki, &key, &limits)
        .await
        .unwrap();
    let blobs: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 500 + usize::from(i)]).collect();
    for b in &blobs {
        poster.post(inbox, true, b).await;
    }
    for b in &blobs {
        assert_eq!(poster.next().await, Got::Ack(envelope_id(b)));
    }
    let spki_before = child.spki;
    child.sigkill();
    drop(poster);

    let child = ChildRelay::start(tmp.path());
    assert_eq!(child.spki, spki_before, "same key after the crash");
    let mut sub = try_connect_with(child.addr, &child.spki, &key, &limits)
        .await
        .unwrap();
    sub.subscribe(&[inbox]).await;
    let got = sub.delivers(blobs.len()).await;
    let want: Vec<_> = blobs
        .iter()
        .map(|b| (inbox, envelope_id(b), b.clone()))
        .collect();
    assert_eq!(got, want, "every acknowledged envelope survived SIGKILL");
    assert!(sub.sync().await.is_empty(), "nothing more");
    drop(child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_bounds_evict_oldest() {
    let tmp = dir();
    let mut config = test_config(tmp.path());
    config.max_subscriptions_per_client = 1024;
    config.max_subscribers_per_inbox = 2;
    let relay = TestRelay::start(config).await;
    let ids: Vec<[u8; 16]> = (0..1024).map(|_| rand16()).collect();
    let mut a = Node::connect(&relay).await;
    a.subscribe(&ids).await;
    let extra = rand16();
    a.subscribe(&[extra]).await;
    a.sync().await;
    let mut poster = Node::connect(&relay).await;
    // the least recently subscribed id made room
    poster.post(ids[0], false, b"zero").await;
    assert!(matches!(
        poster.next().await,
        Got::Err(err::NO_SUBSCRIBER, _)
    ));
    for (inbox, blob) in [(ids[1], b"one"), (extra, b"new")] {
        poster.post(inbox, false, blob).await;
        assert!(matches!(a.next().await, Got::Deliver { blob: b, .. } if b == blob));
    }
    // re-subscribing refreshes: ids[1] stays, ids[2] goes
    a.subscribe(&[ids[1]]).await;
    a.subscribe(&[rand16()]).await;
    a.sync().await;
    poster.post(ids[2], false, b"two").await;
    assert!(matches!(
        poster.next().await,
        Got::Err(err::NO_SUBSCRIBER, _)
    ));
    poster.post(ids[1], false, b"one again").await;
    assert!(matches!(a.next().await, Got::Deliver { blob, .. } if blob == b"one again"));

    // at most two live subscribers per inbox: the oldest is displaced
    let x = rand16();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = Node::connect(&relay).await;
        s.subscribe(&[x]).await;
        s.sync().await;
        subs.push(s);
    }
    poster.post(x, false, b"to the newest two").await;
    for s in subs.iter_mut().skip(1) {
        assert!(matches!(s.next().await, Got::Deliver { .. }));
    }
    assert!(
        subs[0].sync().await.is_empty(),
        "the displaced subscriber got nothing"
    );
    assert_eq!(
        metric(&relay.scrape().await, "liaison_relay_subscriptions"),
        1024 + 2
    );
    relay.stop().await;
}

#[derive(Debug)]
struct Anyone;
impl liaison_hop::ClientPins for Anyone {
    fn allows(&self, _: &[u8]) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_on_a_callers_endpoint_still_enforces_the_allow_list() {
    let tmp = dir();
    let alice = HopKey::generate().unwrap();
    let bob = HopKey::generate().unwrap();
    let allow = tmp.path().join("allow");
    std::fs::write(&allow, hex::encode(spki_hash(&alice.spki()))).unwrap();
    let mut config = test_config(tmp.path());
    config.allow_file = Some(allow);
    config.metrics_addr = None;
    let relay_key = HopKey::generate().unwrap();
    // an endpoint whose TLS admits anyone: the relay checks the list after the handshake
    let server = liaison_hop::server_config(
        &relay_key,
        std::sync::Arc::new(Anyone),
        &liaison_relay::relay_hop_limits(),
    )
    .unwrap();
    let ep = liaison_hop::server_endpoint("127.0.0.1:0".parse().unwrap(), server).unwrap();
    let addr = ep.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(liaison_relay::run(ep, config, stop.clone()));
    let limits = HopLimits::default();
    let mut a = try_connect_with(addr, &relay_key.spki(), &alice, &limits)
        .await
        .unwrap();
    a.sync().await;
    let refused = try_connect_with(addr, &relay_key.spki(), &bob, &limits).await;
    assert!(refused.is_err(), "bob never gets READY");
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    a.assert_closed_with(err::SHUTTING_DOWN).await;
}

/// Issue 9, defect 11 (in part): a `POST` of 66,640 bytes (larger than any blob, but framed
/// correctly) got `ERR MALFORMED` and lost its connection, though docs/relay.md says
/// `TOO_LARGE`. It gets `ERR TOO_LARGE` naming the blob, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_post_is_too_large_and_the_connection_stays() {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start(test_config(dir.path())).await;
    let mut poster = Node::connect(&relay).await;
    let big = vec![5u8; 66_640];
    for store in [true, false] {
        poster.post(rand16(), store, &big).await;
        assert_eq!(
            poster.next().await,
            Got::Err(err::TOO_LARGE, envelope_id(&big)),
            "store = {store}"
        );
    }
    // still connected: a normal post is stored
    let small = vec![6u8; 100];
    poster.post(rand16(), true, &small).await;
    assert_eq!(poster.next().await, Got::Ack(envelope_id(&small)));
    let m = relay.scrape().await;
    assert!(
        metric_labelled(&m, "liaison_relay_rejected_total{reason=\"too_large\"}") >= 2,
        "{m}"
    );
    relay.stop().await;
}
