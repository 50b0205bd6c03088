//! nftables over netlink: a declarative [`Table`] (chains, rules, sets, maps) that
//! [`Nft::replace`] installs in one atomic batch, and [`Nft::delete_table`].
//!
//! Each owner of rules (the engine's bridge NAT, a node's service proxy, its policies) has one
//! table: replacing it is one kernel transaction (create-if-missing, delete, create with the new
//! content), so packets see either the old rules or the new ones, never a mix, and cleanup is
//! deleting the table.

pub mod expr;
mod rule;
mod socket;
pub(crate) mod wire;

use std::net::Ipv4Addr;

pub use expr::{Base, CmpOp, CtKey, Expr, MetaKey, Reg, Verdict};
pub use rule::{MASQ_MARK, SCTP, TCP, UDP};
pub use socket::Nft;

use crate::error::{Error, Result};
use wire::*;

/// Netfilter hooks a base chain attaches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Before routing (DNAT of incoming traffic).
    Prerouting = 0,
    /// Packets for this host.
    Input = 1,
    /// Routed packets.
    Forward = 2,
    /// Packets this host sends (DNAT of local traffic).
    Output = 3,
    /// After routing (SNAT, masquerade).
    Postrouting = 4,
}

/// A base chain's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainType {
    /// Filtering.
    Filter,
    /// NAT (first packet of a connection only).
    Nat,
}

/// Priorities named by nft: `dstnat` (-100), `filter` (0), `srcnat` (100).
pub mod priority {
    /// DNAT in prerouting/output.
    pub const DSTNAT: i32 = -100;
    /// Filtering.
    pub const FILTER: i32 = 0;
    /// SNAT in postrouting.
    pub const SRCNAT: i32 = 100;
}

/// Where a chain attaches, if it is a base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// The hook.
    pub hook: Hook,
    /// Its type.
    pub kind: ChainType,
    /// Priority (lower runs first).
    pub priority: i32,
    /// What happens to packets no rule decided on (`true` accept, `false` drop).
    pub accept: bool,
}

/// A chain and its rules, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Name, unique in the table.
    pub name: String,
    /// Hook, for a base chain; `None` for a regular chain reached by jump/goto.
    pub base: Option<BaseChain>,
    /// Rules.
    pub rules: Vec<Rule>,
}

impl Chain {
    /// A regular chain.
    pub fn regular(name: impl Into<String>) -> Self {
        Chain {
            name: name.into(),
            base: None,
            rules: Vec::new(),
        }
    }

    /// A base chain with policy accept.
    pub fn base(name: impl Into<String>, hook: Hook, kind: ChainType, priority: i32) -> Self {
        Chain {
            name: name.into(),
            base: Some(BaseChain {
                hook,
                kind,
                priority,
                accept: true,
            }),
            rules: Vec::new(),
        }
    }

    /// Appends a rule.
    pub fn push(&mut self, rule: Rule) -> &mut Self {
        self.rules.push(rule);
        self
    }
}

/// A rule: expressions evaluated in order, plus an optional comment (kept in the rule's
/// userdata, shown by `nft list` as `comment`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// Expressions.
    pub exprs: Vec<Expr>,
    /// Comment.
    pub comment: Option<String>,
}

/// What a map's elements map to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetData {
    /// A plain set.
    None,
    /// A verdict map.
    Verdict,
    /// A data map with values of this many bytes.
    Value(u32),
}

/// One element of a set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    /// The key (for an interval set, the start).
    pub key: Vec<u8>,
    /// For an interval set: the first key *after* the interval (`None`: to the end of the key
    /// space).
    pub key_end: Option<Vec<u8>>,
    /// The verdict, for a verdict map.
    pub verdict: Option<Verdict>,
    /// The value, for a data map.
    pub value: Option<Vec<u8>>,
}

impl Element {
    /// A set element.
    pub fn key(key: impl Into<Vec<u8>>) -> Self {
        Element {
            key: key.into(),
            key_end: None,
            verdict: None,
            value: None,
        }
    }

    /// A verdict map element.
    pub fn verdict(key: impl Into<Vec<u8>>, verdict: Verdict) -> Self {
        Element {
            verdict: Some(verdict),
            ..Element::key(key)
        }
    }

