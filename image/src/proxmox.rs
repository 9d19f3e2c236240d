//! What a Proxmox VE 8 administrator imports: the qcow2 disk plus a `qm` script that creates
//! the VM the way the appliance expects (q35 + OVMF without pre-enrolled keys, virtio-scsi,
//! serial console, cloud-init drive on SCSI, watchdog) and turns it into a template.

use std::path::{Path, PathBuf};

use anyhow::Context;

pub struct TemplateRequest<'a> {
    pub appliance: &'a str,
    /// The qcow2 image, copied next to the script.
    pub image: &'a Path,
    pub out_dir: &'a Path,
    pub vmid: u32,
    pub storage: &'a str,
    pub bridge: &'a str,
    pub memory_mib: u32,
    pub cores: u32,
}

/// Writes `<image>.qm.sh` (and copies the image) into `out_dir`; returns the script path.
pub fn write_template(r: &TemplateRequest) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(r.out_dir)?;
    let image_name = r
        .image
        .file_name()
        .and_then(|f| f.to_str())
        .context("image path has no file name")?;
    let target = r.out_dir.join(image_name);
    if std::fs::canonicalize(r.image)? != std::fs::canonicalize(r.out_dir)?.join(image_name) {
        std::fs::copy(r.image, &target).with_context(|| format!("copy {}", r.image.display()))?;
    }
    let stem = image_name.trim_end_matches(".qcow2");
    let script = r.out_dir.join(format!("{stem}.qm.sh"));
    std::fs::write(&script, qm_script(r, image_name))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    Ok(script)
}

pub fn qm_script(r: &TemplateRequest, image_name: &str) -> String {
    format!(
        r#"#!/bin/bash
# Import the Clickceler {app} appliance as a Proxmox VE 8 template.
# Run as root on a Proxmox node, from the directory holding {image}:
#   ./{stem}.qm.sh [VMID] [STORAGE] [BRIDGE]
# Then clone it per site and set per-VM settings through cloud-init, e.g.
#   qm clone {vmid} 101 --name {app}-a1 --full
#   qm set 101 --ipconfig0 ip=10.10.0.11/24,gw=10.10.0.1 --nameserver 10.10.0.1
#   qm set 101 --smbios1 serial={app}-a1         # node identity
#   qm resize 101 scsi0 +200G                    # the data area grows at next boot
set -euo pipefail
VMID="${{1:-{vmid}}}"
STORAGE="${{2:-{storage}}}"
BRIDGE="${{3:-{bridge}}}"
HERE="$(cd "$(dirname "$0")" && pwd)"
IMAGE="$HERE/{image}"

qm create "$VMID" \
  --name "clk-{app}" \
  --ostype l26 \
  --machine q35 \
  --bios ovmf \
  --efidisk0 "$STORAGE:1,efitype=4m,pre-enrolled-keys=0" \
  --cpu host \
  --cores {cores} \
  --memory {memory} \
  --balloon 0 \
  --scsihw virtio-scsi-single \
  --scsi0 "$STORAGE:0,import-from=$IMAGE,discard=on,iothread=1,ssd=1" \
  --scsi1 "$STORAGE:cloudinit" \
  --net0 "virtio,bridge=$BRIDGE" \
  --serial0 socket \
  --vga serial0 \
  --boot order=scsi0 \
  --watchdog model=i6300esb,action=reset \
  --onboot 1 \
  --tablet 0 \
  --description "Clickceler {app} appliance ({image})"
qm template "$VMID"
echo "template $VMID ready: clone it, set cloud-init (ipconfig0, nameserver, smbios1 serial), start"
"#,
        app = r.appliance,
        image = image_name,
        stem = image_name.trim_end_matches(".qcow2"),
        vmid = r.vmid,
        storage = r.storage,
        bridge = r.bridge,
        cores = r.cores,
        memory = r.memory_mib,
    )
}
