//! Mutations: byte-level (libFuzzer's classics: bit flips, interesting values, insertions,
//! deletions, copies, dictionary tokens, splices), plus structure-aware mutations of YAML/JSON
//! documents (as trees) and of protobuf `DiscoveryResponse`s (as messages).

use prost::Message;
use serde_json::{Map, Value};
use weft_proxy_api::v1;

use crate::{clients, InputKind};

/// A small deterministic PRNG (xorshift64*): the same seed gives the same run on every
/// platform and Rust version.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, never 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`; `0` when `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    /// True with probability `num/den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    pub fn byte(&mut self) -> u8 {
        (self.next_u64() >> 56) as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'\n', b'\r', b' ', b'\t', b':', b'-', b'{', b'}', b'[', b']', b'"',
    b'\'', b'#', b'&', b'*', b'!', b'|', b'>', b'%', b'.', b'/', b'\\', b'0', b'9', b'a', b'Z',
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "100",
    "255",
    "256",
    "1000",
    "4140",
    "4143",
    "65535",
    "65536",
    "-65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775808",
    "1e3",
    "1e400",
    "0.5",
    "-0",
    "0x10",
    "500m",
    "1.5",
    "0.0001",
    "1m",
    "1k",
    "1Ki",
    "NaN",
    ".inf",
];

/// The mutation engine of one target.
pub struct Mutator {
    kind: InputKind,
    dictionary: &'static [&'static str],
    max_len: usize,
}

impl Mutator {
    pub fn new(kind: InputKind, dictionary: &'static [&'static str], max_len: usize) -> Mutator {
        Mutator {
            kind,
            dictionary,
            max_len,
        }
    }

    /// A mutated copy of `parent`; `corpus` supplies material for splices.
    pub fn mutate(&mut self, parent: &[u8], corpus: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
        let structured = match self.kind {
            InputKind::Yaml if rng.chance(2, 3) => {
                mutate_yaml(parent, corpus, rng, self.dictionary)
            }
            InputKind::DiscoveryResponse if rng.chance(2, 3) => {
                mutate_proto(parent, corpus, rng, self.dictionary)
            }
            _ => None,
        };
        let bytes_too = structured.is_none() || rng.chance(1, 8);
        let mut out = structured.unwrap_or_else(|| parent.to_vec());
        if bytes_too {
            let n = 1 + rng.below(4);
            for _ in 0..n {
                mutate_bytes(&mut out, corpus, rng, self.dictionary);
            }
        }
        out.truncate(self.max_len);
        out
    }
}

fn range(rng: &mut Rng, len: usize, max: usize) -> (usize, usize) {
    let start = rng.below(len);
    let n = 1 + rng.below(max.min(len - start));
    (start, n)
}

