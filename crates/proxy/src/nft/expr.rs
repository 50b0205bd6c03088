//! nf_tables expressions: the instructions of a rule's small register machine (load a packet
//! field, compare, look up a set or map, NAT, …) and their netlink encoding.
//!
//! Registers are the 32-bit ones (`NFT_REG32_00` = [`Reg::R0`] …); a value longer than four bytes
//! (a concatenated set key) spans consecutive registers, each field starting on a register.

use super::wire::*;

/// A 32-bit data register (`NFT_REG32_00` + n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg(pub u32);

impl Reg {
    /// The first register.
    pub const R0: Reg = Reg(8);
    /// The second register.
    pub const R1: Reg = Reg(9);
    /// The third register.
    pub const R2: Reg = Reg(10);
    /// The fourth register.
    pub const R3: Reg = Reg(11);
}

/// What a rule (or a verdict map) decides.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the packet through this hook.
    Accept,
    /// Drop it.
    Drop,
    /// Go on with the next rule.
    Continue,
    /// Return to the calling chain.
    Return,
    /// Run a chain, then come back.
    Jump(String),
    /// Run a chain and don't come back.
    Goto(String),
}

impl Verdict {
    fn code(&self) -> u32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1i32 as u32,
            Verdict::Jump(_) => -3i32 as u32,
            Verdict::Goto(_) => -4i32 as u32,
            Verdict::Return => -5i32 as u32,
        }
    }

    pub(crate) fn encode(&self, b: &mut Buf) {
        b.nest(NFTA_DATA_VERDICT);
        b.u32(NFTA_VERDICT_CODE, self.code());
        if let Verdict::Jump(chain) | Verdict::Goto(chain) = self {
            b.str(NFTA_VERDICT_CHAIN, chain);
        }
        b.close();
    }
}

/// Where a payload load starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Base {
    /// The network (IP) header.
    Network = 1,
    /// The transport (TCP/UDP) header.
    Transport = 2,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `==`
    Eq = 0,
    /// `!=`
    Neq = 1,
    /// `<` (bytes compared as big-endian numbers)
    Lt = 2,
    /// `<=`
    Lte = 3,
    /// `>`
    Gt = 4,
    /// `>=`
    Gte = 5,
}

/// `meta` keys used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaKey {
    /// The packet mark (4 bytes, host order).
    Mark = 3,
    /// Input interface name (16 bytes, NUL padded).
    IifName = 6,
    /// Output interface name (16 bytes).
    OifName = 7,
    /// The transport protocol number (1 byte).
    L4Proto = 16,
}

/// Conntrack keys used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtKey {
    /// State bits (4 bytes, host order): invalid 1, established 2, related 4, new 8.
    State = 0,
    /// Status bits (4 bytes, host order): `IPS_DST_NAT` is 0x20.
    Status = 2,
    /// Original or reply destination IPv4 address.
    DstIp = 20,
}

