//! The client's address: the TCP peer, unless the peer is one of the
//! operator's own reverse proxies (`--trusted-proxies`); then the address
//! the proxies recorded in the one header they write (`--forwarded-header`:
//! `X-Forwarded-For`, as nginx and most load balancers do, or `Forwarded`,
//! RFC 7239). The other header is ignored: a proxy that writes one passes a
//! client's own copy of the other through untouched, and believing it
//! would let the client pick its address.
//!
//! The chain of addresses is read from the right, the hop nearest the
//! receiver first: each trusted proxy vouches for the entry to its left, and
//! the first entry that is not a trusted proxy is the client (as nginx's
//! `real_ip_recursive`). Whatever a client writes into these headers itself
//! lies to the left of what its first proxy adds, so it is never reached.
//!
//! - An entry that is not an address (`unknown`, an obfuscated `_name`,
//!   garbage, a `Forwarded` element without exactly one `for=`) ends the
//!   walk, and the client is the last address read: the trusted proxy that
//!   wrote the entry. Nothing beyond it is vouched for, and counting the
//!   failures of such requests against that proxy keeps the throttle on,
//!   where "no address" would turn it off.
//! - When every entry is a trusted proxy, the leftmost is the client: the
//!   request came from one of the proxy hosts itself.
//! - Empty list elements are skipped; no entry at all leaves the peer.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`, as a dual-stack socket
//! reports IPv4 peers) count as the IPv4 address, in the list and in
//! headers alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use actix_web::HttpRequest;
use actix_web::http::header::{FORWARDED, HeaderMap, HeaderName, HeaderValue, X_FORWARDED_FOR};
use ipnet::IpNet;

/// The reverse proxies whose forwarding header is believed: networks and
/// single addresses, validated on construction, and which header they
/// write. Empty by default: then every request's client is its TCP peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
    header: ForwardedHeader,
}

/// The header the trusted proxies record the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    Forwarded,
}

impl FromStr for ForwardedHeader {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => Ok(Self::XForwardedFor),
            "forwarded" => Ok(Self::Forwarded),
            _ => Err(format!("{text:?} is neither x-forwarded-for nor forwarded")),
        }
    }
}

impl fmt::Display for ForwardedHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XForwardedFor => "X-Forwarded-For",
            Self::Forwarded => "Forwarded",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustedProxiesError {
    #[error("{0:?} is not an address or a network such as 10.0.0.0/8, 127.0.0.1, ::1 or fd00::/8")]
    Invalid(String),
    #[error("{given:?} has address bits set past its prefix length; the network is {network}")]
    HostBits { given: String, network: IpNet },
}

impl FromStr for TrustedProxies {
    type Err = TrustedProxiesError;

    /// A comma-separated list; an empty one trusts nobody.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let networks = text.split(',').map(|entry| network(entry.trim())).collect::<Result<_, _>>()?;
        Ok(Self { networks, header: ForwardedHeader::default() })
    }
}

/// `10.0.0.0/8` or a single address. A network with bits set past its
/// prefix (`10.0.0.1/8`) is refused rather than widened: it is more likely
/// a typo for an address than a wish to trust a whole network.
fn network(entry: &str) -> Result<IpNet, TrustedProxiesError> {
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Ok(IpNet::from(addr.to_canonical()));
    }
    let net: IpNet = entry.parse().map_err(|_| TrustedProxiesError::Invalid(entry.to_owned()))?;
    match net.trunc() {
        network if network == net => Ok(net),
        network => Err(TrustedProxiesError::HostBits { given: entry.to_owned(), network }),
    }
}

/// As the start-up log line shows it.
impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.networks.is_empty() {
            return f.write_str("none");
        }
        let entries: Vec<String> = self.networks.iter().map(IpNet::to_string).collect();
        write!(f, "{} ({})", entries.join(","), self.header)
    }
}

impl TrustedProxies {
    /// The same proxies, writing the client's address into `header`.
    pub fn reading(self, header: ForwardedHeader) -> Self {
        Self { header, ..self }
    }

    fn trusts(&self, addr: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&addr))
    }

    /// The client of a request that came from `peer` with `headers` (see the
    /// module's documentation).
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.trusts(client) {
            return client;
        }
        for hop in hops(headers, self.header) {
            let Some(addr) = hop else { break };
            client = addr;
            if !self.trusts(addr) {
                break;
            }
        }
        client
    }
}

