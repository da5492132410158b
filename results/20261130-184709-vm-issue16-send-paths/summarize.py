import json, sys, glob, statistics, os  # usage: summarize.py DIR (DIR/run*/*-compare/compare.json)
base = sys.argv[1]
runs = sorted(glob.glob(os.path.join(base, 'run*/*-compare/compare.json')))
docs = [json.load(open(p)) for p in runs]
print(f"runs: {len(docs)}")
def f(v):
    if v is None: return '–'
    if v >= 1000: return f"{v:,.0f}"
    if v >= 10: return f"{v:.1f}"
    return f"{v:.2f}"
print("| target | corecast (r1 / r2 / r3) | ceiling | tokio peer | ratio ÷ best: median (spread) | threshold | median vs threshold |")
print("|---|---|---|---|---|---|---|")
for i, row in enumerate(docs[0]['rows']):
    rows = [d['rows'][i] for d in docs]
    if all(r['corecast'] is None and r['ceiling'] is None and r['tokio'] is None for r in rows):
        continue
    ratios = [r['ratio'] for r in rows if r['ratio'] is not None]
    med = statistics.median(ratios) if ratios else None
    spread = (f"{min(ratios):.2f}–{max(ratios):.2f}" + (f", {len(ratios)} of {len(rows)} runs" if len(ratios) < len(rows) else "")) if ratios else "no ratio"
    t = row['threshold']
    verdict = '–'
    if med is not None and '×' in t:
        lim = float(t.split()[1])
        ok = med >= lim if t.startswith('≥') else med <= lim
        verdict = '**pass**' if ok else '**miss**'
    elif t.startswith('≤ 1,024') and rows[0]['corecast'] is not None:
        vals=[r['corecast'] for r in rows if r['corecast'] is not None]
        verdict = '**pass**' if statistics.median(vals) <= 1024 else '**miss**'
    col = lambda k: ' / '.join(f(r[k]) for r in rows)
    print(f"| {row['target']} ({row['unit']}) | {col('corecast')} | {col('ceiling')} | {col('tokio')} | {f(med) if med is not None else '–'} ({spread}) | {t} | {verdict} |")
