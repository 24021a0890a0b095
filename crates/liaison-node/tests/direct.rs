//! Two real nodes in one process over QUIC on 127.0.0.1: a direct line end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{make, make_with, pin, text};
use liaison_node::node::{NodeAdmission, NodeEvent, NodeOptions};
use std::time::Duration;

async fn next_message(rx: &mut tokio::sync::broadcast::Receiver<NodeEvent>) -> NodeEvent {
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("timed out")
            .unwrap();
        if matches!(ev, NodeEvent::Message { .. }) {
            return ev;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_both_ways_over_real_quic() {
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
    let seqs = alice
        .node
        .submit("bob", (0..20).map(|i| text(&format!("m{i}"))).collect())
        .await
        .unwrap();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    alice.node.connect("bob", None).await.unwrap();
    for i in 0..20 {
        match next_message(&mut bob_rx).await {
            NodeEvent::Message {
                from, seq, text, ..
            } => {
                assert_eq!(from, "alice");
                assert_eq!(seq, i + 1);
                assert_eq!(text.unwrap(), format!("m{i}"));
            }
            _ => unreachable!(),
        }
    }
    // receipts come back
    let mut delivered = 0;
    while delivered < 20 {
        if let NodeEvent::Delivered { .. } =
            tokio::time::timeout(Duration::from_secs(20), alice_rx.recv())
                .await
                .unwrap()
                .unwrap()
        {
            delivered += 1;
        }
    }
    // and bob can answer on the same line
    bob.node.submit("alice", vec![text("reply")]).await.unwrap();
    match next_message(&mut alice_rx).await {
        NodeEvent::Message { from, text, .. } => {
            assert_eq!(from, "bob");
            assert_eq!(text.unwrap(), "reply");
        }
        _ => unreachable!(),
    }
    alice.node.shutdown().await;
    bob.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpinned_caller_is_refused() {
    let alice = make("alice");
    let bob = make("bob");
    let addr = bob
        .node
        .listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // bob never pinned alice
    pin(&alice, "bob", &bob, Some(addr.to_string())).await;
    let mut rx = alice.node.subscribe();
    alice.node.connect("bob", None).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap()
        {
            NodeEvent::DialFailed { refused, .. } => {
                assert!(refused);
                break;
            }
            NodeEvent::LineUp { .. } => panic!("line came up"),
            _ => {}
        }
    }
    alice.node.shutdown().await;
    bob.node.shutdown().await;
}

/// A flood of connection attempts from one address (a stranger's handshakes, all at once) is
/// refused at admission, before any TLS work or task for it, once it passes the node's
/// per-address limits; a pinned contact calling from another address still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_and_a_contact_still_calls() {
    const FLOOD: usize = 128;
    let alice = make("alice");
    let bob = make("bob");
    let addr = bob
        .node
        .listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    pin(&bob, "alice", &alice, None).await;
    pin(&alice, "bob", &bob, Some(addr.to_string())).await;

    // the flood comes from 127.0.0.2, alice calls from 127.0.0.1
    let flood = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let stranger = liaison_hop::HopKey::generate().unwrap();
    let bob_spki = liaison_hop::ed25519_spki(&bob.hop);
    let limits = liaison_hop::HopLimits::default();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..FLOOD {
        let cfg = liaison_hop::client_config(&stranger, &bob_spki, &limits).unwrap();
        let connecting = flood
            .connect_with(cfg, addr, liaison_wire::consts::HOP_SERVER_NAME)
            .unwrap();
        attempts.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(30), connecting).await {
                Ok(Err(quinn::ConnectionError::ConnectionClosed(c))) => {
                    c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
                }
                Ok(Ok(conn)) => {
                    // admitted: the TLS refusal of the stranger's key follows
                    let _ = tokio::time::timeout(Duration::from_secs(30), conn.closed()).await;
                    false
                }
                _ => false,
            }
        });
    }
    let mut refused = 0;
    while let Some(r) = attempts.join_next().await {
        if r.unwrap() {
            refused += 1;
        }
    }
    assert!(
        refused >= FLOOD / 2,
        "only {refused} of {FLOOD} attempts from one address were refused at admission"
    );
    assert!(refused < FLOOD, "the first attempts are admitted");

    // the listener learns alice's key within its refresh period
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut bob_rx = bob.node.subscribe();
    alice
        .node
        .submit("bob", vec![text("still here")])
        .await
        .unwrap();
    alice.node.connect("bob", None).await.unwrap();
    match next_message(&mut bob_rx).await {
        NodeEvent::Message { from, text, .. } => {
            assert_eq!(from, "alice");
            assert_eq!(text.unwrap(), "still here");
        }
        _ => unreachable!(),
    }
    flood.close(0u32.into(), b"");
    alice.node.shutdown().await;
    bob.node.shutdown().await;
}

