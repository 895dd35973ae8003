//! The seed codec against packets made by the original Node.js implementation.
//!
//! `fixtures/seed/vectors.json` records, for every packet, whether the original discoverer
//! accepted it. msd must reach the same outcome for every vector that is not marked as a quirk;
//! quirk vectors get the behaviour listed in `QUIRK_OUTCOMES`, which `docs/PROTOCOL.md` explains.

use std::path::PathBuf;

use msd_wire::seed::{SeedKind, SeedPacket};
use msd_wire::DecodeError;
use serde_json::Value;

struct Vector {
    name: String,
    bytes: Vec<u8>,
    outcome: String,
    origin: String,
    quirk: bool,
    json: Value,
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed")
}

fn load_vectors() -> Vec<Vector> {
    let text = std::fs::read_to_string(fixture_dir().join("vectors.json")).expect("read vectors.json");
    let root: Value = serde_json::from_str(&text).expect("parse vectors.json");
    let vectors = root["vectors"].as_array().expect("vectors array");
    vectors
        .iter()
        .map(|json| {
            let name = json["name"].as_str().expect("name").to_owned();
            let file = json["file"].as_str().expect("file");
            let bytes = std::fs::read(fixture_dir().join(file)).expect("read vector file");
            let hex_bytes = hex::decode(json["hex"].as_str().expect("hex")).expect("valid hex");
            assert_eq!(bytes, hex_bytes, "{name}: .bin file and hex field differ");
            Vector {
                name,
                bytes,
                outcome: json["outcome"].as_str().expect("outcome").to_owned(),
                origin: json["origin"].as_str().expect("origin").to_owned(),
                quirk: !json["quirk"].is_null() && json["quirk"] != Value::Bool(false),
                json: json.clone(),
            }
        })
        .collect()
}

/// What msd does with each quirk vector, and why it may differ from the original.
const QUIRK_OUTCOMES: &[(&str, Result<(), DecodeError>)] = &[
    // Duplicate keys: the last one wins, as in the original.
    ("announce-dup-t", Ok(())),
    ("announce-dup-id", Ok(())),
    // Ids must be valid UTF-8 in msd; the original turns invalid bytes into replacement characters.
    ("announce-invalid-utf8-id", Err(DecodeError::InvalidUtf8 { field: "id" })),
    ("announce-wtf8-surrogate-id", Err(DecodeError::InvalidUtf8 { field: "id" })),
    // 64-bit integers for `t` are rejected, as in the original.
    ("t-uint64", Err(DecodeError::InvalidType)),
    ("t-int64", Err(DecodeError::InvalidType)),
    // Extension types are not part of the seed protocol; the original rejects this one too.
    ("h-undefined-ext", Err(DecodeError::InvalidHost)),
    // msgpackr's record extension: msd does not implement it, the original's decoder does.
    ("announce-msgpackr-records", Err(DecodeError::NotAMap)),
    // The reserved byte 0xc1 is not a map; the original rejects it as well.
    ("never-used-c1", Err(DecodeError::NotAMap)),
    // An extra key inside `h`, rejected as in the original.
    ("proto-key-host", Err(DecodeError::UnexpectedHostKey)),
];

#[test]
fn fixtures_are_complete() {
    let vectors = load_vectors();
    assert_eq!(vectors.len(), 70);
    let quirks = vectors.iter().filter(|vector| vector.quirk).count();
    assert_eq!(quirks, QUIRK_OUTCOMES.len(), "every quirk vector has a listed outcome");
}

#[test]
fn non_quirk_outcomes_match_original() {
    let mut mismatches = Vec::new();
    for vector in load_vectors().iter().filter(|vector| !vector.quirk) {
        let decoded = SeedPacket::decode(&vector.bytes);
        let matches = match vector.outcome.as_str() {
            "ok" => decoded.is_ok(),
            // Passes validation; the discoverer then ignores ANNOUNCE or LOGOFF without a host.
            "h_null_ignored" => matches!(
                decoded,
                Ok(SeedPacket { kind: SeedKind::Announce | SeedKind::Logoff, host: None })
            ),
            "decode_error" | "validation_error" => decoded.is_err(),
            other => panic!("{}: unknown outcome {other}", vector.name),
        };
        if !matches {
            mismatches.push(format!("{}: original {}, msd {:?}", vector.name, vector.outcome, decoded));
        }
    }
    assert!(mismatches.is_empty(), "outcomes differ:\n{}", mismatches.join("\n"));
}

#[test]
fn quirk_outcomes_are_as_documented() {
    let vectors = load_vectors();
    for (name, expected) in QUIRK_OUTCOMES {
        let vector = vectors.iter().find(|vector| vector.name == *name).expect("quirk vector exists");
        assert!(vector.quirk, "{name} is marked as a quirk");
        let decoded = SeedPacket::decode(&vector.bytes).map(|_| ());
        assert_eq!(&decoded, expected, "{name}");
    }
}

#[test]
fn decoded_hosts_match_original() {
    for vector in load_vectors().iter().filter(|vector| vector.outcome == "ok" && !vector.quirk) {
        let effect = &vector.json["discoverer_effect"];
        if effect["op"] != "upsert" {
            continue;
        }
        let packet = SeedPacket::decode(&vector.bytes).expect("accepted vector decodes");
        let host = packet.host.expect("upsert vector has a host");
        assert_eq!(Some(host.id), effect["key"].as_str(), "{}: id", vector.name);
        assert_eq!(Some(host.url), effect["url"].as_str(), "{}: url", vector.name);
    }
}

