#!/usr/bin/env python3
"""timeline.py RUN_FOLDER...: each step's latency timeline from summary.json (bench-client's 10 s
windows): per window the share of deliveries over 1 ms and over 5 ms and the slowest, then how
the deliveries over 5 ms spread over the windows (a few stalls, or every window)."""
import json
import sys

for d in sys.argv[1:]:
    s = json.load(open(d.rstrip('/') + '/summary.json'))
    for st in s['steps']:
        tl, lat = st['timeline'], st['latency_ms']
        print(f"{d.rstrip('/').split('/')[-1]} step {st['step']}: p99 {lat['p99']:.2f} ms, p99.9 {lat['p99_9']:.2f} ms, "
              f"max {lat['max']:.1f} ms, {len(tl)} windows of 10 s")
        pct = lambda w, k: 100 * w[k] / max(w['deliveries'], 1)
        print('  over 1 ms %:', ' '.join(f"{pct(w, 'over_1ms'):.0f}" for w in tl))
        print('  over 5 ms %:', ' '.join(f"{pct(w, 'over_5ms'):.0f}" for w in tl))
        print('  max ms     :', ' '.join(f"{w['max_ms']:.0f}" for w in tl))
        full = [w for w in tl if w['deliveries'] > 0]
        shares = sorted(pct(w, 'over_5ms') for w in full)
        over = sorted((w['over_5ms'] for w in full), reverse=True)
        k = max(1, len(over) // 10)
        print(f"  over 5 ms: median window {shares[len(shares) // 2]:.1f} %, worst window {shares[-1]:.1f} %; "
              f"the worst 10 % of windows hold {100 * sum(over[:k]) / max(sum(over), 1):.0f} % of them")