    /// An element of an interval set of IPv4 prefixes.
    pub fn prefix(net: Ipv4Addr, len: u8) -> Self {
        let (start, end) = prefix_range(net, len);
        Element {
            key: start.octets().to_vec(),
            key_end: end.map(|e| e.octets().to_vec()),
            verdict: None,
            value: None,
        }
    }
}

/// The first address of `net/len` and the first address after it (`None` past 255.255.255.255).
pub fn prefix_range(net: Ipv4Addr, len: u8) -> (Ipv4Addr, Option<Ipv4Addr>) {
    let len = u32::from(len.min(32));
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let start = u32::from(net) & mask;
    let size = 1u64 << (32 - len);
    let end = u64::from(start) + size;
    (
        Ipv4Addr::from(start),
        (end <= u64::from(u32::MAX)).then(|| Ipv4Addr::from(end as u32)),
    )
}

/// nft's data type numbers for set keys (only `nft list` reads them; the kernel keeps them
/// for userspace).
pub mod types {
    /// A number (`numgen` results).
    pub const INTEGER: u32 = 4;
    /// `ipv4_addr`.
    pub const IPV4_ADDR: u32 = 7;
    /// `inet_proto`.
    pub const INET_PROTO: u32 = 12;
    /// `inet_service` (a port).
    pub const INET_SERVICE: u32 = 13;

    /// The type of a concatenation `a . b . …`.
    pub fn concat(parts: &[u32]) -> u32 {
        parts.iter().fold(0, |acc, t| (acc << 6) | t)
    }
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set {
    /// Name, unique in the table.
    pub name: String,
    /// nft's key type ([`types`]).
    pub key_type: u32,
    /// Key length in bytes (each concatenated field rounded up to 4).
    pub key_len: u32,
    /// What elements map to.
    pub data: SetData,
    /// Keys are ranges ([`Element::prefix`]).
    pub interval: bool,
    /// Entries expire after this many milliseconds (a dynamic set filled by [`Expr::Dynset`]).
    pub timeout_ms: Option<u64>,
    /// Elements.
    pub elements: Vec<Element>,
}

impl Set {
    /// A plain set.
    pub fn new(name: impl Into<String>, key_len: u32) -> Self {
        Set {
            name: name.into(),
            key_type: match key_len {
                4 => types::IPV4_ADDR,
                _ => 0,
            },
            key_len,
            data: SetData::None,
            interval: false,
            timeout_ms: None,
            elements: Vec::new(),
        }
    }

    /// A verdict map.
    pub fn verdict_map(name: impl Into<String>, key_len: u32) -> Self {
        Set {
            data: SetData::Verdict,
            ..Set::new(name, key_len)
        }
    }

    /// With this key type.
    pub fn key_type(mut self, t: u32) -> Self {
        self.key_type = t;
        self
    }
}

/// A table (family `ip`): the unit this crate installs and removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Name.
    pub name: String,
    /// Chains (base and regular).
    pub chains: Vec<Chain>,
    /// Sets and maps.
    pub sets: Vec<Set>,
}

/// Longest table/chain/set name the kernel takes (`NFT_NAME_MAXLEN` - 1).
pub const MAX_NAME: usize = 255;

fn check_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        return Err(Error::invalid(
            format!("{kind} name {name:?}"),
            format!("must be 1 to {MAX_NAME} bytes without NUL"),
        ));
    }
    Ok(())
}

impl Table {
    /// An empty table.
    pub fn new(name: impl Into<String>) -> Self {
        Table {
            name: name.into(),
            chains: Vec::new(),
            sets: Vec::new(),
        }
    }

