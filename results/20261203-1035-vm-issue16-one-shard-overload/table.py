#!/usr/bin/env python3
"""table.py FOLDER: drain.sh's queues.txt as a table: per run the deliveries not made by the
drain's end and p99 (bench-client's step line), the last sample with all 10,000 connections
open (its time, the server's send queues, the client's receive queues, and for corecast how
many deliveries it had handed to its connections), and when corecast's count first reached
every message it read × 10,000 plus the 499,500 presence events of the first 1,000 joins."""
import re
import sys

runs = {}
label = None
for line in open(sys.argv[1].rstrip('/') + '/queues.txt'):
    m = re.match(r'(\S+) t=([\d.]+) s .*server sockets (\d+) recv-q (\d+) B send-q ([\d.]+) MB \| '
                 r'client sockets (\d+) recv-q ([\d.]+) MB', line)
    if m:
        label = m.group(1)
        r = runs.setdefault(label, {'samples': []})
        r['samples'].append({'t': float(m.group(2)), 'n': int(m.group(3)), 'send': float(m.group(5)),
                             'recv': float(m.group(7))})
        continue
    m = re.search(r"'in': (\d+), .*'deliveries': (\d+)", line)
    if m and label and 'after the client ended' not in line:
        runs[label]['samples'][-1].update(read=int(m.group(1)) - 10000, deliveries=int(m.group(2)))
        continue
    m = re.match(r'(\S+): step 0: .*lost (\d+) .* p99 ([\d.]+) ', line)
    if m:
        runs[m.group(1)].update(lost=int(m.group(2)), p99=float(m.group(3)))

print('| run | not delivered at the drain\'s end (of 19.2 M) | p99 (ms) | last sample with all open: t (s) | '
      'server send queues (GB) | client receive queues (GB) | corecast: handed to connections (M) | '
      'corecast: every message read handed out by t (s) |')
print('|---|---|---|---|---|---|---|---|')
for label, r in runs.items():
    full = [s for s in r['samples'] if s['n'] == 10000]
    last = full[-1]
    done = [s['t'] for s in r['samples'] if 'deliveries' in s and s['read'] == 1920
            and s['deliveries'] >= 1920 * 10000 + 499500]
    cc = label.startswith('corecast')
    print(f"| {label} | {r['lost'] / 1e6:.2f} M | {r['p99']:,.0f} | {last['t']:.1f} | {last['send'] / 1e3:.2f} | "
          f"{last['recv'] / 1e3:.2f} | {last['deliveries'] / 1e6:.2f} |" if cc else
          f"| {label} | {r['lost'] / 1e6:.2f} M | {r['p99']:,.0f} | {last['t']:.1f} | {last['send'] / 1e3:.2f} | "
          f"{last['recv'] / 1e3:.2f} | – |", end='')
    print(f" {done[0]:.1f} |" if cc and done else (' not sampled |' if cc else ' – |'))
