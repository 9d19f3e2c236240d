//! `clk pki`: the hub's private PKI, run on the operator's machine. A root CA (its key best
//! kept offline after `init`) signs one intermediate CA, which issues every appliance's
//! certificate (server and client use: brokers serve and connect to their peers with the
//! same one) and every branch's client certificate (its CN is its principal,
//! `User:branch-017`), renews them before they expire, revokes them (a CRL the appliances
//! load) and writes the cloud-init user-data that hands one VM its files.
//!
//! Keys are made here, not on the appliances: an appliance has no shell and no enrollment
//! channel before it has a certificate, and a branch's USB stick or a Proxmox VM gets its
//! whole configuration from its cloud-init drive anyway. A private key leaves this machine
//! only inside the cloud-init user-data of the one VM that owns it. (A signing service such
//! as Vault's PKI could issue instead: the inventory is the only state, and `issue` the only
//! place that signs.)
//!
//! The directory holds `root.pem`/`root.key`, `intermediate.pem`/`intermediate.key`,
//! `ca.pem` (what appliances and clients trust: the root), `crl.pem` (signed by the
//! intermediate), `inventory.json` (every certificate issued: names, serial, expiry,
//! revocation) and `issued/<name>.pem` (leaf then intermediate) with `issued/<name>.key`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

#[cfg(test)]
mod tests;

