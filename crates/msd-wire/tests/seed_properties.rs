//! Property tests: the seed decoder never panics, and decoding inverts encoding.

use msd_wire::seed::{SeedHost, SeedKind, SeedPacket};
use proptest::prelude::*;

const ANNOUNCE_BASIC: &[u8] = include_bytes!("fixtures/seed/announce-basic.bin");

fn any_packet() -> impl Strategy<Value = (u8, Option<(String, String)>)> {
    (any::<u8>(), proptest::option::of((".{0,300}", ".{0,40}")))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SeedPacket::decode(&bytes);
    }

    #[test]
    fn mutated_announce_never_panics(
        flips in proptest::collection::vec((0..ANNOUNCE_BASIC.len(), any::<u8>()), 1..6),
    ) {
        let mut bytes = ANNOUNCE_BASIC.to_vec();
        for (index, value) in flips {
            bytes[index] = value;
        }
        let _ = SeedPacket::decode(&bytes);
    }

    #[test]
    fn decode_inverts_encode((kind, host) in any_packet()) {
        let packet = SeedPacket {
            kind: SeedKind::from_u8(kind),
            host: host.as_ref().map(|(url, id)| SeedHost { url, id }),
        };
        let bytes = packet.to_vec().unwrap();
        prop_assert_eq!(bytes.len(), packet.encoded_len());
        prop_assert_eq!(SeedPacket::decode(&bytes), Ok(packet));
    }

    #[test]
    fn reencoding_is_stable((kind, host) in any_packet()) {
        let packet = SeedPacket {
            kind: SeedKind::from_u8(kind),
            host: host.as_ref().map(|(url, id)| SeedHost { url, id }),
        };
        let first = packet.to_vec().unwrap();
        let second = SeedPacket::decode(&first).unwrap().to_vec().unwrap();
        prop_assert_eq!(first, second);
    }
}
