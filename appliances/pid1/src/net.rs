//! Networking without userland: links, addresses, MTU and the default route set over
//! rtnetlink; addresses come from cloud-init (matched by MAC), else from the image's baked
//! defaults, else from DHCP ([`crate::dhcp`]).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::cloudinit::{CloudInit, InterfaceConfig};
use crate::dhcp::{DhcpClient, Lease};
use crate::system::{Cidr, Network};

/// One network interface as the kernel names it.
#[derive(Debug, Clone)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

impl Link {
    pub fn mac_string(&self) -> Option<String> {
        self.mac.map(|m| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        })
    }
}

/// What to do with one interface.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
    pub gateway: Option<Ipv4Addr>,
    pub dhcp: bool,
    /// Where the settings came from, for the log.
    pub source: &'static str,
}

/// Decide an interface's settings: cloud-init wins, then the image's defaults, then DHCP.
/// The MTU comes from cloud-init if given, else from the hardware profile.
pub fn plan(link: &Link, ci: &CloudInit, baked: &Network) -> Plan {
    let mac = link.mac_string();
    let from_ci: Option<&InterfaceConfig> = ci
        .interfaces
        .iter()
        .find(|i| i.mac.is_some() && i.mac == mac)
        .or_else(|| {
            ci.interfaces
                .iter()
                .find(|i| i.mac.is_none() && i.name.as_deref() == Some(&link.name))
        });
    let defaults = baked.interfaces.get(&link.name);
    let profile_mtu = defaults.and_then(|d| d.mtu);
    if let Some(i) = from_ci {
        return Plan {
            mtu: i.mtu.or(profile_mtu),
            addresses: i.addresses.clone(),
            gateway: i.gateway,
            dhcp: i.dhcp || i.addresses.is_empty(),
            source: "cloud-init",
        };
    }
    match defaults.and_then(|d| d.address.map(|a| (a, d.gateway))) {
        Some((address, gateway)) => Plan {
            mtu: profile_mtu,
            addresses: vec![address],
            gateway,
            dhcp: false,
            source: "image",
        },
        None => Plan {
            mtu: profile_mtu,
            addresses: vec![],
            gateway: None,
            dhcp: true,
            source: "dhcp",
        },
    }
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Open a netlink connection; its driver runs on the current tokio runtime.
    pub fn connect() -> anyhow::Result<Netlink> {
        let (conn, handle, _) = rtnetlink::new_connection().context("open rtnetlink socket")?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    pub async fn links(&self) -> anyhow::Result<Vec<Link>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("list network links")?;
        Ok(msgs.into_iter().map(link_of).collect())
    }

    pub async fn up(&self, link: &Link, mtu: Option<u32>) -> anyhow::Result<()> {
        let mut msg = LinkUnspec::new_with_index(link.index).up();
        if let Some(mtu) = mtu {
            msg = msg.mtu(mtu);
        }
        self.handle
            .link()
            .set(msg.build())
            .execute()
            .await
            .with_context(|| format!("bring {} up (mtu {mtu:?})", link.name))
    }

    pub async fn add_address(&self, link: &Link, cidr: Cidr) -> anyhow::Result<()> {
        match self
            .handle
            .address()
            .add(link.index, IpAddr::V4(cidr.addr), cidr.prefix)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -nix::libc::EEXIST => Ok(()),
            Err(e) => Err(e).with_context(|| format!("add {cidr} to {}", link.name)),
        }
    }

    pub async fn remove_address(&self, link: &Link, cidr: Cidr) -> anyhow::Result<()> {
        let mut addrs = self
            .handle
            .address()
            .get()
            .set_link_index_filter(link.index)
            .set_address_filter(IpAddr::V4(cidr.addr))
            .execute();
        while let Some(msg) = addrs.try_next().await? {
            self.handle.address().del(msg).execute().await?;
        }
        Ok(())
    }

    pub async fn default_route(&self, link: &Link, gateway: Ipv4Addr) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gateway)
            .output_interface(link.index)
            .build();
        match self.handle.route().add(route).replace().execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("default route via {gateway} on {}", link.name))
            }
        }
    }
}

fn link_of(msg: LinkMessage) -> Link {
    let mut link = Link {
        index: msg.header.index,
        name: String::new(),
        mac: None,
    };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => {
                link.mac = Some([a[0], a[1], a[2], a[3], a[4], a[5]]);
            }
            _ => {}
        }
    }
    link
}

