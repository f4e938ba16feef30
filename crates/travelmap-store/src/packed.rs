//! The stored form of a view: the projection's state as MessagePack (with field names), then
//! LZ4-compressed.
//!
//! Views were JSON until a later version; JSON views stay readable, and each is replaced as its
//! client's view is next saved (or all at once by `travelmap rebuild`). MessagePack is chosen
//! over JSON because making, writing and reading views is a large share of ingest, rebuild and
//! reads: for the benchmark's 5,000 views it serialised in two thirds of JSON's time, compressed
//! a fifth smaller, and parsed in two thirds of the time. Field names are kept (rather than a
//! positional format) so that a state whose fields change still reads, as with JSON.

use serde::Serialize;
use serde::de::DeserializeOwned;
use travelmap_domain::ClientId;

use crate::{Error, Result};

/// A client's projection state as stored, decompressed but not yet decoded: decode it into the
/// projection's state type with [`StoredState::decode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredState {
    client_id: ClientId,
    encoded: Vec<u8>,
    /// Why the stored bytes could not even be decompressed. Reported by [`Self::decode`], like
    /// a state that does not decode, so that the one damaged view fails alone and its readers
    /// can fold the client from the log instead, rather than every read of a page of views.
    damage: Option<String>,
}

impl StoredState {
    /// Decodes the state (MessagePack, or JSON as written by earlier versions).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        // A JSON view is an object and starts with `{`; a MessagePack map never does (that
        // byte is the positive integer 123 there), so the first byte tells them apart.
        if let Some(detail) = &self.damage {
            return Err(damaged(self.client_id, detail.clone()));
        }
        let decoded = if self.encoded.first() == Some(&b'{') {
            serde_json::from_slice(&self.encoded).map_err(|error| error.to_string())
        } else {
            rmp_serde::from_slice(&self.encoded).map_err(|error| error.to_string())
        };
        decoded.map_err(|detail| damaged(self.client_id, detail))
    }
}

/// The buffers one thread packs states with, kept from one state to the next.
struct Packer {
    encoded: Vec<u8>,
    compressed: Vec<u8>,
    table: lz4_flex::block::CompressTable,
}

/// A buffer that has grown past this after packing an unusually large state is let go rather
/// than kept for the thread's life.
const KEPT_BUFFER: usize = 1 << 20;

thread_local! {
    static PACKER: std::cell::RefCell<Packer> = std::cell::RefCell::new(Packer {
        encoded: Vec::new(),
        compressed: Vec::new(),
        table: lz4_flex::block::CompressTable::default(),
    });
}

/// Encodes and compresses a state for storage, in the format of LZ4's `compress_prepend_size`
/// (the encoded length as a little-endian `u32`, then the block).
///
/// The thread's buffers and LZ4's hash table are reused. Packing each state into fresh ones (an
/// encoding buffer grown by doubling, a zeroed output of the worst-case size, then shrunk, and a
/// zeroed table) took a fifth more instructions per view, and about 6 % more of a rebuild's CPU.
pub(crate) fn pack<T: Serialize>(state: &T) -> Vec<u8> {
    PACKER.with_borrow_mut(|packer| {
        let Packer {
            encoded,
            compressed,
            table,
        } = packer;
        encoded.clear();
        rmp_serde::encode::write_named(encoded, state).expect("a projection state serialises");
        let length = u32::try_from(encoded.len()).expect("a projection state is under 4 GiB");
        let bound = 4 + lz4_flex::block::get_maximum_output_size(encoded.len());
        if compressed.len() < bound {
            compressed.resize(bound, 0);
        }
        compressed[..4].copy_from_slice(&length.to_le_bytes());
        let written =
            lz4_flex::block::compress_into_with_table(encoded, &mut compressed[4..], table)
                .expect("the output holds LZ4's worst case");
        let packed = compressed[..4 + written].to_vec();
        if encoded.capacity() > KEPT_BUFFER {
            *encoded = Vec::new();
            *compressed = Vec::new();
        }
        packed
    })
}

/// Decompresses a stored state.
pub(crate) fn unpack(client_id: ClientId, packed: &[u8]) -> StoredState {
    match lz4_flex::block::decompress_size_prepended(packed) {
        Ok(encoded) => StoredState {
            client_id,
            encoded,
            damage: None,
        },
        Err(error) => StoredState {
            client_id,
            encoded: Vec::new(),
            damage: Some(error.to_string()),
        },
    }
}

fn damaged(client: ClientId, detail: String) -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("stored view of client {client} is damaged ({detail}); run `travelmap rebuild`"),
    ))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use uuid::Uuid;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        version: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        facts: Vec<serde_json::Value>,
    }

    fn client() -> ClientId {
        ClientId(Uuid::from_u128(7))
    }

    #[test]
    fn a_packed_state_reads_back_as_it_was() {
        let state = State {
            version: 3,
            note: None,
            facts: vec![serde_json::json!({"type": "job.placed", "data": {"sector": "ICT"}})],
        };
        let stored = unpack(client(), &pack(&state));
        assert_ne!(stored.encoded.first(), Some(&b'{'));
        assert_eq!(stored.decode::<State>().unwrap(), state);
    }

    #[test]
    fn packing_matches_lz4s_size_prepended_format_whatever_came_before() {
        let large = State {
            version: 9,
            note: Some("x".repeat(5_000)),
            facts: (0..200)
                .map(|n| serde_json::json!({"type": "contact.made", "n": n}))
                .collect(),
        };
        let small = State {
            version: 1,
            note: None,
            facts: Vec::new(),
        };
        // The thread's buffers are reused: a small state packed after a large one must not
        // carry the large one's leftovers.
        for state in [&small, &large, &small] {
            let packed = pack(state);
            assert_eq!(
                lz4_flex::block::decompress_size_prepended(&packed).unwrap(),
                rmp_serde::to_vec_named(state).unwrap()
            );
            let stored = unpack(client(), &packed);
            assert_eq!(stored.decode::<State>().unwrap(), *state);
        }
    }

    #[test]
    fn a_view_written_as_json_by_an_earlier_version_still_reads() {
        let json = r#"{"version":2,"note":"kept","facts":[]}"#;
        let packed = lz4_flex::block::compress_prepend_size(json.as_bytes());
        let stored = unpack(client(), &packed);
        assert_eq!(
            stored.decode::<State>().unwrap(),
            State {
                version: 2,
                note: Some("kept".into()),
                facts: Vec::new()
            }
        );
    }

    #[test]
    fn a_damaged_view_is_an_error_that_says_how_to_mend_it() {
        let stored = unpack(client(), &pack(&"not a state"));
        let error = stored.decode::<State>().unwrap_err().to_string();
        assert!(error.contains("travelmap rebuild"), "{error}");
        assert!(unpack(client(), &[1, 2, 3]).decode::<State>().is_err());
    }
}
