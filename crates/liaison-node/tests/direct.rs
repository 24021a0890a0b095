//! Two real nodes in one process over QUIC on 127.0.0.1: a direct line end to end.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use liaison_node::node::{Node, NodeEvent, NodeOptions};
use liaison_node::secrets::NodeSecrets;
use liaison_node::store::{self, NewContact};
use liaison_proto::identity::Identity;
use liaison_wire::frame::{MSG_KIND_TEXT, MessageContent};
use std::time::Duration;

struct TestNode {
    node: Node,
    _dir: tempfile::TempDir,
    card: Vec<u8>,
    id: [u8; 32],
    noise: [u8; 32],
    hop: [u8; 32],
}

async fn make(name: &str) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate(name, 1_800_000_000).unwrap();
    let card = identity.card().unwrap().to_bytes();
    let (id, noise, hop) = (
        identity.identity_public(),
        identity.noise_public(),
        identity.hop_public(),
    );
    let secrets = NodeSecrets::new(identity).unwrap();
    let path = dir.path().join("node.db");
    let db = store::open(&path).unwrap();
    let node = Node::start(db, path, secrets, NodeOptions::default()).unwrap();
    TestNode {
        node,
        _dir: dir,
        card,
        id,
        noise,
        hop,
    }
}

async fn pin(a: &TestNode, name: &str, b: &TestNode, addr: Option<String>) {
    let c = NewContact {
        name: name.into(),
        card: b.card.clone(),
        identity: b.id,
        noise: b.noise,
        hop: b.hop,
        addr,
        relay: None,
    };
    a.node
        .db()
        .write(move |conn| store::add_contact(conn, &c, 1, false))
        .await
        .unwrap();
}

fn text(s: &str) -> MessageContent {
    MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: 1,
        salt: [7; 32],
        name: None,
        body: s.as_bytes().to_vec(),
    }
}

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
    let alice = make("alice").await;
    let bob = make("bob").await;
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
    let alice = make("alice").await;
    let bob = make("bob").await;
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
