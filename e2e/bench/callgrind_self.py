#!/usr/bin/env python3
"""Self cost per function from a callgrind file written by proxy-bench.sh (INSTRUCTIONS=N).

    e2e/bench/callgrind_self.py FILE [REQUESTS] [TOP]          # per function, per request
    e2e/bench/callgrind_self.py --by-crate FILE [REQUESTS]     # summed by crate
    e2e/bench/callgrind_self.py --match REGEX FILE             # the matching functions' total
                                                               # (proxy-bench.sh's memcpy count)

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


def main(argv):
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