/// One byte-level mutation, in place.
pub fn mutate_bytes(data: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut Rng, dict: &[&str]) {
    let op = rng.below(15);
    if data.is_empty() {
        let token = if dict.is_empty() {
            vec![rng.byte()]
        } else {
            rng.pick(dict).as_bytes().to_vec()
        };
        data.extend_from_slice(&token);
        return;
    }
    let len = data.len();
    match op {
        0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len);
            data[i] = rng.byte();
        }
        2 => {
            let i = rng.below(len);
            data[i] = *rng.pick(INTERESTING_BYTES);
        }
        3 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(4);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(i..i, bytes);
        }
        4 => {
            let (s, n) = range(rng, len, 16);
            data.drain(s..s + n);
        }
        5 => {
            // duplicate a segment somewhere else
            let (s, n) = range(rng, len, 64);
            let seg = data[s..s + n].to_vec();
            let at = rng.below(len + 1);
            data.splice(at..at, seg);
        }
        6 | 7 if !dict.is_empty() => {
            let token = rng.pick(dict).as_bytes().to_vec();
            let at = rng.below(len + 1);
            if op == 6 {
                data.splice(at..at, token);
            } else {
                let end = (at + token.len()).min(len);
                data.splice(at..end, token);
            }
        }
        8 if !corpus.is_empty() => {
            // splice: our prefix, another input's suffix
            let other = rng.pick(corpus);
            let cut = rng.below(len + 1);
            let from = rng.below(other.len() + 1);
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        9 => {
            // replace a run of ASCII digits with an interesting number
            let i = rng.below(len);
            if let Some(s) = (i..len).find(|&j| data[j].is_ascii_digit()) {
                let e = (s..len).find(|&j| !data[j].is_ascii_digit()).unwrap_or(len);
                let num = rng.pick(INTERESTING_NUMBERS).as_bytes().to_vec();
                data.splice(s..e, num);
            }
        }
        10 => {
            let at = rng.below(len + 1);
            let num = rng.pick(INTERESTING_NUMBERS).as_bytes().to_vec();
            data.splice(at..at, num);
        }
        11 if !corpus.is_empty() => {
            // insert a segment of another input
            let other = rng.pick(corpus);
            if !other.is_empty() {
                let (s, n) = range(rng, other.len(), 128);
                let at = rng.below(len + 1);
                data.splice(at..at, other[s..s + n].iter().copied());
            }
        }
        12 => {
            let (a, b) = (rng.below(len), rng.below(len));
            data.swap(a, b);
        }
        13 => {
            data.truncate(rng.below(len + 1));
        }
        _ => {
            // a run of one byte, or repeat the input (nesting, long lines)
            if rng.chance(1, 2) {
                let at = rng.below(len + 1);
                let b = *rng.pick(INTERESTING_BYTES);
                let n = 1 + rng.below(200);
                data.splice(at..at, std::iter::repeat_n(b, n));
            } else {
                let (s, n) = range(rng, len, 32);
                let seg = data[s..s + n].to_vec();
                let times = 2 + rng.below(30);
                let at = s + n;
                data.splice(at..at, seg.repeat(times));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// YAML / JSON documents as trees

/// Parses every document of a YAML (or JSON) text.
pub fn parse_docs(text: &str) -> Option<Vec<Value>> {
    use serde::Deserialize;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        docs.push(Value::deserialize(doc).ok()?);
    }
    Some(docs)
}

fn render_docs(docs: &[Value], rng: &mut Rng) -> Vec<u8> {
    if docs.len() == 1 && rng.chance(1, 4) {
        return serde_json::to_vec_pretty(&docs[0]).unwrap_or_default();
    }
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(d).unwrap_or_default());
    }
    out.into_bytes()
}

/// JSON pointers of every node of `v` (at most `limit`).
fn pointers(v: &Value, at: &mut String, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    out.push(at.clone());
    let len = at.len();
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push('/');
                at.push_str(&k.replace('~', "~0").replace('/', "~1"));
                pointers(x, at, out, limit);
                at.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                at.push('/');
                at.push_str(&i.to_string());
                pointers(x, at, out, limit);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

fn random_node(v: &Value, rng: &mut Rng) -> Value {
    let mut ps = Vec::new();
    pointers(v, &mut String::new(), &mut ps, 4096);
    let p = rng.pick(&ps);
    v.pointer(p).cloned().unwrap_or(Value::Null)
}

fn random_scalar(rng: &mut Rng, dict: &[&str]) -> Value {
    match rng.below(9) {
        0 | 1 if !dict.is_empty() => Value::String(rng.pick(dict).to_string()),
        2 => {
            let n = rng.pick(INTERESTING_NUMBERS);
            serde_json::from_str::<Value>(n).unwrap_or_else(|_| Value::String(n.to_string()))
        }
        3 => Value::String(rng.pick(INTERESTING_NUMBERS).to_string()),
        4 => Value::Bool(rng.chance(1, 2)),
        5 => Value::Null,
        6 => Value::String(String::new()),
        7 => {
            let c = *rng.pick(&['a', '/', '.', '(', '*', 'é', '\u{0}', ' ']);
            Value::String(std::iter::repeat_n(c, 1 + rng.below(300)).collect())
        }
        _ => Value::from(rng.next_u64() as i64 >> rng.below(64)),
    }
}

fn mutate_node(node: &mut Value, donor: Value, rng: &mut Rng, dict: &[&str]) {
    match node {
        Value::Object(m) if rng.chance(3, 4) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            match rng.below(5) {
                0 if !keys.is_empty() => {
                    m.remove(rng.pick(&keys));
                }
                1 if !keys.is_empty() => {
                    // rename a key: to a dictionary word or another case
                    let k = rng.pick(&keys).clone();
                    if let Some(x) = m.remove(&k) {
                        let nk = if rng.chance(1, 2) && !dict.is_empty() {
                            rng.pick(dict).to_string()
                        } else if rng.chance(1, 2) {
                            k.to_ascii_uppercase()
                        } else {
                            format!("{k}{k}")
                        };
                        m.insert(nk, x);
                    }
                }
                2 if !dict.is_empty() => {
                    let k = rng.pick(dict).to_string();
                    let v = if rng.chance(1, 2) {
                        donor
                    } else {
                        random_scalar(rng, dict)
                    };
                    m.insert(k, v);
                }
                3 if !keys.is_empty() => {
                    let k = rng.pick(&keys).clone();
                    m.insert(k, donor);
                }
                _ => *node = donor,
            }
        }
        Value::Array(a) if rng.chance(3, 4) => match rng.below(6) {
            0 if !a.is_empty() => {
                let i = rng.below(a.len());
                a.remove(i);
            }
            1 if !a.is_empty() => {
                let i = rng.below(a.len());
                let x = a[i].clone();
                a.insert(i, x);
            }
            2 if a.len() > 1 => {
                let (i, j) = (rng.below(a.len()), rng.below(a.len()));
                a.swap(i, j);
            }
            3 => a.clear(),
            4 => {
                let i = rng.below(a.len() + 1);
                a.insert(i, donor);
            }
            _ => {
                let x = std::mem::take(node);
                *node = Value::Array(vec![x]);
            }
        },
        Value::String(s) if rng.chance(1, 2) => {
            let mut b = s.clone().into_bytes();
            mutate_bytes(&mut b, &[], rng, dict);
            *s = String::from_utf8_lossy(&b).into_owned();
        }
        Value::Number(n) if rng.chance(1, 2) => {
            *node = Value::String(n.to_string());
        }
        _ => match rng.below(4) {
            0 => *node = donor,
            1 => {
                let x = std::mem::take(node);
                let k = if dict.is_empty() {
                    "x".to_string()
                } else {
                    rng.pick(dict).to_string()
                };
                *node = Value::Object(Map::from_iter([(k, x)]));
            }
            _ => *node = random_scalar(rng, dict),
        },
    }
}

