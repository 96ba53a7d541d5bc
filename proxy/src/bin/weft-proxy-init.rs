//! `weft-proxy-init`: the init container that makes a pod's TCP traffic go through its proxy.
//!
//! Installs, in the pod's network namespace (`iptables -t nat`):
//! - chain `WEFT_INBOUND`, jumped to from `PREROUTING`: inbound TCP goes to the proxy's inbound
//!   port, except the skipped ports and the inbound port itself;
//! - chain `WEFT_OUTPUT`, jumped to from `OUTPUT`: outbound TCP goes to the proxy's outbound port,
//!   except traffic of the proxy's uid, traffic to loopback and the skipped ports.
//!
//! Idempotent: the chains are flushed and refilled, the jumps added only when missing.
//!
//! ```text
//! weft-proxy-init --proxy-uid 2102 --inbound-port 4143 --outbound-port 4140 \
//!     --skip-inbound-ports 4191,22 --skip-outbound-ports 3306 [--dry-run] [--iptables PATH]
//! ```
//! Each flag may also come from the environment: `WEFT_PROXY_UID`, `WEFT_INBOUND_PORT`,
//! `WEFT_OUTBOUND_PORT`, `WEFT_SKIP_INBOUND_PORTS`, `WEFT_SKIP_OUTBOUND_PORTS`, `WEFT_IPTABLES`.
#![forbid(unsafe_code)]

use std::process::{Command, ExitCode};

const INBOUND_CHAIN: &str = "WEFT_INBOUND";
const OUTPUT_CHAIN: &str = "WEFT_OUTPUT";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Config {
    proxy_uid: u32,
    inbound_port: u16,
    outbound_port: u16,
    skip_inbound: Vec<String>,
    skip_outbound: Vec<String>,
    dry_run: bool,
    iptables: String,
}

const USAGE: &str =
    "usage: weft-proxy-init --proxy-uid UID [--inbound-port 4143] [--outbound-port 4140] \
[--skip-inbound-ports P,Q,A-B] [--skip-outbound-ports P,Q] [--iptables PATH] [--dry-run]";

fn parse_port(flag: &str, v: &str) -> Result<u16, String> {
    match v.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{flag}: invalid port {v:?}")),
    }
}

/// `"80, 8000-8010"` -> `["80", "8000:8010"]` (iptables range syntax).
fn parse_ports(flag: &str, v: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (parse_port(flag, a)?, parse_port(flag, b)?);
                if a > b {
                    return Err(format!("{flag}: invalid range {part:?}"));
                }
                out.push(format!("{a}:{b}"));
            }
            None => out.push(parse_port(flag, part)?.to_string()),
        }
    }
    Ok(out)
}

fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Config, String> {
    let mut uid = env("WEFT_PROXY_UID");
    let mut inbound = env("WEFT_INBOUND_PORT");
    let mut outbound = env("WEFT_OUTBOUND_PORT");
    let mut skip_in = env("WEFT_SKIP_INBOUND_PORTS");
    let mut skip_out = env("WEFT_SKIP_OUTBOUND_PORTS");
    let mut iptables = env("WEFT_IPTABLES");
    let mut dry_run = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if flag == "--dry-run" {
            dry_run = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_string());
        }
        let slot = match flag {
            "--proxy-uid" => &mut uid,
            "--inbound-port" => &mut inbound,
            "--outbound-port" => &mut outbound,
            "--skip-inbound-ports" => &mut skip_in,
            "--skip-outbound-ports" => &mut skip_out,
            "--iptables" => &mut iptables,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        *slot = Some(value);
    }
    let uid = uid.ok_or_else(|| format!("--proxy-uid (or WEFT_PROXY_UID) is required\n{USAGE}"))?;
    let proxy_uid = uid
        .trim()
        .parse::<u32>()
        .map_err(|_| format!("--proxy-uid: invalid uid {uid:?}"))?;
    let inbound_port = parse_port("--inbound-port", inbound.as_deref().unwrap_or("4143"))?;
    let outbound_port = parse_port("--outbound-port", outbound.as_deref().unwrap_or("4140"))?;
    let mut skip_inbound = parse_ports("--skip-inbound-ports", skip_in.as_deref().unwrap_or(""))?;
    // Proxy-to-proxy traffic already targets the inbound port.
    let own = inbound_port.to_string();
    if !skip_inbound.contains(&own) {
        skip_inbound.insert(0, own);
    }
    Ok(Config {
        proxy_uid,
        inbound_port,
        outbound_port,
        skip_inbound,
        skip_outbound: parse_ports("--skip-outbound-ports", skip_out.as_deref().unwrap_or(""))?,
        dry_run,
        iptables: iptables.unwrap_or_else(|| "iptables".to_string()),
    })
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The rules appended to the (flushed) chains, as iptables argument lists.
fn chain_rules(c: &Config) -> Vec<Vec<String>> {
    let mut rules = Vec::new();
    for p in &c.skip_inbound {
        rules.push(words(&format!(
            "-t nat -A {INBOUND_CHAIN} -p tcp --dport {p} -j RETURN"
        )));
    }
    rules.push(words(&format!(
        "-t nat -A {INBOUND_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        c.inbound_port
    )));
    rules.push(words(&format!(
        "-t nat -A {OUTPUT_CHAIN} -m owner --uid-owner {} -j RETURN",
        c.proxy_uid
    )));
    rules.push(words(&format!("-t nat -A {OUTPUT_CHAIN} -o lo -j RETURN")));
    rules.push(words(&format!(
        "-t nat -A {OUTPUT_CHAIN} -d 127.0.0.0/8 -j RETURN"
    )));
    for p in &c.skip_outbound {
        rules.push(words(&format!(
            "-t nat -A {OUTPUT_CHAIN} -p tcp --dport {p} -j RETURN"
        )));
    }
    rules.push(words(&format!(
        "-t nat -A {OUTPUT_CHAIN} -p tcp -j REDIRECT --to-ports {}",
        c.outbound_port
    )));
    rules
}

