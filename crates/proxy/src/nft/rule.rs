//! A small builder for common rule shapes: `ip daddr 10.0.0.1 tcp dport 80 dnat to …`, so the
//! Service, policy and NAT code reads like the nft rules it writes.

use std::net::Ipv4Addr;

use super::Rule;
use super::expr::{Base, CmpOp, CtKey, Expr, MetaKey, Reg, Verdict};

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// SCTP.
pub const SCTP: u8 = 132;

/// The mark bit kube-proxy uses to ask for masquerading in postrouting.
pub const MASQ_MARK: u32 = 0x4000;

fn ifname(name: &str) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    let n = name.len().min(15);
    v[..n].copy_from_slice(&name.as_bytes()[..n]);
    v
}

impl Rule {
    /// An empty rule.
    pub fn new() -> Self {
        Rule::default()
    }

    /// Appends an expression.
    pub fn expr(mut self, e: Expr) -> Self {
        self.exprs.push(e);
        self
    }

    /// Sets the comment.
    pub fn comment(mut self, c: impl Into<String>) -> Self {
        self.comment = Some(c.into());
        self
    }

    fn cmp(self, sreg: Reg, op: CmpOp, data: impl Into<Vec<u8>>) -> Self {
        self.expr(Expr::Cmp {
            sreg,
            op,
            data: data.into(),
        })
    }

    fn load_ip(self, offset: u32, dreg: Reg) -> Self {
        self.expr(Expr::Payload {
            base: Base::Network,
            offset,
            len: 4,
            dreg,
        })
    }

    /// `ip saddr == a` (or `!=`).
    pub fn saddr(self, a: Ipv4Addr, eq: bool) -> Self {
        self.load_ip(12, Reg::R0)
            .cmp(Reg::R0, if eq { CmpOp::Eq } else { CmpOp::Neq }, a.octets())
    }

    /// `ip daddr == a` (or `!=`).
    pub fn daddr(self, a: Ipv4Addr, eq: bool) -> Self {
        self.load_ip(16, Reg::R0)
            .cmp(Reg::R0, if eq { CmpOp::Eq } else { CmpOp::Neq }, a.octets())
    }

    fn in_net(self, offset: u32, net: Ipv4Addr, len: u8, inside: bool) -> Self {
        let len = u32::from(len.min(32));
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        let net = u32::from(net) & mask;
        self.load_ip(offset, Reg::R0)
            .expr(Expr::Bitwise {
                sreg: Reg::R0,
                dreg: Reg::R0,
                mask: mask.to_be_bytes().to_vec(),
                xor: vec![0; 4],
            })
            .cmp(
                Reg::R0,
                if inside { CmpOp::Eq } else { CmpOp::Neq },
                net.to_be_bytes(),
            )
    }

    /// `ip saddr net/len` (or `!=`).
    pub fn saddr_in(self, net: Ipv4Addr, len: u8, inside: bool) -> Self {
        self.in_net(12, net, len, inside)
    }

    /// `ip daddr net/len` (or `!=`).
    pub fn daddr_in(self, net: Ipv4Addr, len: u8, inside: bool) -> Self {
        self.in_net(16, net, len, inside)
    }

