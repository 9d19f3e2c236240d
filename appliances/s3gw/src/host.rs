//! Virtual-host style addressing: `<bucket>.<domain>[:port]` names the bucket for each
//! configured domain; any other Host (an IP address, a load balancer's name) means path
//! style. s3s's own `MultiDomain` does not strip the port, and treats every unknown host as a
//! bucket name (CNAME style), which would turn `10.0.0.5:9000/bucket/key` into bucket
//! "10.0.0.5:9000".

use s3s::S3Result;
use s3s::host::{S3Host, VirtualHost};

pub struct Domains(Vec<String>);

impl Domains {
    pub fn new(domains: &[String]) -> Domains {
        Domains(domains.iter().map(|d| d.to_ascii_lowercase()).collect())
    }
}

impl S3Host for Domains {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> S3Result<VirtualHost<'a>> {
        let name = strip_port(host);
        for domain in &self.0 {
            if let Some(bucket) = name
                .len()
                .checked_sub(domain.len() + 1)
                .filter(|&cut| {
                    name[cut + 1..].eq_ignore_ascii_case(domain) && name.as_bytes()[cut] == b'.'
                })
                .map(|cut| &name[..cut])
                .filter(|b| !b.is_empty())
            {
                return Ok(
                    VirtualHost::new(domain.as_str()).with_bucket(bucket.to_ascii_lowercase())
                );
            }
        }
        Ok(VirtualHost::new(name))
    }
}

/// `host[:port]` or `[v6]:port` without the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_under_the_domains_else_path_style() {
        let d = Domains::new(&["s3.hub.example".into()]);
        let bucket = |h: &str| d.parse_host_header(h).unwrap().bucket().map(String::from);
        assert_eq!(
            bucket("biometrics.s3.hub.example:9000").as_deref(),
            Some("biometrics")
        );
        assert_eq!(
            bucket("Biometrics.S3.Hub.Example").as_deref(),
            Some("biometrics")
        );
        assert_eq!(bucket("s3.hub.example:9000"), None);
        assert_eq!(bucket("10.0.0.5:9000"), None);
        assert_eq!(bucket("[::1]:9000"), None);
        assert_eq!(bucket("evil-s3.hub.example"), None);
        assert_eq!(bucket("lb.internal"), None);
    }
}