/// Re-encodes every packet the original sends and compares the bytes. `announce-idfirst` is
/// excluded: the original writes host keys in the order its caller's object had them, and msd
/// always writes `url` before `id`, as the original's own instance does by default.
#[test]
fn encoder_reproduces_original_bytes() {
    let mut checked = 0;
    for vector in load_vectors().iter().filter(|vector| vector.origin == "original") {
        if vector.name == "announce-idfirst" {
            continue;
        }
        let packet = SeedPacket::decode(&vector.bytes).expect("original packet decodes");
        let bytes = packet.to_vec().expect("encode");
        assert_eq!(hex::encode(&bytes), hex::encode(&vector.bytes), "{}", vector.name);
        checked += 1;
    }
    assert_eq!(checked, 10, "all packets the original sends were re-encoded");
}

#[test]
fn every_truncation_rejected() {
    for vector in load_vectors().iter().filter(|vector| vector.outcome == "ok") {
        for cut in 0..vector.bytes.len() {
            let prefix = &vector.bytes[..cut];
            assert!(SeedPacket::decode(prefix).is_err(), "{} cut at {cut} was accepted", vector.name);
        }
    }
}

#[test]
fn huge_length_headers_rejected() {
    let cases: &[(&str, &[u8])] = &[
        ("map32 of 4G entries", &[0xdf, 0xff, 0xff, 0xff, 0xff]),
        ("str32 key of 4G bytes", &[0x81, 0xdb, 0xff, 0xff, 0xff, 0xff, b't']),
        ("bin32 value", &[0x81, 0xa1, b'x', 0xc6, 0xff, 0xff, 0xff, 0xff]),
        ("ext32 value", &[0x81, 0xa1, b'x', 0xc9, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ("array32 value", &[0x81, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff]),
        ("str32 url", &[0x82, 0xa1, b't', 0x02, 0xa1, b'h', 0x81, 0xa3, b'u', b'r', b'l', 0xdb, 0xff, 0xff, 0xff, 0xff]),
        ("map16 host of 64K entries", &[0x82, 0xa1, b't', 0x02, 0xa1, b'h', 0xde, 0xff, 0xff]),
    ];
    for (name, bytes) in cases {
        assert_eq!(SeedPacket::decode(bytes), Err(DecodeError::Truncated), "{name}");
    }
}

#[test]
fn wrong_types_rejected() {
    let cases: &[(&str, &[u8], DecodeError)] = &[
        ("top-level string", &[0xa1, b'x'], DecodeError::NotAMap),
        ("top-level array", &[0x90], DecodeError::NotAMap),
        ("t is an array", &[0x82, 0xa1, b't', 0x90, 0xa1, b'h', 0xc0], DecodeError::InvalidType),
        ("t is a map", &[0x82, 0xa1, b't', 0x80, 0xa1, b'h', 0xc0], DecodeError::InvalidType),
        ("t is bin", &[0x82, 0xa1, b't', 0xc4, 0x01, 0x01, 0xa1, b'h', 0xc0], DecodeError::InvalidType),
        ("t is float NaN", &[0x82, 0xa1, b't', 0xca, 0x7f, 0xc0, 0x00, 0x00, 0xa1, b'h', 0xc0], DecodeError::InvalidType),
        ("t is -1 as int32", &[0x82, 0xa1, b't', 0xd2, 0xff, 0xff, 0xff, 0xff, 0xa1, b'h', 0xc0], DecodeError::TypeOutOfRange),
        ("t is 256.0", &[0x82, 0xa1, b't', 0xcb, 0x40, 0x70, 0, 0, 0, 0, 0, 0, 0xa1, b'h', 0xc0], DecodeError::TypeOutOfRange),
        ("key is an integer", &[0x83, 0x01, 0x01, 0xa1, b't', 0x01, 0xa1, b'h', 0xc0], DecodeError::UnexpectedKey),
        ("h is true", &[0x82, 0xa1, b't', 0x02, 0xa1, b'h', 0xc3], DecodeError::InvalidHost),
        ("url is an array", &[0x82, 0xa1, b't', 0x02, 0xa1, b'h', 0x82, 0xa3, b'u', b'r', b'l', 0x90, 0xa2, b'i', b'd', 0xa1, b'x'], DecodeError::FieldNotString { field: "url" }),
        ("reserved byte as value", &[0x81, 0xa1, b'x', 0xc1], DecodeError::InvalidType),
    ];
    for (name, bytes, expected) in cases {
        assert_eq!(SeedPacket::decode(bytes), Err(*expected), "{name}");
    }
}

#[test]
fn deep_nesting_in_host_rejected() {
    let mut bytes = vec![0x82, 0xa1, b't', 0x02, 0xa1, b'h', 0x81, 0xa1, b'x'];
    bytes.extend(std::iter::repeat_n(0x81u8, 5_000).flat_map(|marker| [marker, 0xa0]));
    assert!(matches!(SeedPacket::decode(&bytes), Err(DecodeError::TooDeep { .. })));
}
