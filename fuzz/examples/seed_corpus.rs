//! Fills `corpus/<target>/` with the seed protocol test vectors of msd-wire and with native packets
//! from `msd_fuzz::native_samples`.
//!
//! Usage, from `fuzz/`: `cargo run --example seed_corpus [CORPUS_DIR]`. `CORPUS_DIR` defaults to
//! `fuzz/corpus`. Existing files are overwritten, and files libFuzzer added are kept.

use std::error::Error;
use std::fs;
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus_dir = std::env::args_os().nth(1).map_or_else(|| fuzz_dir.join("corpus"), PathBuf::from);
    let vectors_dir = fuzz_dir.join("../crates/msd-wire/tests/fixtures/seed");

    let mut seed_vectors = Vec::new();
    for entry in
        fs::read_dir(&vectors_dir).map_err(|error| format!("failed to read {}: {error}", vectors_dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|extension| extension == "bin") {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            seed_vectors.push((format!("seed-{stem}"), fs::read(&path)?));
        }
    }
    let native_packets: Vec<(String, Vec<u8>)> =
        msd_fuzz::native_samples().into_iter().map(|(name, bytes)| (format!("native-{name}"), bytes)).collect();

    write_all(&corpus_dir.join("seed_decode"), &seed_vectors)?;
    write_all(&corpus_dir.join("native_decode"), &native_packets)?;
    write_all(&corpus_dir.join("packet_decode"), &seed_vectors)?;
    write_all(&corpus_dir.join("packet_decode"), &native_packets)?;
    println!(
        "wrote {} seed vectors and {} native packets under {}",
        seed_vectors.len(),
        native_packets.len(),
        corpus_dir.display()
    );
    Ok(())
}

fn write_all(dir: &Path, entries: &[(String, Vec<u8>)]) -> Result<(), Box<dyn Error>> {
    fs::create_dir_all(dir).map_err(|error| format!("failed to create {}: {error}", dir.display()))?;
    for (name, bytes) in entries {
        let path = dir.join(name);
        fs::write(&path, bytes).map_err(|error| format!("failed to write {}: {error}", path.display()))?;
    }
    Ok(())
}