    /// The chain named `name`, if any.
    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }

    /// Checks names and references before anything is sent, so a bad table never reaches the
    /// kernel half-built (the kernel would roll back anyway; this gives a clearer error).
    pub fn validate(&self) -> Result<()> {
        check_name("table", &self.name)?;
        let mut names = std::collections::HashSet::new();
        for c in &self.chains {
            check_name("chain", &c.name)?;
            if !names.insert(c.name.as_str()) {
                return Err(Error::invalid(
                    format!("chain {:?}", c.name),
                    "defined twice",
                ));
            }
        }
        let chains = names;
        let mut sets = std::collections::HashSet::new();
        for s in &self.sets {
            check_name("set", &s.name)?;
            if !sets.insert(s.name.as_str()) {
                return Err(Error::invalid(format!("set {:?}", s.name), "defined twice"));
            }
            for e in &s.elements {
                if e.key.len() != s.key_len as usize {
                    return Err(Error::invalid(
                        format!("element of set {:?}", s.name),
                        format!("key is {} bytes, set keys are {}", e.key.len(), s.key_len),
                    ));
                }
                if let Some(Verdict::Jump(c) | Verdict::Goto(c)) = &e.verdict
                    && !chains.contains(c.as_str())
                {
                    return Err(Error::invalid(
                        format!("element of map {:?}", s.name),
                        format!("no chain {c:?}"),
                    ));
                }
            }
        }
        for c in &self.chains {
            for r in &c.rules {
                for x in &r.exprs {
                    match x {
                        Expr::Verdict(Verdict::Jump(t) | Verdict::Goto(t))
                            if !chains.contains(t.as_str()) =>
                        {
                            return Err(Error::invalid(
                                format!("rule in chain {:?}", c.name),
                                format!("no chain {t:?}"),
                            ));
                        }
                        Expr::Lookup { set, .. } | Expr::Dynset { set, .. }
                            if !sets.contains(set.as_str()) =>
                        {
                            return Err(Error::invalid(
                                format!("rule in chain {:?}", c.name),
                                format!("no set {set:?}"),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// What each message of a batch was about, for error messages.
pub(crate) type Labels = Vec<(u32, String)>;

/// Encodes "replace table": create it if missing, delete it, create it anew with `table`'s content.
pub(crate) fn encode_replace(b: &mut Buf, table: &Table, labels: &mut Labels) {
    let fam = NFPROTO_IPV4;
    let t = &table.name;
    let seq = b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE, fam);
    b.str(NFTA_TABLE_NAME, t);
    b.end();
    labels.push((seq, format!("table ip {t}")));
    encode_delete(b, t, labels);
    let seq = b.nft(NFT_MSG_NEWTABLE, NLM_F_CREATE | NLM_F_EXCL, fam);
    b.str(NFTA_TABLE_NAME, t);
    b.end();
    labels.push((seq, format!("table ip {t}")));
    for c in &table.chains {
        encode_chain(b, t, c, labels);
    }
    for (id, s) in table.sets.iter().enumerate() {
        encode_set(b, t, s, id as u32 + 1, labels);
        encode_elements(b, t, s, s.elements.iter(), true, labels);
    }
    for c in &table.chains {
        encode_rules(b, t, c, labels);
    }
}

/// Encodes the changes that turn `old` (what the kernel holds) into `new`, touching only the
/// chains and set elements that differ. `None` when the change needs a full replacement (a
/// base chain or a set's shape changed).
pub(crate) fn encode_update(
    b: &mut Buf,
    old: &Table,
    new: &Table,
    labels: &mut Labels,
) -> Option<()> {
    use std::collections::HashMap;
    if old.name != new.name {
        return None;
    }
    let t = &new.name;
    let old_chains: HashMap<&str, &Chain> =
        old.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let new_chains: HashMap<&str, &Chain> =
        new.chains.iter().map(|c| (c.name.as_str(), c)).collect();
    let old_sets: HashMap<&str, &Set> = old.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let new_sets: HashMap<&str, &Set> = new.sets.iter().map(|s| (s.name.as_str(), s)).collect();
    let same_shape = |a: &Set, b: &Set| {
        a.key_len == b.key_len
            && a.key_type == b.key_type
            && a.data == b.data
            && a.interval == b.interval
            && a.timeout_ms == b.timeout_ms
    };
    for c in &new.chains {
        if let Some(o) = old_chains.get(c.name.as_str())
            && o.base != c.base
        {
            return None;
        }
    }
    for s in &new.sets {
        if let Some(o) = old_sets.get(s.name.as_str())
            && !same_shape(o, s)
        {
            return None;
        }
    }
    // 1. New chains and sets.
    for c in &new.chains {
        if !old_chains.contains_key(c.name.as_str()) {
            encode_chain(b, t, c, labels);
        }
    }
    for (id, s) in new.sets.iter().enumerate() {
        if !old_sets.contains_key(s.name.as_str()) {
            encode_set(b, t, s, id as u32 + 1, labels);
        }
    }
    // 2. Flush changed and removed chains (drops their references to sets and chains).
    for c in &old.chains {
        match new_chains.get(c.name.as_str()) {
            Some(n) if n.rules == c.rules => {}
            _ if c.rules.is_empty() => {}
            _ => {
                let seq = b.nft(NFT_MSG_DELRULE, 0, NFPROTO_IPV4);
                b.str(NFTA_RULE_TABLE, t);
                b.str(NFTA_RULE_CHAIN, &c.name);
                b.end();
                labels.push((seq, format!("flushing chain {t} {}", c.name)));
            }
        }
    }
    // 3. Element changes: removed or changed keys out, then new or changed keys in.
    for s in &new.sets {
        match old_sets.get(s.name.as_str()) {
            None => encode_elements(b, t, s, s.elements.iter(), true, labels),
            Some(o) if o.elements != s.elements => {
                let old_by_key: HashMap<&[u8], &Element> =
                    o.elements.iter().map(|e| (e.key.as_slice(), e)).collect();
                let new_by_key: HashMap<&[u8], &Element> =
                    s.elements.iter().map(|e| (e.key.as_slice(), e)).collect();
                let gone = o
                    .elements
                    .iter()
                    .filter(|e| new_by_key.get(e.key.as_slice()) != Some(e));
                encode_elements(b, t, s, gone, false, labels);
                let added = s
                    .elements
                    .iter()
                    .filter(|e| old_by_key.get(e.key.as_slice()) != Some(e));
                encode_elements(b, t, s, added, true, labels);
            }
            Some(_) => {}
        }
    }
    // 4. Rules of new and changed chains.
    for c in &new.chains {
        match old_chains.get(c.name.as_str()) {
            Some(o) if o.rules == c.rules => {}
            _ => encode_rules(b, t, c, labels),
        }
    }
    // 5. Removed sets, then removed chains (nothing refers to them any more).
    for s in &old.sets {
        if !new_sets.contains_key(s.name.as_str()) {
            let seq = b.nft(NFT_MSG_DELSET, 0, NFPROTO_IPV4);
            b.str(NFTA_SET_TABLE, t);
            b.str(NFTA_SET_NAME, &s.name);
            b.end();
            labels.push((seq, format!("deleting set {t} {}", s.name)));
        }
    }
    for c in &old.chains {
        if !new_chains.contains_key(c.name.as_str()) {
            let seq = b.nft(NFT_MSG_DELCHAIN, 0, NFPROTO_IPV4);
            b.str(NFTA_CHAIN_TABLE, t);
            b.str(NFTA_CHAIN_NAME, &c.name);
            b.end();
            labels.push((seq, format!("deleting chain {t} {}", c.name)));
        }
    }
    Some(())
}

fn encode_chain(b: &mut Buf, t: &str, c: &Chain, labels: &mut Labels) {
    let seq = b.nft(NFT_MSG_NEWCHAIN, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_IPV4);
    b.str(NFTA_CHAIN_TABLE, t);
    b.str(NFTA_CHAIN_NAME, &c.name);
    if let Some(base) = &c.base {
        b.nest(NFTA_CHAIN_HOOK);
        b.u32(NFTA_HOOK_HOOKNUM, base.hook as u32);
        b.u32(NFTA_HOOK_PRIORITY, base.priority as u32);
        b.close();
        b.u32(NFTA_CHAIN_POLICY, u32::from(base.accept));
        b.str(
            NFTA_CHAIN_TYPE,
            match base.kind {
                ChainType::Filter => "filter",
                ChainType::Nat => "nat",
            },
        );
    }
    b.end();
    labels.push((seq, format!("chain {t} {}", c.name)));
}

fn encode_set(b: &mut Buf, t: &str, s: &Set, id: u32, labels: &mut Labels) {
    let seq = b.nft(NFT_MSG_NEWSET, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_IPV4);
    b.str(NFTA_SET_TABLE, t);
    b.str(NFTA_SET_NAME, &s.name);
    let mut flags = 0;
    if s.interval {
        flags |= NFT_SET_INTERVAL;
    }
    if s.data != SetData::None {
        flags |= NFT_SET_MAP;
    }
    if s.timeout_ms.is_some() {
        flags |= NFT_SET_TIMEOUT | NFT_SET_EVAL;
    }
    b.u32(NFTA_SET_FLAGS, flags);
    b.u32(NFTA_SET_KEY_TYPE, s.key_type);
    b.u32(NFTA_SET_KEY_LEN, s.key_len);
    match s.data {
        SetData::None => {}
        SetData::Verdict => b.u32(NFTA_SET_DATA_TYPE, NFT_DATA_VERDICT_TYPE),
        SetData::Value(len) => {
            b.u32(NFTA_SET_DATA_TYPE, 0);
            b.u32(NFTA_SET_DATA_LEN, len);
        }
    }
    b.u32(NFTA_SET_ID, id);
    if let Some(ms) = s.timeout_ms {
        b.u64(NFTA_SET_TIMEOUT, ms);
    }
    b.end();
    labels.push((seq, format!("set {t} {}", s.name)));
}

/// Adds (`add`) or deletes elements, in messages of at most 512 elements.
fn encode_elements<'a>(
    b: &mut Buf,
    t: &str,
    s: &Set,
    elements: impl Iterator<Item = &'a Element>,
    add: bool,
    labels: &mut Labels,
) {
    let all: Vec<&Element> = elements.collect();
    for chunk in all.chunks(512) {
        let seq = if add {
            b.nft(NFT_MSG_NEWSETELEM, NLM_F_CREATE | NLM_F_EXCL, NFPROTO_IPV4)
        } else {
            b.nft(NFT_MSG_DELSETELEM, 0, NFPROTO_IPV4)
        };
        b.str(NFTA_SET_ELEM_LIST_TABLE, t);
        b.str(NFTA_SET_ELEM_LIST_SET, &s.name);
        b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in chunk {
            encode_element(b, s, e, add);
        }
        b.close();
        b.end();
        labels.push((
            seq,
            format!(
                "{} elements of set {t} {}",
                if add { "adding" } else { "deleting" },
                s.name
            ),
        ));
    }
}

fn encode_rules(b: &mut Buf, t: &str, c: &Chain, labels: &mut Labels) {
    for r in &c.rules {
        let seq = b.nft(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, NFPROTO_IPV4);
        b.str(NFTA_RULE_TABLE, t);
        b.str(NFTA_RULE_CHAIN, &c.name);
        b.nest(NFTA_RULE_EXPRESSIONS);
        for x in &r.exprs {
            x.encode(b);
        }
        b.close();
        if let Some(comment) = &r.comment {
            // nft's userdata TLV: type 0 (NFTNL_UDATA_RULE_COMMENT), length, NUL-terminated text.
            let text = &comment.as_bytes()[..comment.len().min(250)];
            let mut ud = vec![0u8, (text.len() + 1) as u8];
            ud.extend_from_slice(text);
            ud.push(0);
            b.attr(NFTA_RULE_USERDATA, &ud);
        }
        b.end();
        labels.push((seq, format!("rule in chain {t} {}", c.name)));
    }
}

fn encode_element(b: &mut Buf, s: &Set, e: &Element, with_data: bool) {
    let data = |b: &mut Buf| {
        if let Some(v) = &e.verdict {
            b.nest(NFTA_SET_ELEM_DATA);
            v.encode(b);
            b.close();
        } else if let Some(v) = &e.value {
            b.nest(NFTA_SET_ELEM_DATA);
            b.attr(NFTA_DATA_VALUE, v);
            b.close();
        }
    };
    b.nest(NFTA_LIST_ELEM);
    b.nest(NFTA_SET_ELEM_KEY);
    b.attr(NFTA_DATA_VALUE, &e.key);
    b.close();
    if with_data {
        data(b);
    }
    b.close();
    if s.interval {
        // rbtree intervals: the start above, then an "interval end" element at the first key
        // after the range (omitted when the range runs to the end of the key space).
        if let Some(end) = &e.key_end {
            b.nest(NFTA_LIST_ELEM);
            b.nest(NFTA_SET_ELEM_KEY);
            b.attr(NFTA_DATA_VALUE, end);
            b.close();
            b.u32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
            b.close();
        }
    }
}

/// Encodes "delete table `name`".
pub(crate) fn encode_delete(b: &mut Buf, name: &str, labels: &mut Labels) {
    let seq = b.nft(NFT_MSG_DELTABLE, 0, NFPROTO_IPV4);
    b.str(NFTA_TABLE_NAME, name);
    b.end();
    labels.push((seq, format!("deleting table ip {name}")));
}