/// The client's address, as the throttle, the logs and the fleet status use
/// it; None only when the connection has no peer address.
pub fn client_ip(req: &HttpRequest, proxies: &TrustedProxies) -> Option<IpAddr> {
    req.peer_addr().map(|peer| proxies.client(peer.ip(), req.headers()))
}

/// The addresses in the forwarding header, the nearest hop first; None for
/// an entry that is not an address.
fn hops(headers: &HeaderMap, header: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let lines = |name: HeaderName| headers.get_all(name).rev().map(HeaderValue::as_bytes);
    match header {
        ForwardedHeader::Forwarded => {
            lines(FORWARDED).flat_map(|line| split_rev(line, b',')).filter_map(non_empty).map(forwarded_for).collect()
        }
        ForwardedHeader::XForwardedFor => lines(X_FORWARDED_FOR)
            .flat_map(|line| line.rsplit(|&b| b == b','))
            .filter_map(non_empty)
            .map(|entry| node(std::str::from_utf8(entry).ok()?))
            .collect(),
    }
}

/// A list element without its surrounding whitespace, unless it is empty
/// (which lists may contain and readers skip, RFC 9110 §5.6.1).
fn non_empty(element: &[u8]) -> Option<&[u8]> {
    Some(element.trim_ascii()).filter(|e| !e.is_empty())
}

/// The parts of `text` between the `sep`s outside quoted strings, the last
/// first. Read from the right, so that what the nearest proxy appended
/// splits the same whatever a client put before it (an unbalanced quote,
/// say): only the text to a separator's right decides whether it is quoted.
fn split_rev(text: &[u8], sep: u8) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut end = text.len();
    let mut quoted = false;
    for at in (0..text.len()).rev() {
        if text[at] == b'"' && !escaped(text, at) {
            quoted = !quoted;
        } else if text[at] == sep && !quoted {
            parts.push(&text[at + 1..end]);
            end = at;
        }
    }
    parts.push(&text[..end]);
    parts
}

/// Whether the byte at `at` follows an odd number of backslashes (a quoted
/// pair); a string's closing quote never does.
fn escaped(text: &[u8], at: usize) -> bool {
    text[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The address in a `Forwarded` element's one `for=` parameter.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut values = split_rev(element, b';').into_iter().filter_map(|pair| {
        let (name, value) = std::str::from_utf8(pair).ok()?.split_once('=')?;
        name.trim().eq_ignore_ascii_case("for").then(|| value.trim())
    });
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    node(&unquote(value)?)
}

/// A token as it is, or a quoted string's content with its quoted pairs
/// resolved; None for an unterminated quoted string.
fn unquote(value: &str) -> Option<String> {
    let Some(inner) = value.strip_prefix('"') else { return Some(value.to_owned()) };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(out)
}

/// An address as proxies write it: `192.0.2.7`, `2001:db8::7`, with a port
/// `192.0.2.7:4711`, `[2001:db8::7]`, `[2001:db8::7]:4711`; a port may be
/// obfuscated (`_p1`, RFC 7239 §6.3). Anything else is not an address.
fn node(text: &str) -> Option<IpAddr> {
    let addr = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !after.is_empty() && !after.strip_prefix(':').is_some_and(is_port) {
            return None;
        }
        IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?)
    } else if let Ok(addr) = text.parse::<IpAddr>() {
        addr
    } else {
        let (v4, port) = text.split_once(':')?;
        if !is_port(port) {
            return None;
        }
        IpAddr::V4(v4.parse::<Ipv4Addr>().ok()?)
    };
    Some(addr.to_canonical())
}

