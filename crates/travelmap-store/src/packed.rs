//! The stored form of a view. Views are LZ4-compressed: a view is JSON listing similar events,
//! which compresses about 2.3-fold, and the bytes written were most of the cost of keeping views
//! current.

use travelmap_domain::ClientId;

use crate::{Error, Result};

pub(crate) fn pack(state: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(state.as_bytes())
}

pub(crate) fn unpack(client: ClientId, packed: &[u8]) -> Result<String> {
    let damaged = |detail: String| {
        Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "stored view of client {client} is damaged ({detail}); run `travelmap rebuild`"
            ),
        ))
    };
    let bytes = lz4_flex::block::decompress_size_prepended(packed)
        .map_err(|error| damaged(error.to_string()))?;
    String::from_utf8(bytes).map_err(|error| damaged(error.to_string()))
}
