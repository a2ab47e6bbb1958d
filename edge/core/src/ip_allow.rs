//! Client IP allow-lists of keys (`KeyRecord::allowed_ips`): IPv4 and IPv6
//! CIDR ranges and bare addresses.
//!
//! The rule is fail-closed per entry and open only for an empty list: an
//! empty list allows every client; otherwise the client must match at least
//! one well-formed entry. A malformed entry (bad address, prefix too long,
//! stray characters) never matches anything, so a typo can only lock a key
//! down, never open it. An IPv4-mapped IPv6 client address (`::ffff:a.b.c.d`)
//! is compared as the IPv4 address it carries, and a client address that does
//! not parse matches nothing.

use std::net::IpAddr;

/// One parsed allow-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or `v6/n`. Surrounding
    /// whitespace is ignored; anything else that is not exactly that is `None`.
    pub fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim();
        let (address, prefix) = match entry.split_once('/') {
            Some((address, prefix)) => {
                if prefix.is_empty() || prefix.len() > 3 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                (address, Some(prefix.parse::<u8>().ok()?))
            }
            None => (entry, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        // `::ffff:a.b.c.d/n` (n >= 96) is the IPv4 range it carries.
        if let IpAddr::V6(v6) = network {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Some(Self { network: IpAddr::V4(v4), prefix: prefix - 96 });
            }
        }
        Some(Self { network, prefix })
    }

    /// Whether `ip` is inside this range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses become the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `client_ip` (the `CF-Connecting-IP` header) may use a key whose
/// allow-list is `allowed`. Empty list: everyone. Otherwise the address must
/// parse and fall in at least one well-formed entry.
pub fn ip_allowed(allowed: &[String], client_ip: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Ok(ip) = client_ip.trim().parse::<IpAddr>() else { return false };
    allowed.iter().filter_map(|entry| IpRange::parse(entry)).any(|range| range.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn list(entries: &[&str]) -> Vec<String> {
        entries.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn empty_list_allows_everyone() {
        assert!(ip_allowed(&[], "203.0.113.7"));
        assert!(ip_allowed(&[], "not an address"));
    }

    #[test]
    fn ipv4_cidr_and_bare_addresses() {
        let allowed = list(&["10.0.0.0/8", "192.168.1.10", " 172.16.0.0/12 "]);
        assert!(ip_allowed(&allowed, "10.255.3.4"));
        assert!(ip_allowed(&allowed, "192.168.1.10"));
        assert!(!ip_allowed(&allowed, "192.168.1.11"));
        assert!(ip_allowed(&allowed, "172.31.255.255"));
        assert!(!ip_allowed(&allowed, "172.32.0.0"));
        assert!(!ip_allowed(&allowed, "11.0.0.1"));
        assert!(ip_allowed(&list(&["0.0.0.0/0"]), "8.8.8.8"));
        assert!(ip_allowed(&list(&["1.2.3.4/32"]), "1.2.3.4"));
        // Host bits set in the network are ignored, as in most firewalls.
        assert!(ip_allowed(&list(&["10.1.2.3/8"]), "10.9.9.9"));
    }

    #[test]
    fn ipv6_cidr_and_bare_addresses() {
        let allowed = list(&["2001:db8::/32", "::1"]);
        assert!(ip_allowed(&allowed, "2001:db8:ffff::1"));
        assert!(!ip_allowed(&allowed, "2001:db9::1"));
        assert!(ip_allowed(&allowed, "::1"));
        assert!(!ip_allowed(&allowed, "::2"));
        assert!(ip_allowed(&list(&["::/0"]), "2606:4700::1111"));
        assert!(!ip_allowed(&list(&["::/0"]), "1.1.1.1"), "an IPv6 range never matches IPv4");
        assert!(ip_allowed(&list(&["2001:db8:0:0:0:0:0:1/128"]), "2001:db8::1"));
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_ranges() {
        assert!(ip_allowed(&list(&["10.0.0.0/8"]), "::ffff:10.1.2.3"));
        assert!(!ip_allowed(&list(&["10.0.0.0/8"]), "::ffff:11.1.2.3"));
        assert!(ip_allowed(&list(&["::ffff:10.0.0.0/104"]), "10.1.2.3"));
    }

    #[test]
    fn malformed_entries_never_match() {
        for bad in [
            "",
            "/",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "10.0.0.0.0",
            "::/129",
            "2001:db8::/1000",
            "10.0.0.0 /8",
            "10.0.0.0/ 8",
            "*",
            "10.*.*.*",
            "localhost",
            "0x0a000000",
            "10.0.0.0/0008",
        ] {
            assert!(IpRange::parse(bad).is_none(), "{bad:?} parsed");
            assert!(!ip_allowed(&list(&[bad]), "10.0.0.1"), "{bad:?} matched");
        }
        // A bad entry beside a good one does not spoil the good one.
        assert!(ip_allowed(&list(&["garbage", "10.0.0.0/8"]), "10.0.0.1"));
    }

    #[test]
    fn malformed_client_addresses_are_refused() {
        let allowed = list(&["0.0.0.0/0", "::/0"]);
        for bad in ["", "unknown", "10.0.0.1:443", "[::1]", "10.0.0.256", "1.2.3.4, 5.6.7.8"] {
            assert!(!ip_allowed(&allowed, bad), "{bad:?} allowed");
        }
        assert!(ip_allowed(&allowed, " 10.0.0.1 "), "surrounding whitespace is trimmed");
    }

    proptest! {
        #[test]
        fn v4_membership_matches_arithmetic(net in any::<u32>(), ip in any::<u32>(), prefix in 0u8..=32) {
            let entry = format!("{}/{prefix}", Ipv4Addr::from(net));
            let shift = 32 - u32::from(prefix);
            let expected = prefix == 0 || (net >> shift) == (ip >> shift);
            prop_assert_eq!(ip_allowed(&[entry], &Ipv4Addr::from(ip).to_string()), expected);
        }

        #[test]
        fn v6_membership_matches_arithmetic(net in any::<u128>(), ip in any::<u128>(), prefix in 0u8..=128) {
            let entry = format!("{}/{prefix}", Ipv6Addr::from(net));
            let shift = 128 - u32::from(prefix);
            let expected = prefix == 0 || (net >> shift) == (ip >> shift);
            let client = Ipv6Addr::from(ip);
            // Mapped clients are compared as IPv4, which a v6 range never matches.
            prop_assume!(client.to_ipv4_mapped().is_none());
            prop_assert_eq!(ip_allowed(&[entry], &client.to_string()), expected);
        }

        #[test]
        fn arbitrary_entries_never_panic(entry in ".{0,40}", client in ".{0,40}") {
            let _ = ip_allowed(&[entry], &client);
        }
    }
}
