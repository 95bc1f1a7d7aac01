"""Answers the analysts' questions (tasks 4-11) straight from the raw NDJSON records, in plain
Python, without pinstream's cleaning code or its SQL: the independent computation the
report tests compare against. Prints {report name: [[column values as strings], ...]}.

usage: python reports.py DATA_DIR
"""
import json
import sys
from collections import Counter, defaultdict
from decimal import ROUND_HALF_UP, Decimal

data = sys.argv[1]


def load(name):
    with open(f"{data}/{name}.ndjson") as f:
        return [json.loads(line) for line in f if line.strip()]


def text(v, placeholders=()):
    if v is None or v == "" or v in placeholders:
        return None
    return v


SCALE = {"k": 10**3, "K": 10**3, "M": 10**6, "m": 10**6, "B": 10**9}


def followers(v):
    v = text(v, ("User Info Error",))
    if v is None:
        return None
    if isinstance(v, int):
        return v
    s = str(v).strip()
    if s[-1] in SCALE:
        return int((Decimal(s[:-1]) * SCALE[s[-1]]).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    return int(s)


def year(ts):
    # The records' datetimes are naive (UTC) ISO strings: the year is the first four digits.
    return int(ts[:4]) if ts else None


def age_group(age):
    if age is None:
        return None
    age = int(age)
    if 18 <= age <= 24:
        return "18-24"
    if 25 <= age <= 35:
        return "25-35"
    if 36 <= age <= 50:
        return "36-50"
    if age > 50:
        return "+50"
    return None


def user_name(first, last):
    parts = [p for p in (text(first), text(last)) if p is not None]
    return " ".join(parts) if parts else None


pins = {}
for r in load("pin"):
    pins.setdefault(int(r["index"]), {
        "category": text(r.get("category")),
        "poster_name": text(r.get("poster_name"), ("User Info Error",)),
        "follower_count": followers(r.get("follower_count")),
    })
geos = {}
for r in load("geo"):
    geos.setdefault(int(r["ind"]), {"country": text(r.get("country")), "year": year(r.get("timestamp"))})
users = {}
for r in load("user"):
    users.setdefault(int(r["ind"]), {
        "group": age_group(r.get("age")),
        "name": user_name(r.get("first_name"), r.get("last_name")),
        "joined": text(r.get("date_joined")),
    })

pg = [(p, geos[i]) for i, p in pins.items() if i in geos]
pu = [(p, users[i]) for i, p in pins.items() if i in users]


def top(counter_by_key):
    """Per key, the (value, count) with the highest count, ties to the smallest value."""
    out = []
    for key in sorted(counter_by_key):
        value, count = min(counter_by_key[key].items(), key=lambda kv: (-kv[1], kv[0]))
        out.append([key, value, count])
    return out


def lower_median(values):
    values = sorted(values)
    return values[(len(values) + 1) // 2 - 1]


out = {}

c = defaultdict(Counter)
for p, g in pg:
    if g["country"] is not None and p["category"] is not None:
        c[g["country"]][p["category"]] += 1
out["category-by-country"] = top(c)

c = defaultdict(Counter)
for p, g in pg:
    if p["category"] is not None and g["year"] is not None and 2018 <= g["year"] <= 2022:
        c[g["year"]][p["category"]] += 1
out["category-by-year"] = top(c)

best = {}
for p, g in pg:
    if g["country"] is None or p["follower_count"] is None or p["poster_name"] is None:
        continue
    cand = (-p["follower_count"], p["poster_name"])
    if g["country"] not in best or cand < best[g["country"]]:
        best[g["country"]] = cand
out["top-poster-by-country"] = [[k, v[1], -v[0]] for k, v in sorted(best.items())]
country, (neg, _) = min(best.items(), key=lambda kv: (kv[1][0], kv[0]))
out["top-country"] = [[country, -neg]]

c = defaultdict(Counter)
for p, u in pu:
    if u["group"] is not None and p["category"] is not None:
        c[u["group"]][p["category"]] += 1
out["category-by-age-group"] = top(c)

m = defaultdict(list)
for p, u in pu:
    if u["group"] is not None and p["follower_count"] is not None:
        m[u["group"]].append(p["follower_count"])
out["median-followers-by-age-group"] = [[k, lower_median(v)] for k, v in sorted(m.items())]

joined = defaultdict(set)
for u in users.values():
    y = year(u["joined"])
    if y is not None and 2015 <= y <= 2020:
        joined[y].add((u["name"], u["joined"]))
out["users-joined-by-year"] = [[y, len(s)] for y, s in sorted(joined.items())]

m = defaultdict(list)
m2 = defaultdict(list)
for p, u in pu:
    y = year(u["joined"])
    if p["follower_count"] is None or y is None or not 2015 <= y <= 2020:
        continue
    m[y].append(p["follower_count"])
    if u["group"] is not None:
        m2[(u["group"], y)].append(p["follower_count"])
out["median-followers-by-join-year"] = [[y, lower_median(v)] for y, v in sorted(m.items())]
out["median-followers-by-join-year-and-age-group"] = [
    [g, y, lower_median(v)] for (g, y), v in sorted(m2.items())
]

print(json.dumps({k: [[str(x) for x in row] for row in rows] for k, rows in out.items()}))
