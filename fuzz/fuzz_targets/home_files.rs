//! The damage checks of a home's database files (`liaison_node::damage`) and the home
//! manifest parser, on arbitrary file contents: no panic, bounded memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("liaison-fuzz-home-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let db = dir.join("node.db");
    let (main, wal) = data.split_at(data.len() / 2);
    let _ = std::fs::write(&db, main);
    let _ = std::fs::write(liaison_node::damage::wal_path(&db), wal);
    let _ = liaison_node::damage::check_files(&db);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = liaison_node::home::Manifest::parse(text);
    }
});