fn is_port(text: &str) -> bool {
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok();
    let obfuscated = text.strip_prefix('_').is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    });
    digits || obfuscated
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROXIES: &str = "127.0.0.1, 10.0.0.0/8, fd00::/8";

    /// Header lines: name, and value as bytes.
    type Lines<'a> = &'a [(&'a str, &'a [u8])];

    /// The client of a request from `peer` with these header lines, behind
    /// [`PROXIES`] that write `Forwarded` when the first line is one, else
    /// `X-Forwarded-For`.
    fn check(peer: &str, lines: Lines<'_>, expected: &str) {
        let header = match lines.first() {
            Some((FWD, _)) => ForwardedHeader::Forwarded,
            _ => ForwardedHeader::XForwardedFor,
        };
        let proxies = PROXIES.parse::<TrustedProxies>().expect("valid list").reading(header);
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_bytes(value).expect("value"),
            );
        }
        let got = proxies.client(peer.parse().expect("peer"), &headers);
        let shown: Vec<_> = lines.iter().map(|(name, value)| (name, String::from_utf8_lossy(value))).collect();
        assert_eq!(got, expected.parse::<IpAddr>().expect("expected"), "from {peer} with {shown:?}");
    }

    const XFF: &str = "x-forwarded-for";
    const FWD: &str = "forwarded";

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let cases: &[(&str, Lines<'_>, &str)] = &[
            // An untrusted peer's headers are ignored: no evading, no framing.
            ("192.0.2.66", &[(XFF, b"198.51.100.1")], "192.0.2.66"),
            ("192.0.2.66", &[(FWD, b"for=198.51.100.1")], "192.0.2.66"),
            ("127.0.0.1", &[], "127.0.0.1"),
            ("127.0.0.1", &[(XFF, b"192.0.2.7")], "192.0.2.7"),
            // A client's own entries lie left of what the proxy appended.
            ("127.0.0.1", &[(XFF, b"198.51.100.1, 192.0.2.7")], "192.0.2.7"),
            ("127.0.0.1", &[(XFF, b"garbage, 192.0.2.7")], "192.0.2.7"),
            ("127.0.0.1", &[(XFF, b"\xff\"=, 192.0.2.7")], "192.0.2.7"),
            // Through two proxies; trusted hops are skipped.
            ("127.0.0.1", &[(XFF, b"192.0.2.7, 10.0.0.5")], "192.0.2.7"),
            ("10.0.0.5", &[(XFF, b"192.0.2.7,10.9.9.9")], "192.0.2.7"),
            ("fd00::1", &[(XFF, b"192.0.2.7")], "192.0.2.7"),
            ("::ffff:127.0.0.1", &[(XFF, b"::ffff:192.0.2.7")], "192.0.2.7"),
            // Several lines are one list, in order.
            ("127.0.0.1", &[(XFF, b"198.51.100.1"), (XFF, b"192.0.2.7, 10.1.2.3")], "192.0.2.7"),
            ("127.0.0.1", &[(XFF, b"192.0.2.7"), (XFF, b"10.1.2.3")], "192.0.2.7"),
            // Only trusted hops: the leftmost.
            ("127.0.0.1", &[(XFF, b"10.0.0.9, 10.0.0.5")], "10.0.0.9"),
            // Not an address: the proxy that wrote it.
            ("127.0.0.1", &[(XFF, b"192.0.2.7, unknown")], "127.0.0.1"),
            ("127.0.0.1", &[(XFF, b"192.0.2.7, not-an-ip, 10.0.0.5")], "10.0.0.5"),
            ("127.0.0.1", &[(XFF, b"192.0.2.7/24")], "127.0.0.1"),
            ("127.0.0.1", &[(XFF, b"192.0.2.7:99999")], "127.0.0.1"),
            // Ports and IPv6.
            ("127.0.0.1", &[(XFF, b"192.0.2.7:4711")], "192.0.2.7"),
            ("127.0.0.1", &[(XFF, b"[2001:db8::7]:4711")], "2001:db8::7"),
            ("127.0.0.1", &[(XFF, b"[2001:db8::7]")], "2001:db8::7"),
            ("127.0.0.1", &[(XFF, b"2001:db8::7")], "2001:db8::7"),
            // Empty elements are skipped; nothing left: the peer.
            ("127.0.0.1", &[(XFF, b" 192.0.2.7 ,, ")], "192.0.2.7"),
            ("127.0.0.1", &[(XFF, b"")], "127.0.0.1"),
            ("127.0.0.1", &[(XFF, b" , ,")], "127.0.0.1"),
            // Forwarded: for= among other parameters, any case, quoted or not.
            ("127.0.0.1", &[(FWD, b"for=192.0.2.60;proto=http;by=203.0.113.43")], "192.0.2.60"),
            ("127.0.0.1", &[(FWD, b"proto=http; For=192.0.2.60")], "192.0.2.60"),
            ("127.0.0.1", &[(FWD, b"for=\"192.0.2.60:4711\"")], "192.0.2.60"),
            ("127.0.0.1", &[(FWD, b"for=\"[2001:db8:cafe::17]:4711\"")], "2001:db8:cafe::17"),
            ("127.0.0.1", &[(FWD, b"for=\"[2001:db8:cafe::17]\"")], "2001:db8:cafe::17"),
            ("127.0.0.1", &[(FWD, b"for=\"[2001:db8:cafe::17]:_p1\"")], "2001:db8:cafe::17"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.43, for=198.51.100.17")], "198.51.100.17"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.43, for=10.0.0.5")], "192.0.2.43"),
            ("127.0.0.1", &[(FWD, b"for=198.51.100.1"), (FWD, b"for=192.0.2.7, for=10.0.0.5")], "192.0.2.7"),
            // Only the header the proxies write counts: a client's own copy
            // of the other one, passed through, changes nothing.
            ("127.0.0.1", &[(XFF, b"192.0.2.7"), (FWD, b"for=198.51.100.9")], "192.0.2.7"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7"), (XFF, b"198.51.100.9")], "192.0.2.7"),
            // Separators inside quoted strings, and quoted pairs.
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7;host=\"a,b;c\"")], "192.0.2.7"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7, for=10.0.0.5;ext=\"a\\\",b\"")], "192.0.2.7"),
            ("127.0.0.1", &[(FWD, b"for=\"\\192.0.2.7\"")], "192.0.2.7"),
            // A client's unbalanced quote does not change what follows it.
            ("127.0.0.1", &[(FWD, b"for=\"198.51.100.1, for=192.0.2.7")], "192.0.2.7"),
            // Unknown, obfuscated, missing or doubled for=: the proxy.
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7, for=unknown")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7, for=_hidden")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=\"_gazonk\"")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7, proto=https")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=192.0.2.7;for=198.51.100.1")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=\"192.0.2.7")], "127.0.0.1"),
            ("127.0.0.1", &[(FWD, b"for=2001:db8::7")], "2001:db8::7"),
        ];
        for (peer, lines, expected) in cases {
            check(peer, lines, expected);
        }
    }

    #[test]
    fn the_list_takes_networks_and_addresses_and_refuses_anything_else() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("10.0.0.0/8", Ok("10.0.0.0/8 (X-Forwarded-For)")),
            ("127.0.0.1", Ok("127.0.0.1/32 (X-Forwarded-For)")),
            ("::1", Ok("::1/128 (X-Forwarded-For)")),
            ("fd00::/8", Ok("fd00::/8 (X-Forwarded-For)")),
            (" 10.0.0.0/8 ,::1", Ok("10.0.0.0/8,::1/128 (X-Forwarded-For)")),
            ("::ffff:10.1.2.3", Ok("10.1.2.3/32 (X-Forwarded-For)")),
            ("", Ok("none")),
            ("10.0.0.1/8", Err("the network is 10.0.0.0/8")),
            ("10.0.0.0/33", Err("\"10.0.0.0/33\" is not an address")),
            ("nginx", Err("\"nginx\" is not an address")),
            ("127.0.0.1:80", Err("\"127.0.0.1:80\" is not an address")),
            ("10.0.0.0/8,,::1", Err("\"\" is not an address")),
        ];
        for (text, expected) in cases {
            let got = text.parse::<TrustedProxies>().map(|p| p.to_string()).map_err(|e| e.to_string());
            match (&got, expected) {
                (Ok(list), Ok(want)) => assert_eq!(list, want, "{text:?}"),
                (Err(message), Err(says)) => assert!(message.contains(says), "{text:?}: {message}"),
                _ => panic!("{text:?}: got {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn without_trusted_proxies_every_header_is_ignored() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        headers.insert(FORWARDED, HeaderValue::from_static("for=198.51.100.1"));
        let peer: IpAddr = "127.0.0.1".parse().expect("ip");
        assert_eq!(TrustedProxies::default().client(peer, &headers), peer);
    }
}
