"""The baseline `pinstream loadtest --backlog` measures the worker against: the pin cleaning
of the original notebooks, written the way a team would write it in pandas, and appended to
a Delta table with `deltalake.write_deltalake`.

    python benches/pandas_baseline.py RECORDS.ndjson TABLES_DIR

RECORDS.ndjson holds one pin record's data a line, exactly as it was put into Kinesis. The
script parses every line, sends the lines it cannot clean to `pin_rejects` (with the reason,
as pinstream does), cleans the rest with vectorised pandas operations to the columns of
docs/cleaning.md, appends both to Delta tables under TABLES_DIR, and prints one JSON line:
{"rows": N, "rejects": M, "cpu_seconds": {"start": ..., "read": ..., "clean": ..., "write": ...}},
the process's CPU time (every thread, user + system) up to the end of each step: "start" is
the interpreter and the imports of pandas, pyarrow and deltalake.

It reads a file, not Kinesis: the cost of reading the stream (which the worker pays) is not
counted here, so the ratio the load test reports understates the worker's advantage.
"""

import json
import resource
import sys

import numpy as np
import pandas as pd
import pyarrow
from deltalake import write_deltalake

COLUMNS = [
    "ind",
    "unique_id",
    "title",
    "description",
    "follower_count",
    "poster_name",
    "tag_list",
    "is_image_or_video",
    "image_src",
    "save_location",
    "category",
]
TEXT = [c for c in COLUMNS if c not in ("ind", "follower_count")]
PLACEHOLDERS = {
    "title": ["No Title Data Available"],
    "description": ["No description available", "No description available Story format"],
    "poster_name": ["User Info Error"],
    "follower_count": ["User Info Error"],
    "tag_list": ["N,o, ,T,a,g,s, ,A,v,a,i,l,a,b,l,e"],
    "image_src": ["Image src error."],
}
SCALE = {"": 1, "k": 1e3, "K": 1e3, "m": 1e6, "M": 1e6, "B": 1e9}


def read(path):
    """The records as a frame, and the lines that are not pin objects (with the reason).

    pandas' Arrow JSON reader first (the fastest way pandas has to read JSON lines); it
    refuses a file with any malformed line, and then every line is parsed on its own.
    """
    try:
        return pd.read_json(path, lines=True, engine="pyarrow"), []
    except pyarrow.ArrowInvalid:
        pass
    records, rejects = [], []
    with open(path, "rb") as lines:
        for line in lines:
            line = line.rstrip(b"\n")
            try:
                record = json.loads(line)
            except ValueError as e:
                reason = "invalid_utf8" if isinstance(e, UnicodeDecodeError) else "invalid_json"
                rejects.append((line.decode("utf-8", "replace"), reason, None))
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                rejects.append((line.decode(), "not_an_object", None))
    return pd.DataFrame(records), rejects


def clean(df):
    """The cleaned pin frame, and the rows that failed a conversion (with their reason)."""
    for column in ["index", "follower_count"] + TEXT:
        if column not in df:
            df[column] = None
    text = {}
    for column in TEXT + ["follower_count"]:
        values = df[column].astype("string")
        text[column] = values.mask(values.eq("") | values.isin(PLACEHOLDERS.get(column, [])))

    ind = pd.to_numeric(df["index"], errors="coerce")
    bad_ind = ind.isna() | (ind != np.floor(ind))

    followers = text["follower_count"]
    suffix = followers.str[-1:]
    scale = suffix.map(SCALE).fillna(1)
    digits = followers.where(~suffix.isin(list(SCALE)), followers.str[:-1])
    scaled = pd.to_numeric(digits, errors="coerce") * scale
    bad_followers = followers.notna() & scaled.isna()

    bad = bad_ind | bad_followers
    cleaned = pd.DataFrame(
        {
            "ind": ind[~bad].astype("int64"),
            **{c: text[c][~bad] for c in TEXT},
            "follower_count": np.floor(scaled[~bad] + 0.5).astype("Int64"),
        }
    )
    cleaned["save_location"] = cleaned["save_location"].str.removeprefix("Local save in ")
    reasons = np.where(bad_ind[bad], "invalid_key", "invalid_value")
    failed = [
        (json.dumps(row, ensure_ascii=False, default=str), reason, None)
        for row, reason in zip(df[bad].to_dict("records"), reasons)
    ]
    return cleaned[COLUMNS].reset_index(drop=True), failed


def cpu_so_far():
    """CPU seconds this process has used, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main():
    source, tables = sys.argv[1], sys.argv[2].rstrip("/")
    steps = {"start": cpu_so_far()}
    frame, rejects = read(source)
    steps["read"] = cpu_so_far()
    cleaned, failed = clean(frame)
    rejects += failed
    steps["clean"] = cpu_so_far()
    write_deltalake(f"{tables}/pin", cleaned, mode="append")
    if rejects:
        frame = pd.DataFrame(rejects, columns=["raw_data", "reason", "field"]).astype("string")
        write_deltalake(f"{tables}/pin_rejects", frame, mode="append")
    steps["write"] = cpu_so_far()
    spent, before = {}, 0.0
    for step, until in steps.items():
        spent[step] = round(until - before, 3)
        before = until
    print(json.dumps({"rows": len(cleaned), "rejects": len(rejects), "cpu_seconds": spent}))


if __name__ == "__main__":
    main()
