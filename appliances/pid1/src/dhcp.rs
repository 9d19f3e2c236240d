//! DHCPv4 for an appliance with no userland: smoltcp's DHCP client over a raw packet socket.
//! smoltcp is only the DHCP state machine and framing here; the kernel's IP stack carries all
//! real traffic, and the lease is applied to it over rtnetlink by [`crate::net`].
//!
//! A classic BPF filter on the raw socket passes only ARP and UDP to port 68, so the socket
//! does not see (and the kernel does not copy) the interface's real traffic.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::{Medium, RawSocket, wait as phy_wait};
use smoltcp::socket::dhcpv4;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};

use crate::system::Cidr;

/// No change to the lease within the time asked for.
#[derive(Debug)]
pub struct TimedOut;

/// What a server offered and we accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: Cidr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// A DHCP client bound to one interface.
pub struct DhcpClient {
    device: RawSocket,
    iface: Interface,
    sockets: SocketSet<'static>,
    handle: smoltcp::iface::SocketHandle,
}

impl DhcpClient {
    pub fn new(ifname: &str, mac: [u8; 6]) -> std::io::Result<DhcpClient> {
        let mut device = RawSocket::new(ifname, Medium::Ethernet)?;
        attach_filter(device.as_raw_fd())?;
        let config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        let iface = Interface::new(config, &mut device, Instant::now());
        let mut sockets = SocketSet::new(vec![]);
        let handle = sockets.add(dhcpv4::Socket::new());
        Ok(DhcpClient {
            device,
            iface,
            sockets,
            handle,
        })
    }

    /// Run the state machine until the lease changes (acquired, renewed with new values, or
    /// lost: `None`), or until `timeout` passes with no change.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Lease>, TimedOut> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let now = Instant::now();
            self.iface.poll(now, &mut self.device, &mut self.sockets);
            let event = self.sockets.get_mut::<dhcpv4::Socket>(self.handle).poll();
            match event {
                Some(dhcpv4::Event::Configured(c)) => {
                    return Ok(Some(Lease {
                        address: Cidr {
                            addr: c.address.address(),
                            prefix: c.address.prefix_len(),
                        },
                        router: c.router,
                        dns: c.dns_servers.iter().copied().collect(),
                    }));
                }
                Some(dhcpv4::Event::Deconfigured) => return Ok(None),
                None => {}
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(TimedOut);
            }
            let wait = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| d.min(left.into()))
                .unwrap_or(left.into());
            let _ = phy_wait(self.device.as_raw_fd(), Some(wait));
        }
    }
}

/// `arp or (ip and udp dst port 68 and not a fragment)`, as classic BPF.
fn attach_filter(fd: i32) -> std::io::Result<()> {
    #[repr(C)]
    struct SockFilter {
        code: u16,
        jt: u8,
        jf: u8,
        k: u32,
    }
    #[repr(C)]
    struct SockFprog {
        len: u16,
        filter: *const SockFilter,
    }
    const fn op(code: u16, jt: u8, jf: u8, k: u32) -> SockFilter {
        SockFilter { code, jt, jf, k }
    }
    // BPF opcodes (linux/filter.h).
    const LDH_ABS: u16 = 0x28;
    const LDB_ABS: u16 = 0x30;
    const LDXB_MSH: u16 = 0xb1;
    const LDH_IND: u16 = 0x48;
    const JEQ_K: u16 = 0x15;
    const JSET_K: u16 = 0x45;
    const RET_K: u16 = 0x06;
    let program = [
        op(LDH_ABS, 0, 0, 12),    // 0: ethertype
        op(JEQ_K, 8, 0, 0x0806),  // 1: ARP -> accept
        op(JEQ_K, 0, 8, 0x0800),  // 2: not IPv4 -> drop
        op(LDB_ABS, 0, 0, 23),    // 3: IP protocol
        op(JEQ_K, 0, 6, 17),      // 4: not UDP -> drop
        op(LDH_ABS, 0, 0, 20),    // 5: flags + fragment offset
        op(JSET_K, 4, 0, 0x1fff), // 6: a fragment -> drop
        op(LDXB_MSH, 0, 0, 14),   // 7: X = IP header length
        op(LDH_IND, 0, 0, 16),    // 8: UDP destination port
        op(JEQ_K, 0, 1, 68),      // 9: not 68 -> drop
        op(RET_K, 0, 0, 0xffff),  // 10: accept
        op(RET_K, 0, 0, 0),       // 11: drop
    ];
    let prog = SockFprog {
        len: program.len() as u16,
        filter: program.as_ptr(),
    };
    // SAFETY: prog points at `program`, alive for the call; the kernel copies the program.
    let rc = unsafe {
        nix::libc::setsockopt(
            fd,
            nix::libc::SOL_SOCKET,
            nix::libc::SO_ATTACH_FILTER,
            (&prog as *const SockFprog).cast(),
            std::mem::size_of::<SockFprog>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