/// Mutates a YAML/JSON text as a tree of documents; `None` if it does not parse.
pub fn mutate_yaml(
    parent: &[u8],
    corpus: &[Vec<u8>],
    rng: &mut Rng,
    dict: &[&str],
) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(parent).ok()?;
    let mut docs = parse_docs(text)?;
    docs.retain(|d| !d.is_null());
    if docs.is_empty() {
        docs.push(Value::Object(Map::new()));
    }
    // Material from another input (or this one).
    let other_docs = if !corpus.is_empty() && rng.chance(1, 2) {
        let other = rng.pick(corpus);
        std::str::from_utf8(other)
            .ok()
            .and_then(parse_docs)
            .filter(|d| !d.is_empty())
    } else {
        None
    };
    let donor_docs = other_docs.as_deref().unwrap_or(&docs);
    let donor_doc = rng.pick(donor_docs).clone();
    let n = 1 + rng.below(3);
    for _ in 0..n {
        match rng.below(12) {
            0 => {
                // add a whole document from elsewhere
                let i = rng.below(docs.len() + 1);
                docs.insert(i, donor_doc.clone());
            }
            1 if docs.len() > 1 => {
                let i = rng.below(docs.len());
                docs.remove(i);
            }
            _ => {
                let donor = random_node(&donor_doc, rng);
                let i = rng.below(docs.len());
                let mut ps = Vec::new();
                pointers(&docs[i], &mut String::new(), &mut ps, 4096);
                let p = rng.pick(&ps).clone();
                if let Some(node) = docs[i].pointer_mut(&p) {
                    mutate_node(node, donor, rng, dict);
                }
            }
        }
    }
    Some(render_docs(&docs, rng))
}

// ---------------------------------------------------------------------------------------------
// protobuf DiscoveryResponse as a message

fn interesting_u32(rng: &mut Rng) -> u32 {
    *rng.pick(&[0, 1, 80, 4140, 4143, 8080, 65535, 65536, 70000, u32::MAX])
}

fn interesting_i32(rng: &mut Rng) -> i32 {
    *rng.pick(&[0, 1, 2, 3, 4, 5, 6, 7, -1, 99, i32::MAX, i32::MIN])
}

