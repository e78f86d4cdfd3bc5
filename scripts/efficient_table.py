"""Tables of one efficient-attention sitting: patchgraph's sweep against its PyTorch peers.

    python3 scripts/efficient_table.py OURS.json PEERS.json [OURS2.json PEERS2.json ...]

OURS.json from `cargo run --release --example efficient_sweep -- --json OURS.json`, PEERS.json from
`scripts/bench_peers.py --only efficient --json PEERS.json` (the same sitting). With several pairs
(rounds), each cell is the median over the rounds of that round's own ratio. Prints markdown:

1. per method and N: our forward and forward+backward medians (ms), the peer's, and peer / ours;
2. linearity: (t(50177) / 50177) / (t(3137) / 3137) per method and mode (1.0 = linear);
3. the GEMM peaks of the sitting (faer 2048^3 from the sweep, torch.mm 2048^3 if present).

Peers: sdpa for complete, performer-pytorch, linformer, nystrom-attention, and PyG-style edge
attention for window, bigbird and lsh (see scripts/bench_peers.py). Standard library only.
"""
import json
import statistics
import sys

METHODS = ["complete", "window", "bigbird", "lsh", "performer", "linformer", "nystrom"]
PEER_OP = {"complete": "sdpa"}


def load(path):
    with open(path) as f:
        return json.load(f)


def index(records, prefix):
    out = {}
    for r in records:
        op = r.get("op", "")
        if op.startswith("efficient_") and r.get("median_ms") is not None:
            out[(op, r["N"])] = r["median_ms"]
        elif op.startswith("efficient_"):
            out[(op, r["N"])] = None
    return out


def fmt(x, p=1):
    return "-" if x is None else f"{x:.{p}f}"


def main():
    files = sys.argv[1:]
    if not files or len(files) % 2:
        sys.exit(__doc__)
    rounds = [(load(a), load(b)) for a, b in zip(files[::2], files[1::2])]
    ours = [index(o, "patchgraph") for o, _ in rounds]
    peers = [index(p, "peer") for _, p in rounds]
    ns = sorted({n for o in ours for (_, n) in o})
    med = lambda xs: statistics.median(xs) if xs else None
    print(f"rounds: {len(rounds)}; cells: medians over the rounds (ratios: the median of each round's ratio)")
    print()
    print("| method | N | ours fwd (ms) | peer fwd (ms) | peer / ours | ours fwd+bwd (ms) | peer fwd+bwd (ms) | peer / ours |")
    print("|---|---|---|---|---|---|---|---|")
    for m in METHODS:
        for n in ns:
            cells = []
            for mode in ("fwd", "fwdbwd"):
                op_o, op_p = f"efficient_{m}_{mode}", f"efficient_{PEER_OP.get(m, m)}_{mode}"
                o = [r.get((op_o, n)) for r in ours]
                p = [r.get((op_p, n)) for r in peers]
                ratios = [b / a for a, b in zip(o, p) if a and b]
                cells += [fmt(med([x for x in o if x])), fmt(med([x for x in p if x])), fmt(med(ratios), 2)]
            if all(c == "-" for c in cells[:2] + cells[3:5]):
                continue
            print(f"| {m} | {n} | " + " | ".join(cells) + " |")
    print()
    print("| method | fwd: (t/N at 50,177) / (t/N at 3,137) | fwd+bwd |")
    print("|---|---|---|")
    for m in METHODS:
        cells = []
        for mode in ("fwd", "fwdbwd"):
            op = f"efficient_{m}_{mode}"
            rs = [(r.get((op, 50177)) / 50177) / (r.get((op, 3137)) / 3137)
                  for r in ours if r.get((op, 50177)) and r.get((op, 3137))]
            cells.append(fmt(med(rs), 2))
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    for i, (o, p) in enumerate(rounds):
        faer = [r["gflops"] for r in o if r.get("op") == "faer_mm_2048"]
        mm = [r["gflops"] for r in p if r.get("op") == "torch_mm_2048"]
        print(f"round {i + 1}: faer 2048^3 {fmt(faer[0] if faer else None)} GFLOP/s, torch.mm 2048^3 "
              f"{fmt(mm[0] if mm else None)} GFLOP/s")


if __name__ == "__main__":
    main()
