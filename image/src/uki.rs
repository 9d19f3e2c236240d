//! A Unified Kernel Image: systemd's EFI stub with the kernel, initramfs, command line and
//! os-release added as PE sections, so one signed-able file boots the whole appliance.
//! Debian 12 has no `ukify`; `objcopy` adds the sections at page-aligned addresses after the
//! stub's last one (the layout ukify produces).

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use object::read::pe::PeFile64;

pub struct UkiParts<'a> {
    pub stub: &'a Path,
    pub os_release: &'a Path,
    pub cmdline: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
}

pub fn build(parts: &UkiParts, out: &Path) -> anyhow::Result<()> {
    let stub =
        std::fs::read(parts.stub).with_context(|| format!("read {}", parts.stub.display()))?;
    let pe = PeFile64::parse(&*stub).context("the EFI stub is not a PE32+ image")?;
    let opt = &pe.nt_headers().optional_header;
    let align = u64::from(opt.section_alignment.get(object::LittleEndian));
    let base = opt.image_base.get(object::LittleEndian);
    let end = pe
        .section_table()
        .iter()
        .map(|s| {
            u64::from(s.virtual_address.get(object::LittleEndian))
                + u64::from(s.virtual_size.get(object::LittleEndian))
        })
        .max()
        .context("the EFI stub has no sections")?;
    let align_up = |v: u64| v.div_ceil(align) * align;
    let mut vma = align_up(end);
    let mut cmd = Command::new("objcopy");
    for (name, file) in [
        (".osrel", parts.os_release),
        (".cmdline", parts.cmdline),
        (".initrd", parts.initrd),
        // The kernel last: it may use memory after its section while decompressing.
        (".linux", parts.kernel),
    ] {
        let size = std::fs::metadata(file)
            .with_context(|| format!("stat {}", file.display()))?
            .len();
        cmd.arg("--add-section")
            .arg(format!("{name}={}", file.display()));
        cmd.arg("--change-section-vma")
            .arg(format!("{name}={:#x}", base + vma));
        vma = align_up(vma + size);
    }
    cmd.arg(parts.stub).arg(out);
    crate::tool::run(&mut cmd).context("objcopy (from binutils) assembling the UKI")?;
    normalize_pe_header(out)
}

/// objcopy stamps the PE header with the current time; set the stamp and the (optional for
/// EFI) checksum to zero so the same inputs give the same bytes.
fn normalize_pe_header(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b4 = [0u8; 4];
    f.read_exact_at(&mut b4, 0x3c)?;
    let pe = u64::from(u32::from_le_bytes(b4));
    // COFF header: signature (4) machine (2) sections (2) TimeDateStamp (4) ...
    f.write_all_at(&0u32.to_le_bytes(), pe + 8)?;
    // Optional header starts at pe + 24; its CheckSum field is at offset 64.
    f.write_all_at(&0u32.to_le_bytes(), pe + 24 + 64)?;
    Ok(())
}