/// Bring every interface up as planned. Interfaces using DHCP get a client thread that keeps
/// the lease for the life of the appliance; this returns once each has its first lease or
/// `dhcp_timeout` passed (the appliance still starts: an address may come later).
pub async fn configure(ci: &CloudInit, baked: &Network) -> anyhow::Result<Vec<(Link, Plan)>> {
    let nl = Netlink::connect()?;
    let links = nl.links().await?;
    let mut planned = vec![];
    let mut leases = vec![];
    for link in links {
        if link.name == "lo" {
            nl.up(&link, None).await?;
            continue;
        }
        let Some(mac) = link.mac else { continue };
        let p = plan(&link, ci, baked);
        nl.up(&link, p.mtu).await?;
        for a in &p.addresses {
            nl.add_address(&link, *a).await?;
        }
        if let Some(gw) = p.gateway {
            nl.default_route(&link, gw).await?;
        }
        tracing::info!(interface = %link.name, mac = link.mac_string(), source = p.source,
            addresses = ?p.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            gateway = ?p.gateway, mtu = ?p.mtu, "interface configured");
        if p.dhcp {
            leases.push(spawn_dhcp(link.clone(), mac)?);
        }
        planned.push((link, p));
    }
    let timeout = Duration::from_secs(baked.dhcp_timeout_s);
    for first in leases {
        match tokio::time::timeout(timeout, first).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!(
                timeout_s = baked.dhcp_timeout_s,
                "no DHCP lease yet; going on"
            ),
        }
    }
    Ok(planned)
}

/// Start the DHCP client of one interface on its own thread; the returned receiver fires
/// when the first lease is applied.
fn spawn_dhcp(link: Link, mac: [u8; 6]) -> anyhow::Result<tokio::sync::oneshot::Receiver<()>> {
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name(format!("dhcp-{}", link.name))
        .spawn(move || {
            // The raw socket is not Send: it is opened on the thread that uses it.
            let mut client = match DhcpClient::new(&link.name, mac) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(interface = %link.name, error = %e, "cannot open a raw socket for DHCP");
                    return;
                }
            };
            let mut first = Some(first_tx);
            let mut current: Option<Lease> = None;
            loop {
                let Ok(event) = client.next_event(Duration::from_secs(3600)) else {
                    continue;
                };
                let previous = current.take();
                let result = rt.block_on(apply_lease(&link, previous.as_ref(), event.as_ref()));
                if let Err(e) = result {
                    tracing::error!(interface = %link.name, error = format!("{e:#}"), "DHCP lease not applied");
                }
                if event.is_some()
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(());
                }
                current = event;
            }
        })
        .context("start the DHCP thread")?;
    Ok(first_rx)
}

async fn apply_lease(link: &Link, old: Option<&Lease>, new: Option<&Lease>) -> anyhow::Result<()> {
    let nl = Netlink::connect()?;
    if let Some(old) = old
        && new.map(|n| n.address) != Some(old.address)
    {
        nl.remove_address(link, old.address).await?;
    }
    match new {
        Some(lease) => {
            nl.add_address(link, lease.address).await?;
            if let Some(gw) = lease.router {
                nl.default_route(link, gw).await?;
            }
            if !lease.dns.is_empty() {
                crate::identity::write_resolv_conf(&lease.dns, &[]);
            }
            tracing::info!(interface = %link.name, address = %lease.address, router = ?lease.router,
                dns = ?lease.dns, "DHCP lease applied");
        }
        // The client reports "deconfigured" once as it starts; only a held lease can be lost.
        None if old.is_some() => tracing::warn!(interface = %link.name, "DHCP lease lost"),
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::InterfaceDefaults;

    fn link(name: &str, mac: [u8; 6]) -> Link {
        Link {
            index: 2,
            name: name.into(),
            mac: Some(mac),
        }
    }

    #[test]
    fn cloud_init_by_mac_wins_and_keeps_the_profile_mtu() {
        let mut ci = CloudInit::default();
        ci.interfaces.push(InterfaceConfig {
            mac: Some("52:54:00:12:34:56".into()),
            name: Some("ens18".into()),
            mtu: None,
            addresses: vec!["10.0.2.15/24".parse().unwrap()],
            gateway: Some("10.0.2.2".parse().unwrap()),
            dhcp: false,
        });
        let mut baked = Network::default();
        baked.interfaces.insert(
            "eth0".into(),
            InterfaceDefaults {
                mtu: Some(9000),
                ..Default::default()
            },
        );
        let p = plan(
            &link("eth0", [0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            &ci,
            &baked,
        );
        assert_eq!(p.source, "cloud-init");
        assert_eq!(p.mtu, Some(9000));
        assert!(!p.dhcp);
        // Another MAC falls back to DHCP.
        let p = plan(&link("eth1", [0x52, 0x54, 0, 0, 0, 1]), &ci, &baked);
        assert!(p.dhcp);
        assert_eq!(p.source, "dhcp");
    }
}
