//! What the in-process node tests share: a node in a temporary home, pinning, a text message.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use liaison_node::node::{Node, NodeOptions};
use liaison_node::secrets::NodeSecrets;
use liaison_node::store::{self, NewContact};
use liaison_proto::identity::Identity;
use liaison_wire::frame::{MSG_KIND_TEXT, MessageContent};
use std::path::PathBuf;

/// A running node in a temporary home, with its public keys.
pub struct TestNode {
    pub node: Node,
    pub dir: tempfile::TempDir,
    pub card: Vec<u8>,
    pub id: [u8; 32],
    pub noise: [u8; 32],
    pub hop: [u8; 32],
    /// The node's direct hop key, for tests that dial by hand as this node.
    pub hop_key: liaison_hop::HopKey,
}

impl TestNode {
    /// The home's database.
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("node.db")
    }

    /// Stops the node and starts it again on the same home (its listener is not restarted).
    pub async fn restart(&mut self) {
        self.node.shutdown().await;
        let secrets = NodeSecrets::load(&self.dir.path().join("keys"), None).unwrap();
        let db = store::open(&self.db()).unwrap();
        self.node = Node::start(db, self.db(), secrets, NodeOptions::default()).unwrap();
    }
}

/// A node named `name` with default options.
pub fn make(name: &str) -> TestNode {
    make_with(name, NodeOptions::default())
}

/// A node named `name` in a fresh home (its key file saved unencrypted, for restarts).
pub fn make_with(name: &str, options: NodeOptions) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::generate(name, 1_800_000_000).unwrap();
    let card = identity.card().unwrap().to_bytes();
    let (id, noise, hop) = (
        identity.identity_public(),
        identity.noise_public(),
        identity.hop_public(),
    );
    let hop_key = liaison_hop::HopKey::from_seed(identity.hop_seed());
    let secrets = NodeSecrets::new(identity).unwrap();
    secrets.save(&dir.path().join("keys"), None).unwrap();
    let path = dir.path().join("node.db");
    let db = store::create(&path).unwrap();
    let node = Node::start(db, path, secrets, options).unwrap();
    TestNode {
        node,
        dir,
        card,
        id,
        noise,
        hop,
        hop_key,
    }
}

/// Pins `b` on `a` as `name`, optionally with an address.
pub async fn pin(a: &TestNode, name: &str, b: &TestNode, addr: Option<String>) {
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

/// A text message with a fixed salt.
pub fn text(s: &str) -> MessageContent {
    MessageContent {
        kind: MSG_KIND_TEXT,
        sent_at_ms: 1,
        salt: [7; 32],
        name: None,
        body: s.as_bytes().to_vec(),
    }
}
