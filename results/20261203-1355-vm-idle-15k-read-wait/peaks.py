#!/usr/bin/env python3
"""Peak heap per connection by the innermost corecast/glommio frame of each stack.

Usage: peaks.py CONNECTIONS stacks-A.txt [stacks-B.txt]  (heaptrack_print -F output)
"""
import collections
import re
import sys


def clean(frame):
    name = frame.split(' (')[0]
    for a, b in (('$LT$', '<'), ('$GT$', '>'), ('$u20$', ' '), ('$u7b$', '{'), ('$u7d$', '}'),
                 ('$C$', ','), ('$RF$', '&'), ('..', '::')):
        name = name.replace(a, b)
    return re.sub(r'::h[0-9a-f]{16}$', '', name).replace('_<', '<')


def load(path):
    sums = collections.Counter()
    for line in open(path):
        stack, _, n = line.rstrip().rpartition(' ')
        key = 'other'
        for frame in reversed(stack.split(';')):
            if 'corecast' in frame or 'glommio' in frame:
                key = clean(frame)
                break
        sums[key] += int(n)
    return sums


n = int(sys.argv[1])
runs = [load(p) for p in sys.argv[2:]]
keys = sorted(set().union(*runs), key=lambda k: -max(r[k] for r in runs))
print(' '.join(f'{p.split("/")[-1]:>14}' for p in sys.argv[2:]), ' B per connection at the peak, by call site')
for k in keys[:25]:
    print(' '.join(f'{r[k] / n:14.1f}' for r in runs), '', k[:140])
print(' '.join(f'{sum(r.values()) / n:14.1f}' for r in runs), '', 'total')
