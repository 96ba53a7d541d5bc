#!/usr/bin/env python3
"""Self cost per function from a callgrind file written by proxy-bench.sh (INSTRUCTIONS=N).

    e2e/bench/callgrind_self.py FILE [REQUESTS] [TOP]          # per function, per request
    e2e/bench/callgrind_self.py --by-crate FILE [REQUESTS]     # summed by crate
    e2e/bench/callgrind_self.py --match REGEX FILE             # the matching functions' total
                                                               # (proxy-bench.sh's memcpy count)
    e2e/bench/callgrind_self.py --callers REGEX FILE [REQUESTS] # what calls into the matching
                                                               # functions cost, per caller
    e2e/bench/callgrind_self.py --events FILE [REQUESTS] [TOP] # CACHE_SIM=1 dumps: instructions,
                                                               # L1 data misses and mispredicted
                                                               # branches, by crate and function

proxy-bench.sh writes uncompressed names (--compress-strings=no). callgrind_annotate sums these
dumps of the static proxy under one "(below main)" entry, so this reads the file itself: every
cost line of a `fn=` block counts toward that function, except the line after `calls=`, which is
the inclusive cost of a call (issue #20, docs/benchmarks.md, session 23).
"""
import collections
import re
import sys

CRATES = [  # (label, pattern on the function name), first match wins
    ("h2 crate", r"(^|<)h2::"),
    ("hyper's HTTP/2 glue", r"hyper::proto::h2"),
    ("hyper's HTTP/1 (and httparse)", r"hyper::proto::h1|httparse"),
    ("memcpy/memmove", r"memcpy|memmove"),
    ("malloc/free", r"malloc|free|_int_|unlink_chunk|consolidate|memalign"),
    ("weft's own", r"weft_proxy"),
    ("tokio", r"tokio"),
]


def self_costs(path):
    cost, fn, after_call = collections.Counter(), None, False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                after_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if after_call:
                    after_call = False
                elif fn is not None:
                    fields = line.split()
                    if len(fields) >= 2:
                        cost[fn] += int(fields[1])
    return cost


def parse(path):
    """Every event of every function's own lines, and every call's inclusive events by
    (caller, callee), from an uncompressed callgrind file."""
    events, fn, cfn, calls = [], None, None, None
    own = collections.defaultdict(collections.Counter)
    called = collections.defaultdict(collections.Counter)
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("cfn="):
                cfn = line[4:].strip()
            elif line.startswith("calls="):
                calls = int(line[6:].split()[0])
            elif line[:1].isdigit() or line[:1] in "+-*":
                values = zip(events, (int(v) for v in line.split()[1:]))
                if calls is not None:
                    pair = called[(fn, cfn)]
                    pair.update(dict(values))
                    pair["calls"] += calls
                    calls = None
                elif fn is not None:
                    own[fn].update(dict(values))
    return events, own, called


def crate_of(name):
    return next((label for label, p in CRATES if re.search(p, name)), "other")


def main(argv):
    if argv[:1] == ["--callers"] and len(argv) in (3, 4):
        pattern = re.compile(argv[1])
        per = float(argv[3]) if len(argv) == 4 else 1.0
        _, _, called = parse(argv[2])
        rows = collections.defaultdict(collections.Counter)
        for (caller, callee), c in called.items():
            if callee and pattern.search(callee):
                rows[caller].update(c)
        print(f"{'calls':>8} {'Ir':>10}  caller (inclusive cost of its calls into {argv[1]})")
        for caller, c in sorted(rows.items(), key=lambda r: -r[1]["Ir"])[:30]:
            print(f"{c['calls'] / per:8.2f} {c['Ir'] / per:10.1f}  {caller[:150]}")
        return
    if argv[:1] == ["--events"] and len(argv) in (2, 3, 4):
        per = float(argv[2]) if len(argv) > 2 else 1.0
        top = int(argv[3]) if len(argv) > 3 else 30
        events, own, _ = parse(argv[1])
        shown = [e for e in ("Ir", "D1mr", "D1mw", "Bcm", "Bim") if e in events]
        if shown == ["Ir"]:
            sys.exit("no simulated events in this file (proxy-bench.sh CACHE_SIM=1 writes them)")
        misses = lambda c: c["D1mr"] + c["D1mw"]
        groups = collections.defaultdict(collections.Counter)
        for name, c in own.items():
            groups[crate_of(name)].update(c)
        total = collections.Counter()
        for c in own.values():
            total.update(c)
        head = "".join(f"{e:>9}" for e in shown)
        print(f"{head}  by crate, per request")
        for label, c in sorted(groups.items(), key=lambda g: -misses(g[1])):
            print("".join(f"{c[e] / per:9.1f}" for e in shown) + f"  {label}")
        print("".join(f"{total[e] / per:9.1f}" for e in shown) + "  total")
        print(f"\n{head}  by function, most L1 data misses first")
        for name, c in sorted(own.items(), key=lambda r: -misses(r[1]))[:top]:
            print("".join(f"{c[e] / per:9.1f}" for e in shown) + f"  {name[:120]}")
        return
    if argv[:1] == ["--match"] and len(argv) == 3:
        pattern = re.compile(argv[1])
        print(sum(c for name, c in self_costs(argv[2]).items() if pattern.search(name)))
        return
    by_crate = "--by-crate" in argv
    args = [a for a in argv if a != "--by-crate"]
    if not args:
        sys.exit(__doc__)
    cost = self_costs(args[0])
    per = float(args[1]) if len(args) > 1 else 1.0
    total = sum(cost.values())
    if by_crate:
        groups = collections.Counter()
        for name, c in cost.items():
            label = next((l for l, p in CRATES if re.search(p, name)), "other")
            groups[label] += c
        rows = groups.most_common()
    else:
        rows = cost.most_common(int(args[2]) if len(args) > 2 else 60)
    for name, c in rows:
        print(f"{c / per:10.1f} {100 * c / total:5.1f} %  {name[:150]}")
    print(f"{total / per:10.1f} total")


if __name__ == "__main__":
    main(sys.argv[1:])
