//! A `newc` cpio archive writer for the initramfs. Written by hand because it is ~60 lines,
//! and because the image needs what the crates do not all offer: device nodes (/dev/console,
//! which the kernel opens for PID 1 before any devtmpfs exists) and byte-identical output
//! (fixed inode numbers, owners and times).

use std::collections::BTreeMap;

/// An entry's content.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir,
    File { data: Vec<u8>, executable: bool },
    CharDevice { major: u32, minor: u32 },
}

/// Paths (without a leading `/`) to entries; the BTreeMap gives a stable order in which
/// every directory precedes its contents.
#[derive(Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Add an entry and every missing parent directory.
    pub fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, p)| p)
            .unwrap_or(&[])
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries.entry(parent.clone()).or_insert(Entry::Dir);
        }
        self.entries.insert(path.to_string(), entry);
    }

    pub fn write(&self, mtime: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir => (0o040755, &[], (0, 0)),
                Entry::File { data, executable } => {
                    (if *executable { 0o100755 } else { 0o100644 }, data, (0, 0))
                }
                Entry::CharDevice { major, minor } => (0o020600, &[], (*major, *minor)),
            };
            header(
                &mut out,
                ino as u32 + 1,
                mode,
                data.len() as u32,
                mtime,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 0, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    size: u32,
    mtime: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        mtime,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_output_is_stable() {
        let mut a = Archive::default();
        a.add(
            "/lib/modules/x.ko",
            Entry::File {
                data: b"abc".to_vec(),
                executable: false,
            },
        );
        a.add("/dev/console", Entry::CharDevice { major: 5, minor: 1 });
        a.add(
            "/init",
            Entry::File {
                data: vec![1; 5],
                executable: true,
            },
        );
        let bytes = a.write(1_700_000_000);
        assert_eq!(bytes, a.write(1_700_000_000));
        let text = String::from_utf8_lossy(&bytes);
        let lib = text.find("lib\0").unwrap();
        let modules = text.find("lib/modules\0").unwrap();
        assert!(lib < modules);
        assert!(text.contains("TRAILER!!!"));
        assert_eq!(bytes.len() % 4, 0);
    }
}
