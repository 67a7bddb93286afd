//! ICMP echo ("ping") to a pod IP, IPv4 or IPv6: an unprivileged ICMP socket where the system
//! allows it (`net.ipv4.ping_group_range`, which covers ICMPv6 too), otherwise a raw socket
//! (root or CAP_NET_RAW). Blocking I/O, run on the blocking pool, one socket per ping, bounded
//! by a timeout.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// An ICMPv4 echo request with this identifier and sequence number. (For ICMPv6 the kernel
/// fills in the checksum, which covers a pseudo-header only it knows.)
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut p = echo_packet(ECHO_REQUEST_V4, id, seq);
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

fn echo_packet(kind: u8, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![kind, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(b"rollgate-ping");
    p
}

/// Whether `ip` answers an echo request within `timeout`. Err: no ICMP socket can be opened here.
pub fn ping(ip: IpAddr, timeout: Duration, seq: u16) -> std::io::Result<bool> {
    let (domain, protocol, reply) = match ip {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, ECHO_REPLY_V4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, ECHO_REPLY_V6),
    };
    let (socket, raw) = match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => (s, false),
        Err(_) => (Socket::new(domain, Type::RAW, Some(protocol))?, true),
    };
    let addr = SockAddr::from(SocketAddr::from((ip, 0)));
    socket.connect(&addr)?;
    let id = (std::process::id() & 0xffff) as u16;
    let packet = match ip {
        IpAddr::V4(_) => echo_request(id, seq),
        IpAddr::V6(_) => echo_packet(ECHO_REQUEST_V6, id, seq),
    };
    socket.send(&packet)?;
    let deadline = Instant::now() + timeout;
    let mut socket = socket;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
    {
        socket.set_read_timeout(Some(left))?;
        let n = match socket.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // A raw IPv4 socket delivers the IP header first (IPv6 ones do not).
        let icmp = if raw && ip.is_ipv4() {
            buf.get(usize::from(buf[0] & 0x0f) * 4..n).unwrap_or(&[])
        } else {
            &buf[..n]
        };
        // Echo reply (type 0); a raw socket also sees our own request on loopback, and other pings' replies.
        let seq_ok = icmp.get(6..8) == Some(&seq.to_be_bytes()[..]);
        let id_ok = !raw || icmp.get(4..6) == Some(&id.to_be_bytes()[..]);
        if icmp.first() == Some(&reply) && seq_ok && id_ok {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real kernel answers on loopback, over both protocols (as root or with
    /// ping_group_range, as in the test environment).
    #[test]
    fn loopback_answers_icmpv4_and_icmpv6_echo() {
        let t = Duration::from_secs(2);
        assert!(ping("127.0.0.1".parse().unwrap(), t, 1).unwrap());
        assert!(ping("::1".parse().unwrap(), t, 2).unwrap());
    }

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let p = echo_request(0x1234, 7);
        assert_eq!(&p[..2], &[8, 0]);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
    }
}