#[derive(Subcommand)]
pub enum PkiCommand {
    /// Create the root CA and the intermediate CA that issues everything else.
    Init {
        #[command(flatten)]
        at: Dir,
        /// The CAs' common name.
        #[arg(long, default_value = "Hub")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        root_days: i64,
        #[arg(long, default_value_t = 1825)]
        intermediate_days: i64,
    },
    /// Issue an appliance's certificate: for serving and for connecting to its peers. SANs
    /// are its DNS names and IP addresses (its advertised hosts).
    Server {
        #[command(flatten)]
        at: Dir,
        name: String,
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Issue a client certificate whose CN (the name) becomes the principal `User:<name>`.
    Client {
        #[command(flatten)]
        at: Dir,
        name: String,
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Issue client certificates for branches 1..=count (`branch-001`...), skipping those
    /// that have one.
    Branches {
        #[command(flatten)]
        at: Dir,
        #[arg(long, default_value_t = 60)]
        count: u32,
        #[arg(long, default_value = "branch-")]
        prefix: String,
        #[arg(long, default_value_t = 397)]
        days: i64,
    },
    /// Issue anew (new key, same names and validity length) every certificate, or those
    /// named, that expires within `--within-days` and is not revoked.
    Renew {
        #[command(flatten)]
        at: Dir,
        names: Vec<String>,
        #[arg(long, default_value_t = 30)]
        within_days: i64,
    },
    /// Revoke a certificate: it is put on the CRL, which is written again.
    Revoke {
        #[command(flatten)]
        at: Dir,
        name: String,
    },
    /// Write the CRL again (appliances refuse a CRL past its next update; run this before).
    Crl {
        #[command(flatten)]
        at: Dir,
        /// Days until the CRL's next update.
        #[arg(long, default_value_t = 30)]
        days: i64,
    },
    /// Print the cloud-init user-data that gives one VM its certificate, key, CA and CRL
    /// (`write_files` under /config/tls) and points its `[tls]` at them (`clk_config`).
    CloudInit {
        #[command(flatten)]
        at: Dir,
        name: String,
        /// The VM's host name in the user-data.
        #[arg(long)]
        hostname: Option<String>,
        /// Write it here (0600) instead of to stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Send a running appliance its renewed certificate and key, with the CRL, through its
    /// admin API (`POST /v1/tls`, with the `[admin] token`); it loads them within its
    /// `reload_check`. Update its cloud-init user-data too, for its next boot.
    Push {
        #[command(flatten)]
        at: Dir,
        name: String,
        /// The appliance's admin port, `host:port`.
        #[arg(long)]
        admin: String,
        #[arg(long, env = "CLK_ADMIN_TOKEN")]
        token: String,
    },
    /// Send the CRL alone to running appliances (after `revoke`).
    PushCrl {
        #[command(flatten)]
        at: Dir,
        /// Admin ports, `host:port`, one per appliance.
        #[arg(long = "admin", required = true)]
        admins: Vec<String>,
        #[arg(long, env = "CLK_ADMIN_TOKEN")]
        token: String,
    },
    /// Every certificate with its expiry and state.
    List {
        #[command(flatten)]
        at: Dir,
    },
}

#[derive(Args)]
pub struct Dir {
    /// The PKI directory.
    #[arg(long, default_value = "pki", env = "CLK_PKI_DIR")]
    dir: PathBuf,
}

pub fn run(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            at,
            name,
            root_days,
            intermediate_days,
        } => Pki::init(&at.dir, &name, root_days, intermediate_days).map(drop),
        PkiCommand::Server {
            at,
            name,
            sans,
            days,
        } => Pki::open(&at.dir)?
            .issue(&name, Kind::Server, &sans, days)
            .map(drop),
        PkiCommand::Client { at, name, days } => Pki::open(&at.dir)?
            .issue(&name, Kind::Client, &[], days)
            .map(drop),
        PkiCommand::Branches {
            at,
            count,
            prefix,
            days,
        } => {
            let mut pki = Pki::open(&at.dir)?;
            for i in 1..=count {
                let name = format!("{prefix}{i:03}");
                if !pki.inventory.certificates.contains_key(&name) {
                    pki.issue(&name, Kind::Client, &[], days)?;
                }
            }
            Ok(())
        }
        PkiCommand::Renew {
            at,
            names,
            within_days,
        } => {
            let renewed = Pki::open(&at.dir)?.renew(&names, within_days)?;
            for n in &renewed {
                println!("renewed {n}");
            }
            Ok(())
        }
        PkiCommand::Revoke { at, name } => Pki::open(&at.dir)?.revoke(&name),
        PkiCommand::Crl { at, days } => Pki::open(&at.dir)?.write_crl(days),
        PkiCommand::CloudInit {
            at,
            name,
            hostname,
            out,
        } => {
            let text = Pki::open(&at.dir)?.cloud_init(&name, hostname.as_deref())?;
            match out {
                Some(path) => write_private(&path, text.as_bytes()),
                None => {
                    std::io::stdout().write_all(text.as_bytes())?;
                    Ok(())
                }
            }
        }
        PkiCommand::Push {
            at,
            name,
            admin,
            token,
        } => {
            let pki = Pki::open(&at.dir)?;
            let update = pki.update_for(Some(&name))?;
            push(&admin, &token, &update, &at.dir)
        }
        PkiCommand::PushCrl { at, admins, token } => {
            let update = Pki::open(&at.dir)?.update_for(None)?;
            for admin in &admins {
                push(admin, &token, &update, &at.dir)?;
            }
            Ok(())
        }
        PkiCommand::List { at } => {
            let pki = Pki::open(&at.dir)?;
            for (name, e) in &pki.inventory.certificates {
                let state = match e.revoked_unix {
                    Some(_) => "revoked",
                    None if e.not_after_unix < now().unix_timestamp() => "expired",
                    None => "valid",
                };
                let until = OffsetDateTime::from_unix_timestamp(e.not_after_unix)?.date();
                println!(
                    "{name:<24} {:<6} serial {:<5} until {until} {state}",
                    e.kind.name(),
                    e.serial
                );
            }
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An appliance: server and client authentication, SANs.
    Server,
    /// A branch or an operator: client authentication, CN only.
    Client,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Server => "server",
            Kind::Client => "client",
        }
    }
}

/// One certificate issued (the latest for its name).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    pub sans: Vec<String>,
    pub serial: u64,
    pub days: i64,
    pub not_after_unix: i64,
    pub revoked_unix: Option<i64>,
    /// Serials issued before this one for the name (renewed, or revoked with it).
    #[serde(default)]
    pub earlier_serials: Vec<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub ca_name: String,
    pub next_serial: u64,
    pub crl_number: u64,
    pub certificates: BTreeMap<String, Entry>,
    /// Every serial revoked, with when: the CRL lists them all.
    pub revoked: BTreeMap<u64, i64>,
}

pub struct Pki {
    dir: PathBuf,
    pub inventory: Inventory,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Names become file names and CNs: letters, digits, `.`, `_` and `-` only.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        bail!("{name:?}: a name is 1 to 64 letters, digits, '.', '_' or '-'")
    }
}

/// Write a file only its owner may read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    tls::install::write_file(path, bytes, 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn ca_params(name: &str, path_len: u8, days: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, "Clickceler hub PKI");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now() - Duration::hours(1);
    p.not_after = now() + Duration::days(days);
    p
}