    /// `meta l4proto p`.
    pub fn l4proto(self, p: u8) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: Reg::R1,
        })
        .cmp(Reg::R1, CmpOp::Eq, [p])
    }

    /// `th dport port` (after [`Rule::l4proto`]).
    pub fn dport(self, port: u16) -> Self {
        self.expr(Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
            dreg: Reg::R2,
        })
        .cmp(Reg::R2, CmpOp::Eq, port.to_be_bytes())
    }

    /// `oifname != name` (or `==`).
    pub fn oifname(self, name: &str, eq: bool) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::OifName,
            dreg: Reg::R3,
        })
        .cmp(
            Reg::R3,
            if eq { CmpOp::Eq } else { CmpOp::Neq },
            ifname(name),
        )
    }

    /// `iifname == name` (or `!=`).
    pub fn iifname(self, name: &str, eq: bool) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::IifName,
            dreg: Reg::R3,
        })
        .cmp(
            Reg::R3,
            if eq { CmpOp::Eq } else { CmpOp::Neq },
            ifname(name),
        )
    }

    /// `fib daddr type local`.
    pub fn daddr_local(self) -> Self {
        self.expr(Expr::FibType {
            dreg: Reg::R3,
            saddr: false,
        })
        .cmp(Reg::R3, CmpOp::Eq, 2u32.to_ne_bytes())
    }

    /// `fib saddr type local` (traffic from this host).
    pub fn saddr_local(self) -> Self {
        self.expr(Expr::FibType {
            dreg: Reg::R3,
            saddr: true,
        })
        .cmp(Reg::R3, CmpOp::Eq, 2u32.to_ne_bytes())
    }

    /// `ip daddr . meta l4proto . th dport` into R0..R2 (a 12-byte set key).
    pub fn load_daddr_proto_port(self) -> Self {
        self.load_ip(16, Reg::R0)
            .expr(Expr::Meta {
                key: MetaKey::L4Proto,
                dreg: Reg::R1,
            })
            .expr(Expr::Payload {
                base: Base::Transport,
                offset: 2,
                len: 2,
                dreg: Reg::R2,
            })
    }

    /// `meta l4proto . th dport` into R0..R1 (an 8-byte set key).
    pub fn load_proto_port(self) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::L4Proto,
            dreg: Reg::R0,
        })
        .expr(Expr::Payload {
            base: Base::Transport,
            offset: 2,
            len: 2,
            dreg: Reg::R1,
        })
    }

    /// `… vmap @set` on the key in R0.
    pub fn vmap(self, set: impl Into<String>) -> Self {
        self.expr(Expr::Lookup {
            set: set.into(),
            sreg: Reg::R0,
            dreg: None,
            verdict_map: true,
            invert: false,
        })
    }

    /// `ip saddr @set` (or `!= @set` when `!present`), for a set of IPv4 addresses or prefixes.
    pub fn saddr_in_set(self, set: impl Into<String>, present: bool) -> Self {
        self.load_ip(12, Reg::R0).expr(Expr::Lookup {
            set: set.into(),
            sreg: Reg::R0,
            dreg: None,
            verdict_map: false,
            invert: !present,
        })
    }

    /// `ip daddr @set` (or `!= @set`).
    pub fn daddr_in_set(self, set: impl Into<String>, present: bool) -> Self {
        self.load_ip(16, Reg::R0).expr(Expr::Lookup {
            set: set.into(),
            sreg: Reg::R0,
            dreg: None,
            verdict_map: false,
            invert: !present,
        })
    }

    /// `ip saddr vmap @set`.
    pub fn saddr_vmap(self, set: impl Into<String>) -> Self {
        self.load_ip(12, Reg::R0).vmap(set)
    }

    /// `ip daddr vmap @set`.
    pub fn daddr_vmap(self, set: impl Into<String>) -> Self {
        self.load_ip(16, Reg::R0).vmap(set)
    }

    /// `update @set { ip saddr }` with a timeout.
    pub fn update_saddr(self, set: impl Into<String>, timeout_ms: u64) -> Self {
        self.load_ip(12, Reg::R0).expr(Expr::Dynset {
            set: set.into(),
            sreg: Reg::R0,
            timeout_ms,
        })
    }

    /// `numgen random mod n vmap @set`.
    pub fn numgen_vmap(self, n: u32, set: impl Into<String>) -> Self {
        self.expr(Expr::Numgen {
            dreg: Reg::R0,
            modulus: n,
            random: true,
        })
        .vmap(set)
    }

    /// `reject` (ICMP port unreachable).
    pub fn reject(self) -> Self {
        self.expr(Expr::Reject { tcp_reset: false })
    }

    /// `meta l4proto tcp reject with tcp reset`.
    pub fn reject_tcp_reset(self) -> Self {
        self.l4proto(TCP).expr(Expr::Reject { tcp_reset: true })
    }

    /// `ct state established,related` (any of `bits`, host order: established 2, related 4).
    pub fn ct_state_any(self, bits: u32) -> Self {
        self.expr(Expr::Ct {
            key: CtKey::State,
            dreg: Reg::R3,
            direction: None,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R3,
            dreg: Reg::R3,
            mask: bits.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .cmp(Reg::R3, CmpOp::Neq, [0u8; 4])
    }

    /// `ct status dnat`.
    pub fn ct_dnat(self) -> Self {
        self.expr(Expr::Ct {
            key: CtKey::Status,
            dreg: Reg::R3,
            direction: None,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R3,
            dreg: Reg::R3,
            mask: 0x20u32.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .cmp(Reg::R3, CmpOp::Neq, [0u8; 4])
    }

    /// `meta mark & m != 0` (`set`) or `== 0`.
    pub fn mark_has(self, m: u32, set: bool) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::R3,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R3,
            dreg: Reg::R3,
            mask: m.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .cmp(Reg::R3, if set { CmpOp::Neq } else { CmpOp::Eq }, [0u8; 4])
    }

    /// `meta mark set mark | m`.
    pub fn mark_or(self, m: u32) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::R3,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R3,
            dreg: Reg::R3,
            mask: (!m).to_ne_bytes().to_vec(),
            xor: m.to_ne_bytes().to_vec(),
        })
        .expr(Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Reg::R3,
        })
    }

    /// `meta mark set mark & !m`.
    pub fn mark_clear(self, m: u32) -> Self {
        self.expr(Expr::Meta {
            key: MetaKey::Mark,
            dreg: Reg::R3,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R3,
            dreg: Reg::R3,
            mask: (!m).to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .expr(Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Reg::R3,
        })
    }

    /// `dnat to addr:port` (port `None` keeps the packet's).
    pub fn dnat(self, addr: Ipv4Addr, port: Option<u16>) -> Self {
        let mut r = self.expr(Expr::Immediate {
            dreg: Reg::R0,
            data: addr.octets().to_vec(),
        });
        if let Some(p) = port {
            r = r.expr(Expr::Immediate {
                dreg: Reg::R1,
                data: p.to_be_bytes().to_vec(),
            });
        }
        r.expr(Expr::Nat {
            dnat: true,
            addr: Reg::R0,
            port: port.map(|_| Reg::R1),
        })
    }

    /// `masquerade` (`fully-random` when asked).
    pub fn masquerade(self, fully_random: bool) -> Self {
        self.expr(Expr::Masquerade { fully_random })
    }

    /// `counter`.
    pub fn counter(self) -> Self {
        self.expr(Expr::Counter)
    }

    /// Ends with a verdict.
    pub fn verdict(self, v: Verdict) -> Self {
        self.expr(Expr::Verdict(v))
    }

    /// `jump chain`.
    pub fn jump(self, chain: impl Into<String>) -> Self {
        self.verdict(Verdict::Jump(chain.into()))
    }

    /// `goto chain`.
    pub fn goto(self, chain: impl Into<String>) -> Self {
        self.verdict(Verdict::Goto(chain.into()))
    }

    /// `accept`.
    pub fn accept(self) -> Self {
        self.verdict(Verdict::Accept)
    }

    /// `drop`.
    pub fn drop_(self) -> Self {
        self.verdict(Verdict::Drop)
    }

    /// `return`.
    pub fn ret(self) -> Self {
        self.verdict(Verdict::Return)
    }
}