/// One expression of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    /// Load `len` bytes at `offset` of a header into `dreg`.
    Payload {
        /// Header.
        base: Base,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
        /// Destination register.
        dreg: Reg,
    },
    /// Load packet metadata.
    Meta {
        /// Which.
        key: MetaKey,
        /// Destination register.
        dreg: Reg,
    },
    /// Set packet metadata (the mark) from a register.
    MetaSet {
        /// Which.
        key: MetaKey,
        /// Source register.
        sreg: Reg,
    },
    /// Load a conntrack field.
    Ct {
        /// Which.
        key: CtKey,
        /// Destination register.
        dreg: Reg,
        /// `Some(0)` original, `Some(1)` reply direction (for addresses).
        direction: Option<u8>,
    },
    /// Compare a register with a constant; stop the rule when false.
    Cmp {
        /// Register compared.
        sreg: Reg,
        /// Operator.
        op: CmpOp,
        /// Constant, as many bytes as were loaded.
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
    Bitwise {
        /// Source.
        sreg: Reg,
        /// Destination.
        dreg: Reg,
        /// AND mask.
        mask: Vec<u8>,
        /// XOR value (same length).
        xor: Vec<u8>,
    },
    /// Load a constant into a register.
    Immediate {
        /// Destination register.
        dreg: Reg,
        /// Constant bytes.
        data: Vec<u8>,
    },
    /// Set the verdict.
    Verdict(Verdict),
    /// Look `sreg` up in a set (`dreg` none; stop when absent, or when present if `invert`), or in
    /// a map (`dreg` the data register, or `None` with `verdict_map` for a verdict map).
    Lookup {
        /// Set name.
        set: String,
        /// Key register.
        sreg: Reg,
        /// Where map data goes.
        dreg: Option<Reg>,
        /// The map's data is a verdict.
        verdict_map: bool,
        /// Match when absent instead.
        invert: bool,
    },
    /// Count packets and bytes.
    Counter,
    /// Destination or source NAT to the address (and port) in registers.
    Nat {
        /// `true` for DNAT, `false` for SNAT.
        dnat: bool,
        /// Register holding the IPv4 address.
        addr: Reg,
        /// Register holding the port (2 bytes, network order).
        port: Option<Reg>,
    },
    /// Source NAT to the outgoing interface's address.
    Masquerade {
        /// `fully-random` port selection.
        fully_random: bool,
    },
    /// A number in `0..modulus` into `dreg` (host order), random or round-robin.
    Numgen {
        /// Destination.
        dreg: Reg,
        /// Range size.
        modulus: u32,
        /// Random (else incremental).
        random: bool,
    },
    /// The route type of the destination (`fib daddr type`) or source (`fib saddr type`)
    /// address, 4 bytes host order (local is 2).
    FibType {
        /// Destination.
        dreg: Reg,
        /// The source address instead of the destination.
        saddr: bool,
    },
    /// Refuse: with a TCP reset (`tcp_reset`, only after matching TCP), else ICMP port
    /// unreachable (which the kernel rate-limits per destination).
    Reject {
        /// Answer with a TCP RST.
        tcp_reset: bool,
    },
    /// Add or refresh `sreg` in a timeout set (`update @set { ip saddr }`).
    Dynset {
        /// Set name.
        set: String,
        /// Key register.
        sreg: Reg,
        /// Entry lifetime in milliseconds.
        timeout_ms: u64,
    },
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Counter => "counter",
            Expr::Nat { .. } => "nat",
            Expr::Masquerade { .. } => "masq",
            Expr::Numgen { .. } => "numgen",
            Expr::FibType { .. } => "fib",
            Expr::Reject { .. } => "reject",
            Expr::Dynset { .. } => "dynset",
        }
    }

    pub(crate) fn encode(&self, b: &mut Buf) {
        b.nest(NFTA_LIST_ELEM);
        b.str(NFTA_EXPR_NAME, self.name());
        b.nest(NFTA_EXPR_DATA);
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                b.u32(1, dreg.0); // NFTA_PAYLOAD_DREG
                b.u32(2, *base as u32); // BASE
                b.u32(3, *offset); // OFFSET
                b.u32(4, *len); // LEN
            }
            Expr::Meta { key, dreg } => {
                b.u32(1, dreg.0); // NFTA_META_DREG
                b.u32(2, *key as u32); // KEY
            }
            Expr::MetaSet { key, sreg } => {
                b.u32(2, *key as u32); // NFTA_META_KEY
                b.u32(3, sreg.0); // SREG
            }
            Expr::Ct {
                key,
                dreg,
                direction,
            } => {
                b.u32(1, dreg.0); // NFTA_CT_DREG
                b.u32(2, *key as u32); // KEY
                if let Some(d) = direction {
                    b.attr(3, &[*d]); // DIRECTION (u8)
                }
            }
            Expr::Cmp { sreg, op, data } => {
                b.u32(1, sreg.0); // NFTA_CMP_SREG
                b.u32(2, *op as u32); // OP
                b.nest(3); // DATA
                b.attr(NFTA_DATA_VALUE, data);
                b.close();
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                b.u32(1, sreg.0); // NFTA_BITWISE_SREG
                b.u32(2, dreg.0); // DREG
                b.u32(3, mask.len() as u32); // LEN
                b.nest(4); // MASK
                b.attr(NFTA_DATA_VALUE, mask);
                b.close();
                b.nest(5); // XOR
                b.attr(NFTA_DATA_VALUE, xor);
                b.close();
            }
            Expr::Immediate { dreg, data } => {
                b.u32(1, dreg.0); // NFTA_IMMEDIATE_DREG
                b.nest(2); // DATA
                b.attr(NFTA_DATA_VALUE, data);
                b.close();
            }
            Expr::Verdict(v) => {
                b.u32(1, 0); // NFT_REG_VERDICT
                b.nest(2);
                v.encode(b);
                b.close();
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                verdict_map,
                invert,
            } => {
                b.str(1, set); // NFTA_LOOKUP_SET
                b.u32(2, sreg.0); // SREG
                if *verdict_map {
                    b.u32(3, 0); // DREG = verdict
                } else if let Some(d) = dreg {
                    b.u32(3, d.0);
                }
                if *invert {
                    b.u32(5, 1); // FLAGS = NFT_LOOKUP_F_INV
                }
            }
            Expr::Counter => {
                b.u64(1, 0); // NFTA_COUNTER_BYTES
                b.u64(2, 0); // PACKETS
            }
            Expr::Nat { dnat, addr, port } => {
                b.u32(1, if *dnat { 1 } else { 0 }); // NFTA_NAT_TYPE
                b.u32(2, NFPROTO_IPV4 as u32); // FAMILY
                b.u32(3, addr.0); // REG_ADDR_MIN
                if let Some(p) = port {
                    b.u32(5, p.0); // REG_PROTO_MIN
                }
            }
            Expr::Masquerade { fully_random } => {
                if *fully_random {
                    b.u32(1, 0x10); // NFTA_MASQ_FLAGS = NF_NAT_RANGE_PROTO_RANDOM_FULLY
                }
            }
            Expr::Numgen {
                dreg,
                modulus,
                random,
            } => {
                b.u32(1, dreg.0); // NFTA_NG_DREG
                b.u32(2, *modulus); // MODULUS
                b.u32(3, u32::from(*random)); // TYPE: 0 incremental, 1 random
                b.u32(4, 0); // OFFSET
            }
            Expr::FibType { dreg, saddr } => {
                b.u32(1, dreg.0); // NFTA_FIB_DREG
                b.u32(2, 3); // RESULT = NFT_FIB_RESULT_ADDRTYPE
                b.u32(3, if *saddr { 1 } else { 1 << 1 }); // FLAGS = NFTA_FIB_F_SADDR/DADDR
            }
            Expr::Reject { tcp_reset: true } => {
                b.u32(1, 1); // NFTA_REJECT_TYPE = NFT_REJECT_TCP_RST
            }
            Expr::Reject { tcp_reset: false } => {
                b.u32(1, 0); // NFTA_REJECT_TYPE = NFT_REJECT_ICMP_UNREACH
                b.attr(2, &[3]); // ICMP_CODE = port unreachable
            }
            Expr::Dynset {
                set,
                sreg,
                timeout_ms,
            } => {
                b.str(1, set); // NFTA_DYNSET_SET_NAME
                b.u32(3, 1); // OP = NFT_DYNSET_OP_UPDATE
                b.u32(4, sreg.0); // SREG_KEY
                b.u64(6, *timeout_ms); // TIMEOUT (ms)
            }
        }
        b.close();
        b.close();
    }
}
