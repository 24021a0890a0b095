//! Nothing leaves a node, and nothing is acknowledged, that its audit log does not hold: two
//! real nodes over QUIC on 127.0.0.1, with a trigger in one side's database that makes every
//! audit append fail (as a full disk or an I/O error would), then dropped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{TestNode, make, pin, text};
use ed25519_dalek::VerifyingKey;
use liaison_audit::AuditReader;
use liaison_node::node::{NodeError, NodeEvent};
use std::time::{Duration, Instant};
use tokio::sync::broadcast::Receiver;

/// The texts of messages that arrive within `within`.
async fn messages(rx: &mut Receiver<NodeEvent>, within: Duration) -> Vec<String> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Message { text, .. })) => out.push(text.unwrap_or_default()),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    out
}

/// Waits until `n` delivery receipts arrived (or `within` passed); returns how many did.
async fn delivered(rx: &mut Receiver<NodeEvent>, n: usize, within: Duration) -> usize {
    let end = Instant::now() + within;
    let mut got = 0;
    while got < n {
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            break;
        };
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(NodeEvent::Delivered { .. })) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => break,
        }
    }
    got
}

/// Makes every audit append in the database at `path` fail until released (the outbox and
/// inbox still work).
struct Refusal(rusqlite::Connection);

fn refuse_audit_writes(path: &std::path::Path) -> Refusal {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(
        "CREATE TRIGGER test_refuse BEFORE INSERT ON audit_entries
         BEGIN SELECT RAISE(ABORT, 'audit appends refused by the test'); END;",
    )
    .unwrap();
    Refusal(c)
}

impl Refusal {
    fn release(self) {
        self.0.execute_batch("DROP TRIGGER test_refuse").unwrap();
    }
}

/// Two nodes with a line from alice to bob up and one message delivered.
async fn pair() -> (TestNode, TestNode, Receiver<NodeEvent>, Receiver<NodeEvent>) {
    let alice = make("alice");
    let bob = make("bob");
    let addr = bob
        .node
        .listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    pin(&bob, "alice", &alice, None).await;
    pin(&alice, "bob", &bob, Some(addr.to_string())).await;
    // bob's listener learns alice's key within its refresh period
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bob_rx = bob.node.subscribe();
    let mut alice_rx = alice.node.subscribe();
    alice.node.submit("bob", vec![text("m1")]).await.unwrap();
    alice.node.connect("bob", None).await.unwrap();
    assert_eq!(
        messages(&mut bob_rx, Duration::from_secs(3)).await,
        ["m1"],
        "the line works"
    );
    assert_eq!(
        delivered(&mut alice_rx, 1, Duration::from_secs(10)).await,
        1
    );
    (alice, bob, alice_rx, bob_rx)
}

/// Both logs verify and cross-check (every receipt matched by a `msg_sent`, and so on).
fn cross_check(a: &TestNode, b: &TestNode) -> liaison_audit::CheckReport {
    let ka = VerifyingKey::from_bytes(&a.id).unwrap();
    let kb = VerifyingKey::from_bytes(&b.id).unwrap();
    let channel = liaison_audit::keys::channel_id(&ka, &kb);
    let now = u64::MAX / 4;
    let ba = AuditReader::open(&a.db())
        .unwrap()
        .bundle(&channel, None, now)
        .unwrap();
    let bb = AuditReader::open(&b.db())
        .unwrap()
        .bundle(&channel, None, now)
        .unwrap();
    liaison_audit::check::check(&[ba, bb]).expect("the two logs cross-check")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_audit_log_cannot_record_does_not_leave() {
    let (alice, bob, mut alice_rx, mut bob_rx) = pair().await;

    let held = refuse_audit_writes(&alice.db());
    match alice.node.submit("bob", vec![text("m2")]).await {
        Err(NodeError::Unlogged { contact, seqs, .. }) => {
            assert_eq!(contact, "bob");
            assert_eq!(seqs, [2], "stored as bob:2");
        }
        other => panic!("a send the audit log cannot record must fail, got {other:?}"),
    }
    assert!(
        messages(&mut bob_rx, Duration::from_secs(3))
            .await
            .is_empty(),
        "nothing leaves the node while its audit log cannot record it"
    );
    held.release();

    // the next line logs the held message first, then sends it, in order, once
    alice.node.submit("bob", vec![text("m3")]).await.unwrap();
    alice.node.connect("bob", None).await.unwrap();
    let got = messages(&mut bob_rx, Duration::from_secs(8)).await;
    assert_eq!(
        got,
        ["m2", "m3"],
        "the held message goes out once it is logged"
    );
    assert_eq!(
        delivered(&mut alice_rx, 2, Duration::from_secs(10)).await,
        2
    );
    alice.node.shutdown().await;
    bob.node.shutdown().await;
    let r = cross_check(&alice, &bob);
    assert_eq!(
        r.cross.as_ref().map(|c| c.acked_messages_matched),
        Some(3),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_audit_log_cannot_record_is_not_acknowledged() {
    let (alice, bob, mut alice_rx, mut bob_rx) = pair().await;

    let held = refuse_audit_writes(&bob.db());
    alice.node.submit("bob", vec![text("m2")]).await.unwrap();
    // bob's audit append fails: no ACK, no message
    assert_eq!(
        delivered(&mut alice_rx, 1, Duration::from_secs(8)).await,
        0,
        "no receipt for a message the receiver's audit log does not hold"
    );
    assert!(
        messages(&mut bob_rx, Duration::from_millis(10))
            .await
            .is_empty(),
        "not shown to the user either"
    );
    held.release();
    // the sender sends again; the receiver logs, stores and acknowledges it, once
    let got = messages(&mut bob_rx, Duration::from_secs(20)).await;
    assert_eq!(got, ["m2"]);
    assert_eq!(
        delivered(&mut alice_rx, 1, Duration::from_secs(10)).await,
        1
    );
    alice.node.shutdown().await;
    bob.node.shutdown().await;
    let r = cross_check(&alice, &bob);
    assert_eq!(
        r.cross.as_ref().map(|c| c.acked_messages_matched),
        Some(2),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_between_the_outbox_and_the_audit_log_is_repaired_before_sending() {
    let (mut alice, bob, _, mut bob_rx) = pair().await;

    // bob:2 is in the outbox and its msg_sent never reaches the audit log: the node stops
    // while the log refuses appends (as a crash between the two commits would leave it)
    let held = refuse_audit_writes(&alice.db());
    assert!(matches!(
        alice.node.submit("bob", vec![text("m2")]).await,
        Err(NodeError::Unlogged { .. })
    ));
    alice.restart().await;
    held.release();

    let mut alice_rx = alice.node.subscribe();
    alice.node.connect("bob", None).await.unwrap();
    assert_eq!(messages(&mut bob_rx, Duration::from_secs(6)).await, ["m2"]);
    assert_eq!(
        delivered(&mut alice_rx, 1, Duration::from_secs(10)).await,
        1
    );
    alice.node.shutdown().await;
    bob.node.shutdown().await;
    let r = cross_check(&alice, &bob);
    assert_eq!(
        r.cross.as_ref().map(|c| c.acked_messages_matched),
        Some(2),
        "{r:?}"
    );
}