fn interesting_string(rng: &mut Rng, dict: &[&str], current: &str) -> String {
    match rng.below(4) {
        0 if !dict.is_empty() => rng.pick(dict).to_string(),
        1 => {
            let mut b = current.as_bytes().to_vec();
            mutate_bytes(&mut b, &[], rng, dict);
            String::from_utf8_lossy(&b).into_owned()
        }
        2 => String::new(),
        _ if !dict.is_empty() => format!("{current}{}", rng.pick(dict)),
        _ => current.to_string(),
    }
}

fn mutate_http_match(m: &mut v1::HttpMatch, rng: &mut Rng, dict: &[&str]) {
    match rng.below(6) {
        0 => m.path_regex = interesting_string(rng, dict, &m.path_regex),
        1 => m.methods.push(interesting_string(rng, dict, "GET")),
        2 if !m.methods.is_empty() => {
            let i = rng.below(m.methods.len());
            m.methods[i] = interesting_string(rng, dict, &m.methods[i]);
        }
        3 => m.headers.push(v1::HeaderMatch {
            name: interesting_string(rng, dict, "x-user"),
            value_regex: interesting_string(rng, dict, "admin"),
        }),
        4 if !m.headers.is_empty() => {
            let i = rng.below(m.headers.len());
            let h = &mut m.headers[i];
            if rng.chance(1, 2) {
                h.name = interesting_string(rng, dict, &h.name);
            } else {
                h.value_regex = interesting_string(rng, dict, &h.value_regex);
            }
        }
        _ => m.name = interesting_string(rng, dict, &m.name),
    }
}

fn ip_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = *rng.pick(&[0usize, 1, 3, 4, 4, 4, 5, 15, 16, 16, 17]);
    (0..len).map(|_| rng.byte()).collect()
}

fn mutate_inbound(p: &mut v1::InboundPolicy, rng: &mut Rng, dict: &[&str]) {
    if p.ports.is_empty() || rng.chance(1, 6) {
        p.ports.push(v1::InboundPort {
            port: interesting_u32(rng),
            ..Default::default()
        });
    }
    match rng.below(8) {
        0 => p.default_policy = interesting_i32(rng),
        1 => p.identity = interesting_string(rng, dict, &p.identity),
        _ => {
            let i = rng.below(p.ports.len());
            let port = &mut p.ports[i];
            match rng.below(6) {
                0 => port.port = interesting_u32(rng),
                1 => port.protocol = interesting_i32(rng),
                2 => port.restricted = !port.restricted,
                3 => {
                    let mut a = v1::Authorization {
                        name: interesting_string(rng, dict, "ns/target"),
                        all_traffic: rng.chance(1, 2),
                        ..Default::default()
                    };
                    match rng.below(3) {
                        0 => clients::set(
                            &mut a,
                            v1::authorization::Clients::Mesh(v1::MeshClients {
                                identities: vec![interesting_string(rng, dict, "")],
                            }),
                        ),
                        1 => clients::set(
                            &mut a,
                            v1::authorization::Clients::Probes(v1::KubeletProbes {}),
                        ),
                        // An operator one minor version older.
                        _ => clients::set_untyped(&mut a, vec![interesting_string(rng, dict, "*")]),
                    }
                    // TODO(#14-merge): once the proxy reads the typed choice, also send a typed
                    // choice whose deprecated mirror disagrees (the proxy must follow `clients`).
                    port.authorizations.push(a);
                }
                _ if !port.authorizations.is_empty() => {
                    let j = rng.below(port.authorizations.len());
                    let a = &mut port.authorizations[j];
                    match rng.below(4) {
                        0 => a.all_traffic = !a.all_traffic,
                        1 => clients::push_identity(a, interesting_string(rng, dict, "")),
                        2 => a.http_routes.push(v1::HttpMatch::default()),
                        _ if !a.http_routes.is_empty() => {
                            let k = rng.below(a.http_routes.len());
                            mutate_http_match(&mut a.http_routes[k], rng, dict);
                        }
                        _ => a.name = interesting_string(rng, dict, &a.name),
                    }
                }
                _ => {}
            }
        }
    }
}

