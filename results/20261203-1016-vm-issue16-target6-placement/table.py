#!/usr/bin/env python3
"""table.py FOLDER: one row per server and placement from placement.sh's rounds: p99 and the
share of deliveries over 5 ms per round, their medians, and server and client CPU (each of
one core) from bench-client's step line."""
import glob
import json
import re
import statistics
import sys

rows = {}
for log in sorted(glob.glob(sys.argv[1].rstrip('/') + '/round*/*-client.log')):
    name = log.split('/')[-1][:-len('-client.log')]
    text = open(log).read()
    step = re.search(r'^step 0: .*$', text, re.M)
    run = re.search(r'^run folder: (.*)$', text, re.M)
    if not step or not run:
        continue
    line = step.group(0)
    cpu = re.search(r'CPU client (\d+)% .* server (\d+)%', line)
    lost = re.search(r'lost (\d+) dup (\d+) reorder (\d+)', line)
    folder = log.rsplit('/', 1)[0] + '/' + run.group(1).rstrip('/').split('/')[-1]
    s = json.load(open(folder + '/summary.json'))['steps'][0]
    over5 = 100 * sum(w['over_5ms'] for w in s['timeline']) / max(1, sum(w['deliveries'] for w in s['timeline']))
    rows.setdefault(name, []).append((s['latency_ms']['p99'], over5, int(cpu.group(2)), int(cpu.group(1)),
                                      sum(map(int, lost.groups()))))

print('| server, placement | p99 (ms) per round | median p99 | over 5 ms (%) per round | server / client CPU (%) per round | lost + dup + reordered |')
print('|---|---|---|---|---|---|')
for name, rs in rows.items():
    print(f"| {name} | {' / '.join(f'{r[0]:.1f}' for r in rs)} | **{statistics.median(r[0] for r in rs):.1f}** | "
          f"{' / '.join(f'{r[1]:.1f}' for r in rs)} | {' / '.join(f'{r[2]}/{r[3]}' for r in rs)} | {sum(r[4] for r in rs)} |")