impl Pki {
    /// Create the CAs in `dir` (which must not hold a PKI already).
    pub fn init(
        dir: &Path,
        name: &str,
        root_days: i64,
        intermediate_days: i64,
    ) -> anyhow::Result<Pki> {
        if dir.join("inventory.json").exists() {
            bail!("{} holds a PKI already", dir.display());
        }
        std::fs::create_dir_all(dir.join("issued"))?;
        let root_key = KeyPair::generate()?;
        let root_params = ca_params(&format!("{name} root CA"), 1, root_days);
        let root = root_params.self_signed(&root_key)?;
        let root_key_pem = root_key.serialize_pem();
        let root_issuer = Issuer::new(root_params, root_key);
        let key = KeyPair::generate()?;
        let params = ca_params(&format!("{name} intermediate CA"), 0, intermediate_days);
        let intermediate = params.signed_by(&key, &root_issuer)?;
        write_public(&dir.join("root.pem"), &root.pem())?;
        write_public(&dir.join("ca.pem"), &root.pem())?;
        write_private(&dir.join("root.key"), root_key_pem.as_bytes())?;
        write_public(&dir.join("intermediate.pem"), &intermediate.pem())?;
        write_private(
            &dir.join("intermediate.key"),
            key.serialize_pem().as_bytes(),
        )?;
        let mut pki = Pki {
            dir: dir.to_path_buf(),
            inventory: Inventory {
                ca_name: name.to_string(),
                next_serial: 1000,
                ..Inventory::default()
            },
            intermediate: Issuer::new(params, key),
            intermediate_pem: intermediate.pem(),
        };
        pki.write_crl(30)?;
        Ok(pki)
    }