fn mutate_outbound(s: &mut v1::OutboundService, rng: &mut Rng, dict: &[&str]) {
    if s.ports.is_empty() || rng.chance(1, 8) {
        s.ports.push(v1::OutboundPort {
            port: interesting_u32(rng),
            protocol: 0,
            routes: vec![v1::Route {
                name: "default".into(),
                ..Default::default()
            }],
        });
    }
    match rng.below(10) {
        0 => s.cluster_ips.push(ip_bytes(rng)),
        1 => s.name = interesting_string(rng, dict, &s.name),
        2 => s.namespace = interesting_string(rng, dict, &s.namespace),
        3 => {
            let p = s.policy.get_or_insert_with(Default::default);
            match rng.below(5) {
                0 => {
                    p.retry_budget_ratio = *rng.pick(&[
                        f64::NAN,
                        f64::INFINITY,
                        f64::NEG_INFINITY,
                        -1.0,
                        0.0,
                        1.0,
                        1e308,
                        5e-324,
                    ])
                }
                1 => p.request_timeout_ms = *rng.pick(&[0, 1, u64::MAX, u64::MAX / 1000]),
                2 => p.max_retries = *rng.pick(&[0, 1, 100, u32::MAX]),
                3 => p.retry_non_idempotent = !p.retry_non_idempotent,
                // #16: the reliability fields (durations at the extremes, inverted and
                // out-of-range status ranges, odd gRPC codes, limits of 0 and u32::MAX).
                _ => mutate_reliability(p, rng),
            }
        }
        _ => {
            let i = rng.below(s.ports.len());
            let port = &mut s.ports[i];
            match rng.below(5) {
                0 => port.port = interesting_u32(rng),
                1 => port.protocol = interesting_i32(rng),
                2 => port.routes.push(v1::Route::default()),
                _ if !port.routes.is_empty() => {
                    let j = rng.below(port.routes.len());
                    let r = &mut port.routes[j];
                    match rng.below(5) {
                        0 => r.matches.push(v1::HttpMatch::default()),
                        1 if !r.matches.is_empty() => {
                            let k = rng.below(r.matches.len());
                            mutate_http_match(&mut r.matches[k], rng, dict);
                        }
                        2 => r.backends.push(v1::WeightedBackend {
                            service: interesting_string(rng, dict, "web"),
                            weight: *rng.pick(&[0, 1, 1000, u64::MAX]),
                            endpoint_set: interesting_string(rng, dict, "endpoints:web.shop:80"),
                            unavailable_reason: if rng.below(4) == 0 {
                                interesting_string(rng, dict, "backend web-v1 does not exist")
                            } else {
                                String::new()
                            },
                            ..Default::default()
                        }),
                        3 if !r.backends.is_empty() => {
                            let k = rng.below(r.backends.len());
                            let b = &mut r.backends[k];
                            match rng.below(3) {
                                0 => b.weight = *rng.pick(&[0, 1, u64::MAX, u64::MAX / 2 + 1]),
                                1 => {
                                    b.endpoint_set = interesting_string(rng, dict, &b.endpoint_set)
                                }
                                _ => b.service = interesting_string(rng, dict, &b.service),
                            }
                        }
                        _ => r.name = interesting_string(rng, dict, &r.name),
                    }
                }
                _ => {}
            }
        }
    }
}

fn interesting_ms(rng: &mut Rng) -> u64 {
    *rng.pick(&[0, 1, 300, 60_000, u64::MAX / 1000, u64::MAX])
}

fn interesting_status_range(rng: &mut Rng) -> v1::StatusRange {
    let pick = |rng: &mut Rng| *rng.pick(&[0, 99, 200, 429, 500, 502, 599, 600, 65_536, u32::MAX]);
    v1::StatusRange {
        min: pick(rng),
        max: pick(rng),
    }
}

fn mutate_reliability(p: &mut v1::TrafficPolicy, rng: &mut Rng) {
    let code = |rng: &mut Rng| *rng.pick(&[0, 2, 8, 14, 16, 17, u32::MAX]);
    match rng.below(11) {
        0 => p.per_try_timeout_ms = interesting_ms(rng),
        1 => p.retry_budget_min_per_second = interesting_u32(rng),
        2 => p.retry_statuses.push(interesting_status_range(rng)),
        3 => p.retry_grpc_codes.push(code(rng)),
        4 => p.max_concurrent_requests = *rng.pick(&[0, 1, 2, u32::MAX]),
        5 => p.max_pending_requests = *rng.pick(&[0, 1, u32::MAX]),
        6 => p.max_requests_per_endpoint = *rng.pick(&[0, 1, u32::MAX]),
        7 => p.queue_timeout_ms = interesting_ms(rng),
        _ => {
            let a = p.failure_accrual.get_or_insert_with(Default::default);
            match rng.below(8) {
                0 => a.consecutive_failures = *rng.pick(&[0, 1, u32::MAX]),
                1 => {
                    a.min_success_rate =
                        *rng.pick(&[f64::NAN, f64::INFINITY, -1.0, 0.0, 0.5, 1.0, 2.0])
                }
                2 => a.window_ms = interesting_ms(rng),
                3 => a.min_requests = *rng.pick(&[0, 1, u32::MAX]),
                4 => a.min_backoff_ms = interesting_ms(rng),
                5 => a.max_backoff_ms = interesting_ms(rng),
                6 => a.failure_statuses.push(interesting_status_range(rng)),
                _ => a.failure_grpc_codes.push(code(rng)),
            }
        }
    }
}