/// The jumps from the built-in chains (added once).
fn jumps() -> [(&'static str, &'static str); 2] {
    [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)]
}

struct Runner<'a> {
    config: &'a Config,
}

impl Runner<'_> {
    /// Runs iptables; `Ok(false)` for a non-zero exit when `check` (probing), `Err` otherwise.
    fn run(&self, args: &[String], check: bool) -> Result<bool, String> {
        let line = format!("{} {}", self.config.iptables, args.join(" "));
        if self.config.dry_run {
            if !check {
                println!("{line}");
            }
            return Ok(!check);
        }
        let out = Command::new(&self.config.iptables)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run `{line}`: {e} (is iptables installed?)"))?;
        if out.status.success() {
            if !check {
                println!("{line}");
            }
            Ok(true)
        } else if check {
            Ok(false)
        } else {
            Err(format!(
                "`{line}` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn install(&self) -> Result<(), String> {
        for chain in [INBOUND_CHAIN, OUTPUT_CHAIN] {
            let exists = self.run(&words(&format!("-t nat -n -L {chain}")), true)?;
            if !exists || self.config.dry_run {
                self.run(&words(&format!("-t nat -N {chain}")), false)?;
            }
            self.run(&words(&format!("-t nat -F {chain}")), false)?;
        }
        for rule in chain_rules(self.config) {
            self.run(&rule, false)?;
        }
        for (builtin, chain) in jumps() {
            let present = self.run(
                &words(&format!("-t nat -C {builtin} -p tcp -j {chain}")),
                true,
            )?;
            if !present || self.config.dry_run {
                self.run(
                    &words(&format!("-t nat -A {builtin} -p tcp -j {chain}")),
                    false,
                )?;
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("weft-proxy-init {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match parse(&args, |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("weft-proxy-init: {e}");
            return ExitCode::from(2);
        }
    };
    match (Runner { config: &config }).install() {
        Ok(()) => {
            eprintln!(
                "weft-proxy-init: redirecting inbound TCP to :{} and outbound TCP to :{} (proxy uid {} excluded)",
                config.inbound_port, config.outbound_port, config.proxy_uid
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("weft-proxy-init: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        words(s)
    }

    #[test]
    fn flags_and_defaults() {
        let c = parse(&args("--proxy-uid 2102 --skip-inbound-ports 4191,22 --skip-outbound-ports=3306,8000-8010"), |_| None).unwrap();
        assert_eq!(c.proxy_uid, 2102);
        assert_eq!((c.inbound_port, c.outbound_port), (4143, 4140));
        assert_eq!(c.skip_inbound, ["4143", "4191", "22"]);
        assert_eq!(c.skip_outbound, ["3306", "8000:8010"]);
    }

    #[test]
    fn env_fallback_and_flag_precedence() {
        let env = |k: &str| match k {
            "WEFT_PROXY_UID" => Some("7".to_string()),
            "WEFT_OUTBOUND_PORT" => Some("5000".to_string()),
            _ => None,
        };
        let c = parse(&args("--outbound-port 6000"), env).unwrap();
        assert_eq!((c.proxy_uid, c.outbound_port), (7, 6000));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(parse(&args(""), |_| None)
            .unwrap_err()
            .contains("--proxy-uid"));
        assert!(parse(&args("--proxy-uid x"), |_| None)
            .unwrap_err()
            .contains("invalid uid"));
        assert!(
            parse(&args("--proxy-uid 1 --skip-inbound-ports 80,http"), |_| {
                None
            })
            .unwrap_err()
            .contains("\"http\"")
        );
        assert!(parse(&args("--proxy-uid 1 --bogus"), |_| None)
            .unwrap_err()
            .contains("unknown"));
        assert!(parse(&args("--proxy-uid 1 --inbound-port"), |_| None)
            .unwrap_err()
            .contains("needs a value"));
    }

    #[test]
    fn rules_exclude_proxy_uid_before_redirecting() {
        let c = parse(&args("--proxy-uid 2102 --skip-outbound-ports 25"), |_| None).unwrap();
        let rules: Vec<String> = chain_rules(&c).iter().map(|r| r.join(" ")).collect();
        let uid = rules
            .iter()
            .position(|r| r.contains("--uid-owner 2102 -j RETURN"))
            .unwrap();
        let skip = rules
            .iter()
            .position(|r| r.contains("WEFT_OUTPUT -p tcp --dport 25 -j RETURN"))
            .unwrap();
        let redirect = rules
            .iter()
            .position(|r| r.ends_with("WEFT_OUTPUT -p tcp -j REDIRECT --to-ports 4140"))
            .unwrap();
        assert!(uid < redirect && skip < redirect);
        assert!(rules
            .contains(&"-t nat -A WEFT_INBOUND -p tcp -j REDIRECT --to-ports 4143".to_string()));
    }
}
