//! Reading a case file without trusting it: only regular files (or links to them), never
//! more bytes than the file's own safetensors header accounts for, and never more than
//! [`MAX_CASE_BYTES`]. A FIFO, a device (`/dev/zero`), a directory or an oversized file is
//! refused before a byte of it is read, so a golden directory cannot hang or exhaust the
//! runner.

use std::fs::{File, Metadata};
use std::io::Read;
use std::path::Path;

/// The largest case file the runner reads: 1 GiB. The committed cases are a few MiB at most;
/// anything larger is refused as malformed before it is read.
pub const MAX_CASE_BYTES: u64 = 1 << 30;

/// Length of the little-endian `u64` header length that opens every safetensors file.
const LEN_BYTES: u64 = 8;

/// Reads the whole case file at `path`, or says why it will not be read.
pub(crate) fn read_case_file(path: &Path) -> Result<Vec<u8>, String> {
    // Stat (following links) before opening: opening a FIFO would block until a writer
    // comes, and a device has no end.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    regular_and_bounded(&meta)?;
    let mut file = File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let opened = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    regular_and_bounded(&opened)?;
    if !same_file(&meta, &opened) {
        return Err("the file was replaced while it was being opened".into());
    }
    let size = opened.len();
    let short = || {
        format!(
            "not a valid safetensors file: {size} bytes, shorter than the {LEN_BYTES}-byte \
             header length"
        )
    };
    let mut len = [0u8; LEN_BYTES as usize];
    if size < LEN_BYTES {
        return Err(short());
    }
    file.read_exact(&mut len)
        .map_err(|e| format!("cannot read: {e}"))?;
    let header_len = u64::from_le_bytes(len);
    let header_end = (LEN_BYTES.checked_add(header_len))
        .filter(|&end| end <= size)
        .ok_or_else(|| {
            format!(
                "not a valid safetensors file: its header length ({header_len} bytes) exceeds \
                 the file ({size} bytes)"
            )
        })?;
    let mut bytes = reserve(size)?;
    bytes.extend_from_slice(&len);
    read_up_to(&mut file, header_end - LEN_BYTES, &mut bytes)?;
    let data_len = data_len(&bytes[LEN_BYTES as usize..])?;
    let described = header_end.checked_add(data_len);
    if described != Some(size) {
        let described = described.map_or_else(|| "more than 2^64".into(), |d| d.to_string());
        return Err(format!(
            "not a valid safetensors file: its header describes {described} bytes, the file \
             has {size}"
        ));
    }
    read_up_to(&mut file, size - header_end, &mut bytes)?;
    if bytes.len() as u64 != size {
        return Err(format!(
            "the file changed while it was being read ({} of {size} bytes)",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Refuses anything but a regular file of at most [`MAX_CASE_BYTES`].
fn regular_and_bounded(meta: &Metadata) -> Result<(), String> {
    if !meta.is_file() {
        return Err(format!(
            "not a regular file ({}): only regular files, or links to them, are read",
            kind(meta)
        ));
    }
    if meta.len() > MAX_CASE_BYTES {
        return Err(format!(
            "{} bytes is larger than the {MAX_CASE_BYTES}-byte limit on a case file",
            meta.len()
        ));
    }
    Ok(())
}

/// What a file that is not a regular file is, in words.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a plain file"
}

/// Whether two stats are of the same file (always true where that cannot be told).
fn same_file(a: &Metadata, b: &Metadata) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        a.dev() == b.dev() && a.ino() == b.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (a, b);
        true
    }
}

/// An empty buffer with room for `size` bytes, or an error if the host refuses.
fn reserve(size: u64) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    usize::try_from(size)
        .ok()
        .and_then(|n| bytes.try_reserve_exact(n).ok())
        .ok_or_else(|| format!("cannot allocate {size} bytes to read it"))?;
    Ok(bytes)
}

/// Appends at most `n` more bytes of `file` to `bytes`.
fn read_up_to(file: &mut File, n: u64, bytes: &mut Vec<u8>) -> Result<(), String> {
    file.take(n)
        .read_to_end(bytes)
        .map(drop)
        .map_err(|e| format!("cannot read: {e}"))
}

/// The byte length of the data section a safetensors header describes: the largest end of
/// any tensor's `data_offsets`. Checked here, before the data is read, so that the
/// `safetensors` crate only ever sees a buffer its header fits exactly.
fn data_len(header: &[u8]) -> Result<u64, String> {
    let bad = |what: String| format!("not a valid safetensors file: header {what}");
    let json: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| bad(format!("is not JSON: {e}")))?;
    let tensors = json
        .as_object()
        .ok_or_else(|| bad("is not a JSON object".into()))?;
    let mut end = 0;
    for (name, info) in tensors.iter().filter(|(k, _)| *k != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let pair = match offsets.map(|o| o.as_slice()) {
            Some([start, stop]) => start.as_u64().zip(stop.as_u64()),
            _ => None,
        };
        let (_, stop) = pair.ok_or_else(|| {
            bad(format!(
                "gives tensor `{name}` no [start, end] `data_offsets`"
            ))
        })?;
        end = end.max(stop);
    }
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::data_len;

    #[test]
    fn data_len_is_the_largest_end_offset() {
        let header =
            br#"{"__metadata__":{"op":"x"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},
            "b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        assert_eq!(data_len(header), Ok(12));
        assert_eq!(data_len(b"{}"), Ok(0));
        let err = data_len(br#"{"a":{"data_offsets":[0]}}"#).unwrap_err();
        assert!(err.contains("tensor `a`"), "{err}");
        assert!(data_len(b"[1]").unwrap_err().contains("not a JSON object"));
        assert!(data_len(b"\xff").unwrap_err().contains("not JSON"));
    }
}