fn mutate_endpoints(s: &mut v1::EndpointSet, rng: &mut Rng, dict: &[&str]) {
    if s.endpoints.is_empty() || rng.chance(1, 6) {
        s.endpoints.push(v1::Endpoint {
            ip: vec![127, 0, 0, 1],
            port: 8080,
            ..Default::default()
        });
    }
    let i = rng.below(s.endpoints.len());
    let e = &mut s.endpoints[i];
    match rng.below(6) {
        0 => e.ip = ip_bytes(rng),
        1 => e.port = interesting_u32(rng),
        2 => e.inbound_port = interesting_u32(rng),
        3 => e.identity = interesting_string(rng, dict, &e.identity),
        4 => e.pod = interesting_string(rng, dict, &e.pod),
        _ => {
            let x = e.clone();
            s.endpoints.push(x);
        }
    }
}

/// Mutates a protobuf `DiscoveryResponse` as a message; `None` if it does not decode.
pub fn mutate_proto(
    parent: &[u8],
    corpus: &[Vec<u8>],
    rng: &mut Rng,
    dict: &[&str],
) -> Option<Vec<u8>> {
    use v1::resource::Kind;
    let mut resp = v1::DiscoveryResponse::decode(parent).ok()?;
    let n = 1 + rng.below(3);
    for _ in 0..n {
        match rng.below(14) {
            0 => resp.nonce = interesting_string(rng, dict, &resp.nonce),
            1 => resp.full_state = !resp.full_state,
            2 => resp
                .removed
                .push(interesting_string(rng, dict, "outbound:web.shop")),
            3 => resp
                .unchanged
                .push(interesting_string(rng, dict, "endpoints:web.shop:80")),
            4 if !corpus.is_empty() => {
                // take a resource from another input
                if let Ok(other) = v1::DiscoveryResponse::decode(&rng.pick(corpus)[..]) {
                    if !other.resources.is_empty() {
                        let r = rng.pick(&other.resources).clone();
                        resp.resources.push(r);
                    }
                }
            }
            5 if !resp.resources.is_empty() => {
                let i = rng.below(resp.resources.len());
                resp.resources.remove(i);
            }
            6 if !resp.resources.is_empty() => {
                let i = rng.below(resp.resources.len());
                let r = &mut resp.resources[i];
                match rng.below(4) {
                    0 => r.kind = None,
                    1 => r.name = interesting_string(rng, dict, &r.name),
                    2 => r.version = interesting_string(rng, dict, &r.version),
                    _ => {
                        let x = r.clone();
                        resp.resources.push(x);
                    }
                }
            }
            7 => resp.resources.push(v1::Resource {
                name: interesting_string(rng, dict, "inbound"),
                version: String::new(),
                kind: Some(match rng.below(3) {
                    0 => Kind::Inbound(Default::default()),
                    1 => Kind::Outbound(Default::default()),
                    _ => Kind::Endpoints(Default::default()),
                }),
            }),
            _ if !resp.resources.is_empty() => {
                let i = rng.below(resp.resources.len());
                match &mut resp.resources[i].kind {
                    Some(Kind::Inbound(p)) => mutate_inbound(p, rng, dict),
                    Some(Kind::Outbound(s)) => mutate_outbound(s, rng, dict),
                    Some(Kind::Endpoints(s)) => mutate_endpoints(s, rng, dict),
                    // On-demand address resolutions: a name is all there is.
                    Some(Kind::Ip(_)) | None => {}
                }
            }
            _ => {}
        }
    }
    Some(resp.encode_to_vec())
}