/// True if a connection attempt was refused at admission (QUIC `CONNECTION_REFUSED`).
fn refused_at_admission(r: &Result<quinn::Connection, quinn::ConnectionError>) -> bool {
    matches!(r, Err(quinn::ConnectionError::ConnectionClosed(c))
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

/// A connection holds its admission slot from its first packet until it ends, handshake
/// included: connections from one address that complete TLS (a pinned contact's key) and
/// then never say `HELLO` fill that address's share, the next attempt from there is refused
/// before any TLS work, a contact on another address still calls, and a connection that ends
/// gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_held_from_one_address_are_bounded() {
    const PER_ADDRESS: usize = 3;
    let options = NodeOptions {
        admission: NodeAdmission {
            max_per_address: PER_ADDRESS,
            per_address_burst: 100,
            ..NodeAdmission::default()
        },
        ..NodeOptions::default()
    };
    let alice = make("alice");
    let bob = make_with("bob", options);
    let mallory = make("mallory");
    let addr = bob
        .node
        .listen("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    pin(&bob, "alice", &alice, None).await;
    pin(&bob, "mallory", &mallory, None).await;
    pin(&alice, "bob", &bob, Some(addr.to_string())).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // mallory's pinned key, dialled by hand from 127.0.0.2: TLS completes, HELLO never comes
    let ep = quinn::Endpoint::client("127.0.0.2:0".parse().unwrap()).unwrap();
    let bob_spki = liaison_hop::ed25519_spki(&bob.hop);
    let limits = liaison_hop::HopLimits::default();
    let dial = || {
        let cfg = liaison_hop::client_config(&mallory.hop_key, &bob_spki, &limits).unwrap();
        let connecting = ep
            .connect_with(cfg, addr, liaison_wire::consts::HOP_SERVER_NAME)
            .unwrap();
        async move {
            tokio::time::timeout(Duration::from_secs(10), connecting)
                .await
                .expect("an answer in time")
        }
    };
    let mut held = Vec::new();
    for _ in 0..PER_ADDRESS {
        held.push(dial().await.expect("admitted while the address has room"));
    }
    let r = dial().await;
    assert!(refused_at_admission(&r), "{r:?}");

    // alice calls from 127.0.0.1 meanwhile
    let mut bob_rx = bob.node.subscribe();
    alice.node.submit("bob", vec![text("hi")]).await.unwrap();
    alice.node.connect("bob", None).await.unwrap();
    match next_message(&mut bob_rx).await {
        NodeEvent::Message { from, .. } => assert_eq!(from, "alice"),
        _ => unreachable!(),
    }

    // one of the held connections ends: its slot is given back
    held.pop().unwrap().close(0u32.into(), b"");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = dial().await;
        if r.is_ok() {
            break;
        }
        assert!(refused_at_admission(&r), "{r:?}");
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ep.close(0u32.into(), b"");
    alice.node.shutdown().await;
    bob.node.shutdown().await;
    mallory.node.shutdown().await;
}
