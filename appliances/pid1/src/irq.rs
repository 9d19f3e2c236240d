//! NIC interrupt affinity: each interrupt of a network interface is pinned to the CPUs of the
//! NUMA node the NIC hangs off, so packets are handled next to the memory they land in (what
//! `irqbalance` or Redpanda's `net` tuner would do, without a userland daemon).

use std::path::Path;

/// Pin the interrupts of `ifname`; returns how many were set. A NIC without a NUMA node (a
/// VM's virtio NIC, a single-socket machine) is left alone.
pub fn pin_nic_irqs(ifname: &str) -> usize {
    let dev = Path::new("/sys/class/net").join(ifname).join("device");
    let node: i32 = match std::fs::read_to_string(dev.join("numa_node")) {
        Ok(s) => s.trim().parse().unwrap_or(-1),
        Err(_) => return 0,
    };
    if node < 0 {
        return 0;
    }
    let Ok(cpus) = std::fs::read_to_string(format!("/sys/devices/system/node/node{node}/cpulist"))
    else {
        return 0;
    };
    let cpus = cpus.trim();
    let mut set = 0;
    for irq in nic_irqs(&dev) {
        match std::fs::write(format!("/proc/irq/{irq}/smp_affinity_list"), cpus) {
            Ok(()) => set += 1,
            Err(e) => tracing::debug!(irq, error = %e, "IRQ affinity not set"),
        }
    }
    if set > 0 {
        tracing::info!(
            interface = ifname,
            numa_node = node,
            cpus,
            irqs = set,
            "NIC interrupts pinned"
        );
    }
    set
}

/// The MSI-X vectors of a PCI device (`device/msi_irqs/<irq>`).
fn nic_irqs(dev: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(dev.join("msi_irqs")) else {
        return vec![];
    };
    let mut irqs: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    irqs.sort_unstable();
    irqs
}
