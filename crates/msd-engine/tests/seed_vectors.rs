//! A discoverer fed the original's vectors ends with the table the original ended with, except
//! where msd deliberately differs: LOGOFF removes the instance (the original falls through to the
//! ANNOUNCE branch and keeps or even adds it), and the quirk vectors listed in docs/PROTOCOL.md.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use msd_engine::{Discoverer, DiscovererConfig, InterfaceIndex, Received};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../msd-wire/tests/fixtures/seed").join(name)
}

fn table(discoverer: &Discoverer) -> BTreeMap<String, String> {
    discoverer.instances().map(|info| (info.id.clone(), info.url.clone())).collect()
}

#[test]
fn tables_match_original_after_each_vector() {
    let text = std::fs::read_to_string(fixture("vectors.json")).unwrap();
    let root: Value = serde_json::from_str(&text).unwrap();
    let vectors = root["vectors"].as_array().unwrap();
    let by_name: BTreeMap<&str, &Value> =
        vectors.iter().map(|vector| (vector["name"].as_str().unwrap(), vector)).collect();
    let bytes_of = |vector: &Value| hex::decode(vector["hex"].as_str().unwrap()).unwrap();

    let mut compared = 0;
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        if !vector["quirk"].is_null() {
            continue;
        }
        let now = Instant::now();
        let group = msd_wire::GroupId::from_bytes([0x55; 14]);
        let mut discoverer = Discoverer::new(DiscovererConfig::new(group), now, 0);
        let interface = InterfaceIndex(2);
        let source = "[fe80::1%2]:53566".parse().unwrap();
        let mut sequence: Vec<Vec<u8>> = vector["setup"]
            .as_array()
            .unwrap()
            .iter()
            .map(|setup| bytes_of(by_name[setup.as_str().unwrap()]))
            .collect();
        sequence.push(bytes_of(vector));
        for payload in &sequence {
            discoverer.handle_datagram(now, Received { source, interface, payload });
        }

        let mut expected: BTreeMap<String, String> = vector["instances_after"]
            .as_array()
            .unwrap()
            .iter()
            .map(|host| (host["id"].as_str().unwrap().to_owned(), host["url"].as_str().unwrap().to_owned()))
            .collect();
        let is_logoff = bytes_of(vector).windows(3).any(|window| window == [0xa1, 0x74, 0x03])
            || name.starts_with("logoff");
        if is_logoff && vector["outcome"] == "ok" {
            // msd removes on LOGOFF; the original keeps (or adds) the instance.
            let id = vector["discoverer_effect"]["key"].as_str().unwrap();
            expected.remove(id);
        }
        assert_eq!(table(&discoverer), expected, "{name}");
        compared += 1;
    }
    assert_eq!(compared, 60, "every non-quirk vector was compared");
}