    pub fn open(dir: &Path) -> anyhow::Result<Pki> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).with_context(|| {
                format!(
                    "reading {} (run `clk pki init` first)",
                    dir.join(f).display()
                )
            })
        };
        let inventory: Inventory = serde_json::from_str(&read("inventory.json")?)?;
        let intermediate_pem = read("intermediate.pem")?;
        let key = KeyPair::from_pem(&read("intermediate.key")?)?;
        let intermediate = Issuer::from_ca_cert_pem(&intermediate_pem, key)?;
        Ok(Pki {
            dir: dir.to_path_buf(),
            inventory,
            intermediate,
            intermediate_pem,
        })
    }

    fn save(&self) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(&self.inventory)?;
        let tmp = self.dir.join("inventory.json.tmp");
        write_private(&tmp, text.as_bytes())?;
        std::fs::rename(&tmp, self.dir.join("inventory.json"))?;
        Ok(())
    }

    pub fn certificate_path(&self, name: &str) -> PathBuf {
        self.dir.join("issued").join(format!("{name}.pem"))
    }

    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join("issued").join(format!("{name}.key"))
    }

    /// Issue (or issue anew) `name`'s certificate.
    pub fn issue(
        &mut self,
        name: &str,
        kind: Kind,
        sans: &[String],
        days: i64,
    ) -> anyhow::Result<u64> {
        check_name(name)?;
        if !(1..=825).contains(&days) {
            bail!("--days {days}: 1 to 825 (clients refuse longer-lived server certificates)");
        }
        // rcgen's default name holds a CN already: start empty. Most significant first, so
        // the RFC 2253 subject principal mapping rules see is `CN=branch-017,O=Hub`.
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, self.inventory.ca_name.as_str());
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = match kind {
            Kind::Server => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Kind::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(
                    s.as_str()
                        .try_into()
                        .with_context(|| format!("SAN {s:?}"))?,
                )),
            })
            .collect::<anyhow::Result<_>>()?;
        let serial = self.inventory.next_serial;
        p.serial_number = Some(SerialNumber::from(serial));
        p.not_before = now() - Duration::hours(1);
        p.not_after = now() + Duration::days(days);
        p.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = p.signed_by(&key, &self.intermediate)?;
        // The chain a peer needs: the leaf, then the intermediate (the root is the anchor).
        write_public(
            &self.certificate_path(name),
            &format!("{}{}", cert.pem(), self.intermediate_pem),
        )?;
        write_private(&self.key_path(name), key.serialize_pem().as_bytes())?;
        let earlier = self.inventory.certificates.get(name).map(|e| {
            let mut s = e.earlier_serials.clone();
            s.push(e.serial);
            s
        });
        self.inventory.next_serial += 1;
        self.inventory.certificates.insert(
            name.to_string(),
            Entry {
                kind,
                sans: sans.to_vec(),
                serial,
                days,
                not_after_unix: p.not_after.unix_timestamp(),
                revoked_unix: None,
                earlier_serials: earlier.unwrap_or_default(),
            },
        );
        self.save()?;
        Ok(serial)
    }

    /// Renew what expires within `within_days` (of `names`, or every one); returns the names.
    pub fn renew(&mut self, names: &[String], within_days: i64) -> anyhow::Result<Vec<String>> {
        let horizon = (now() + Duration::days(within_days)).unix_timestamp();
        for n in names {
            if !self.inventory.certificates.contains_key(n) {
                bail!("no certificate named {n:?}");
            }
        }
        let due: Vec<(String, Entry)> = self
            .inventory
            .certificates
            .iter()
            .filter(|(n, e)| (names.is_empty() || names.contains(n)) && e.revoked_unix.is_none())
            .filter(|(_, e)| e.not_after_unix <= horizon)
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        for (name, e) in &due {
            self.issue(name, e.kind, &e.sans, e.days)?;
        }
        Ok(due.into_iter().map(|(n, _)| n).collect())
    }

    /// Revoke `name`'s certificate (and every earlier one of the name) and write the CRL.
    pub fn revoke(&mut self, name: &str) -> anyhow::Result<()> {
        let at = now().unix_timestamp();
        let e = self
            .inventory
            .certificates
            .get_mut(name)
            .with_context(|| format!("no certificate named {name:?}"))?;
        e.revoked_unix = Some(at);
        let serials: Vec<u64> = e
            .earlier_serials
            .iter()
            .copied()
            .chain([e.serial])
            .collect();
        for s in serials {
            self.inventory.revoked.entry(s).or_insert(at);
        }
        self.write_crl(30)
    }

    /// Sign and write `crl.pem`, valid for `days`.
    pub fn write_crl(&mut self, days: i64) -> anyhow::Result<()> {
        self.inventory.crl_number += 1;
        let revoked = self
            .inventory
            .revoked
            .iter()
            .map(|(serial, at)| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(*at)?,
                    reason_code: Some(RevocationReason::Unspecified),
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let crl = CertificateRevocationListParams {
            this_update: now() - Duration::minutes(5),
            next_update: now() + Duration::days(days),
            crl_number: SerialNumber::from(self.inventory.crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.intermediate)?;
        write_public(&self.dir.join("crl.pem"), &crl.pem()?)?;
        self.save()
    }

    /// What `POST /v1/tls` carries: `name`'s certificate and key with the CRL, or the CRL.
    pub fn update_for(&self, name: Option<&str>) -> anyhow::Result<tls::install::TlsUpdate> {
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))
        };
        let mut update = tls::install::TlsUpdate {
            crl: Some(read(self.dir.join("crl.pem"))?),
            ..Default::default()
        };
        if let Some(name) = name {
            let e = self
                .inventory
                .certificates
                .get(name)
                .with_context(|| format!("no certificate named {name:?}"))?;
            if e.revoked_unix.is_some() {
                bail!("{name}'s certificate is revoked: issue it anew first");
            }
            update.certificate = Some(read(self.certificate_path(name))?);
            update.key = Some(read(self.key_path(name))?);
        }
        Ok(update)
    }

    /// The cloud-init user-data for the VM that owns `name`'s certificate.
    pub fn cloud_init(&self, name: &str, hostname: Option<&str>) -> anyhow::Result<String> {
        let update = self.update_for(Some(name))?;
        let ca = std::fs::read_to_string(self.dir.join("ca.pem")).context("reading ca.pem")?;
        let given = |f: Option<String>| f.expect("update_for gives a name's certificate and key");
        let files = [
            (
                "/config/tls/certificate.pem",
                "0644",
                given(update.certificate),
            ),
            ("/config/tls/key.pem", "0600", given(update.key)),
            ("/config/tls/ca.pem", "0644", ca),
            ("/config/tls/crl.pem", "0644", given(update.crl)),
        ];
        let mut out = String::from("#cloud-config\n");
        if let Some(h) = hostname {
            check_name(h)?;
            out.push_str(&format!("hostname: {h}\n"));
        }
        out.push_str("write_files:\n");
        for (path, mode, content) in files {
            out.push_str(&format!(
                "  - path: {path}\n    permissions: \"{mode}\"\n    content: |\n"
            ));
            for line in content.lines() {
                out.push_str(&format!("      {line}\n"));
            }
        }
        out.push_str(
            "clk_config: |\n  [tls]\n  certificate = \"/config/tls/certificate.pem\"\n  \
             key = \"/config/tls/key.pem\"\n  client_ca = \"/config/tls/ca.pem\"\n  \
             server_ca = \"/config/tls/ca.pem\"\n  crl = \"/config/tls/crl.pem\"\n",
        );
        Ok(out)
    }
}

/// Send `update` to the admin port `admin` (`https://...` is checked against `clk
/// --admin-ca`, or else this PKI's own root).
fn push(
    admin: &str,
    token: &str,
    update: &tls::install::TlsUpdate,
    pki: &Path,
) -> anyhow::Result<()> {
    let body = serde_json::to_string(update)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let own_root;
    let tls = match crate::admin_tls()? {
        Some(t) => Some(t),
        None if admin.starts_with("https://") => {
            own_root = tls::Connector::new(&pki.join("ca.pem"), None)?;
            Some(&own_root)
        }
        None => None,
    };
    let (status, answer) = runtime.block_on(telemetry::admin::call(
        admin,
        tls,
        hyper::Method::POST,
        "/v1/tls",
        Some(body),
        Some(token),
        std::time::Duration::from_secs(30),
    ))?;
    if !status.is_success() {
        bail!("{admin} refused the TLS files ({status}): {answer}");
    }
    println!("{admin}: {answer}");
    Ok(())
}
