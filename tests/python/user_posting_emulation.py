"""Posts real Pinterest rows to `pinstream ingest` the way the original project's
user_posting_emulation scripts did (the `requests` library, one database row per request,
datetimes serialized by json.dumps' `default`), but as a careful test client: every posted
record carries a fresh unique key, every acknowledgement is recorded, and the refusals the
server must give are checked. The Rust tests read the JSON report this writes.

Two entry points, as in the original project:
  * the API Gateway REST API in front of Kinesis (base URL with its stage, e.g.
    http://127.0.0.1:8080/test): PUT {gateway}/streams/{stream}/record and /records;
  * the Confluent REST Proxy v2: POST {proxy}/topics/{prefix}.{pin|geo|user}.

Keys (the required integer key of each kind: pin `index`, geo `ind`, user `ind`), per kind:
  1_000_000 + i  good rows sent through the gateway (--mode checks)
  2_000_000 + i  good rows sent through the REST proxy (--mode checks)
  3_000_000 + i  records the cleaner rejects (invalid_value), sent through both
  4_000_000 + i  good rows of --mode load
  5_000_000 + i  records inside requests the server must refuse: never stored

usage:
  python user_posting_emulation.py --gateway http://127.0.0.1:8080/test \
      --proxy http://127.0.0.1:8080 --stream pin=NAME --stream geo=NAME --stream user=NAME \
      --topic-prefix PREFIX [--data tests/data] [--rows 50] [--threads 4] [--api-key KEY] \
      [--report report.json] [--mode checks|load] [--seconds 10] [--timeout 10]

Exit status: 0 when the run finished (even with failed checks: read the report), 2 on bad
arguments or unreadable data.
"""
import argparse
import concurrent.futures
import email.utils
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from datetime import datetime, timezone

import requests

KINDS = ("pin", "geo", "user")
KEY_FIELD = {"pin": "index", "geo": "ind", "user": "ind"}
# Columns the original database held as DATETIME: parsed back into datetime objects so that
# json.dumps' `default` really serializes them, as it did for the rows read with SQLAlchemy.
DATETIME_FIELDS = {"pin": (), "geo": ("timestamp",), "user": ("date_joined",)}

GATEWAY_BASE, PROXY_BASE, MALFORMED_BASE, LOAD_BASE, REFUSED_BASE = (
    1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000)
MAX_ROWS = 1_000_000  # keeps the key ranges above disjoint

# Values the cleaner rejects with `invalid_value` (docs/cleaning.md), five per kind.
MALFORMED = {
    "pin": [{"follower_count": "abc"}, {"follower_count": 30.5}, {"follower_count": "lots"},
            {"category": ["art"]}, {"title": {"text": "nested"}}],
    "geo": [{"latitude": "north"}, {"longitude": "west"}, {"latitude": "north", "longitude": "x"},
            {"country": ["Chad"]}, {"country": {"name": "Chad"}}],
    "user": [{"age": "old"}, {"age": 30.5}, {"age": "thirty"}, {"age": "20.5"}, {"age": "abc"}],
}

GATEWAY_TYPE = "application/json"
PROXY_TYPE = "application/vnd.kafka.json.v2+json"
PROXY_ACCEPT = "application/vnd.kafka.v2+json"
PARTITION_KEY = "partition-1"  # what the original scripts sent
ONE_MIB = 1024 * 1024
MAX_RETRIES = 5           # resends of one request answered 429/503
MAX_RETRY_AFTER_S = 2.0   # cap on an honoured Retry-After
BODY_CHARS = 300


def iso_default(o):
    if isinstance(o, datetime):
        return o.isoformat()          # 2018-06-26T02:23:44
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


DEFAULTS = {"iso": iso_default, "str": str}  # str(datetime): 2018-06-26 02:23:44


# ----------------------------------------------------------------------------- arguments

def usage_error(msg):
    print(f"user_posting_emulation.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Post real rows to pinstream ingest and check it.")
    p.add_argument("--gateway", help="API Gateway base URL, with the stage (http://host:port/test)")
    p.add_argument("--proxy", help="Confluent REST Proxy base URL (http://host:port)")
    p.add_argument("--stream", action="append", default=[], metavar="KIND=NAME",
                   help="stream of a kind (pin, geo, user); repeat for each")
    p.add_argument("--topic-prefix", help="REST proxy topics are <prefix>.pin, .geo, .user")
    p.add_argument("--data", default="tests/data", help="directory of pin/geo/user.ndjson")
    p.add_argument("--rows", type=int, default=50, help="good rows per kind per API (checks)")
    p.add_argument("--threads", type=int, default=4, help="concurrent clients")
    p.add_argument("--api-key", help="sent as x-api-key")
    p.add_argument("--report", help="write the JSON report here (default: stdout)")
    p.add_argument("--mode", choices=("checks", "load"), default="checks")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of --mode load")
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, seconds")
    a = p.parse_args(argv)

    if not a.gateway and not a.proxy:
        usage_error("give --gateway, --proxy or both")
    a.gateway = a.gateway.rstrip("/") if a.gateway else None
    a.proxy = a.proxy.rstrip("/") if a.proxy else None
    streams = {}
    for s in a.stream:
        kind, sep, name = s.partition("=")
        if not sep or kind not in KINDS or not name:
            usage_error(f"--stream {s!r}: expected KIND=NAME with KIND one of {', '.join(KINDS)}")
        if kind in streams:
            usage_error(f"--stream {kind} given twice")
        streams[kind] = name
    if a.gateway and set(streams) != set(KINDS):
        usage_error("--gateway needs --stream pin=NAME --stream geo=NAME --stream user=NAME")
    a.streams = streams
    if a.proxy and not a.topic_prefix:
        usage_error("--proxy needs --topic-prefix")
    if not 1 <= a.rows < MAX_ROWS:
        usage_error(f"--rows must be in 1..{MAX_ROWS - 1}")
    if a.threads < 1:
        usage_error("--threads must be at least 1")
    if a.report and not os.path.isdir(os.path.dirname(os.path.abspath(a.report))):
        usage_error(f"--report {a.report}: no such directory")
    if a.seconds <= 0 or a.timeout <= 0:
        usage_error("--seconds and --timeout must be positive")
    return a


def load_rows(data_dir):
    rows = {}
    for kind in KINDS:
        path = os.path.join(data_dir, f"{kind}.ndjson")
        rows[kind] = []
        try:
            with open(path, encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            rows[kind].append(json.loads(line))
                        except ValueError as e:
                            usage_error(f"{path}:{n}: not JSON: {e}")
        except (OSError, ValueError) as e:
            usage_error(f"cannot read {path}: {e}")
        if not rows[kind] or not all(isinstance(r, dict) for r in rows[kind]):
            usage_error(f"{path}: expected one JSON object per line")
    return rows


# ----------------------------------------------------------------------------- records

def as_database_row(kind, row):
    """The row as the original scripts had it from the database: datetimes as datetime objects."""
    row = dict(row)
    for field in DATETIME_FIELDS[kind]:
        v = row.get(field)
        if isinstance(v, str):
            try:
                row[field] = datetime.fromisoformat(v)
            except ValueError:
                pass
    return row


class Record:
    __slots__ = ("kind", "key", "row", "malformed")

    def __init__(self, kind, key, row, malformed=False):
        self.kind, self.key, self.row, self.malformed = kind, key, row, malformed


def good_record(rows, kind, key, source_index):
    row = as_database_row(kind, rows[kind][source_index % len(rows[kind])])
    row[KEY_FIELD[kind]] = key
    return Record(kind, key, row)


def malformed_record(rows, kind, key, source_index, bad):
    row = dict(rows[kind][source_index % len(rows[kind])])
    row.update(bad)
    row[KEY_FIELD[kind]] = key
    return Record(kind, key, row, malformed=True)


class Request:
    """One HTTP request posting records: api is 'record' / 'records' (gateway) or 'proxy'."""
    __slots__ = ("api", "kind", "records", "fmt")

    def __init__(self, api, kind, records, fmt):
        self.api, self.kind, self.records, self.fmt = api, kind, records, fmt


# ----------------------------------------------------------------------------- client

class Run:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.local = threading.local()
        self.sessions = []
        self.requests = 0
        self.failed_requests = 0
        self.retries = 0
        self.latencies = []
        self.acked = {k: set() for k in KINDS}
        self.acked_malformed = {k: set() for k in KINDS}
        self.refused = {k: set() for k in KINDS}
        self.checks = []
        self.positions = set()
        self.duplicate_positions = []
        self.bad_shapes = {"record": [0, None], "records": [0, None], "proxy": [0, None]}
        self.connection_errors = 0
        self.first_error = None

    # --- plumbing

    def session(self):
        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            if self.args.api_key:
                s.headers["x-api-key"] = self.args.api_key
            self.local.session = s
            with self.lock:
                self.sessions.append(s)
        return s

    def stream_url(self, kind_or_name, suffix=""):
        name = self.args.streams.get(kind_or_name, kind_or_name)
        return f"{self.args.gateway}/streams/{name}{suffix}"

    def topic(self, kind):
        return f"{self.args.topic_prefix}.{kind}"

    def http(self, method, url, data=None, headers=None, deadline=None, session=None):
        """One logical request: resent (same bytes) on 429/503 after Retry-After, at most
        MAX_RETRIES times. Returns the last response; connection errors propagate."""
        session = session or self.session()
        for attempt in itertools.count():
            t0 = time.monotonic()
            with self.lock:
                self.requests += 1
            try:
                r = session.request(method, url, data=data, headers=headers,
                                    timeout=self.args.timeout)
            except requests.RequestException as e:
                with self.lock:
                    self.failed_requests += 1
                    if isinstance(e, requests.ConnectionError):
                        self.connection_errors += 1
                    if self.first_error is None:
                        self.first_error = f"{method} {url}: {type(e).__name__}: {e}"
                raise
            with self.lock:
                self.latencies.append((time.monotonic() - t0) * 1000.0)
            if r.status_code not in (429, 503) or attempt >= MAX_RETRIES:
                if r.status_code != 200:
                    with self.lock:
                        self.failed_requests += 1
                return r
            wait = retry_after(r.headers.get("Retry-After"), attempt)
            if deadline is not None and time.monotonic() + wait > deadline:
                with self.lock:
                    self.failed_requests += 1
                return r
            with self.lock:
                self.retries += 1
            time.sleep(wait)

    def body(self, req):
        default = DEFAULTS[req.fmt]
        if req.api == "record":
            (rec,) = req.records
            payload = {"StreamName": self.args.streams[req.kind], "Data": rec.row,
                       "PartitionKey": PARTITION_KEY}
        elif req.api == "records":
            payload = {"StreamName": self.args.streams[req.kind],
                       "records": [{"data": rec.row, "partition-key": f"partition-{rec.key}"}
                                   for rec in req.records]}
        else:
            payload = {"records": [{"value": rec.row} for rec in req.records]}
        return json.dumps(payload, default=default).encode("utf-8")

    def target(self, req):
        if req.api == "record":
            return "PUT", self.stream_url(req.kind, "/record"), {"Content-Type": GATEWAY_TYPE}
        if req.api == "records":
            return "PUT", self.stream_url(req.kind, "/records"), {"Content-Type": GATEWAY_TYPE}
        return ("POST", f"{self.args.proxy}/topics/{self.topic(req.kind)}",
                {"Content-Type": PROXY_TYPE, "Accept": PROXY_ACCEPT})

    # --- posting records

    def post(self, req, deadline=None):
        """Posts the request's records; entries a 200 batch answer reports as failed are resent
        (only them) up to MAX_RETRIES times. Returns False after a connection error."""
        pending = list(req.records)
        for _ in range(MAX_RETRIES + 1):
            sub = Request(req.api, req.kind, pending, req.fmt)
            method, url, headers = self.target(sub)
            try:
                r = self.http(method, url, self.body(sub), headers, deadline)
            except requests.ConnectionError:
                return False
            except requests.RequestException:
                return True
            if r.status_code != 200:
                with self.lock:
                    if self.first_error is None:
                        self.first_error = f"{method} {url}: {r.status_code} {r.text[:BODY_CHARS]}"
                return True
            results = self.entry_results(sub, r)
            failed = []
            with self.lock:
                for rec, position in zip(pending, results):
                    if position is None:
                        failed.append(rec)
                        continue
                    (self.acked_malformed if rec.malformed else self.acked)[rec.kind].add(rec.key)
                    if position is not True:
                        if position in self.positions:
                            self.duplicate_positions.append(list(position))
                        self.positions.add(position)
            if not failed:
                return True
            pending = failed
            if deadline is not None and time.monotonic() > deadline:
                return True
            time.sleep(0.1)
        return True

    def entry_results(self, req, r):
        """Per record of a 200 answer: its position (for the duplicate check), True when acked
        but the answer's shape is wrong (counted, still acked: HTTP 200 is the ack), or None
        when the answer reports that entry failed."""
        n = len(req.records)
        try:
            body = r.json()
        except ValueError:
            body = None
        shape_ok = True
        results = [True] * n
        if req.api == "record":
            if (isinstance(body, dict) and isinstance(body.get("SequenceNumber"), str)
                    and isinstance(body.get("ShardId"), str)):
                results = [(req.kind, body["ShardId"], body["SequenceNumber"])]
            else:
                shape_ok = False
        elif req.api == "records":
            entries = body.get("Records") if isinstance(body, dict) else None
            if (isinstance(entries, list) and len(entries) == n
                    and all(isinstance(e, dict) for e in entries)):
                results = []
                for e in entries:
                    if e.get("ErrorCode"):
                        results.append(None)
                    elif (isinstance(e.get("SequenceNumber"), str)
                          and isinstance(e.get("ShardId"), str)):
                        results.append((req.kind, e["ShardId"], e["SequenceNumber"]))
                    else:
                        shape_ok = False
                        results.append(True)
                failed = sum(r is None for r in results)
                if body.get("FailedRecordCount") != failed:
                    shape_ok = False
            else:
                shape_ok = False
        else:
            offsets = body.get("offsets") if isinstance(body, dict) else None
            if (isinstance(offsets, list) and len(offsets) == n
                    and all(isinstance(o, dict) for o in offsets)):
                results = []
                for o in offsets:
                    if o.get("error_code") is not None:
                        results.append(None)
                    elif isinstance(o.get("partition"), int) and isinstance(o.get("offset"), int):
                        results.append(("topic:" + req.kind, o["partition"], o["offset"]))
                    else:
                        shape_ok = False
                        results.append(True)
            else:
                shape_ok = False
        if not shape_ok:
            with self.lock:
                count = self.bad_shapes[req.api]
                count[0] += 1
                if count[1] is None:
                    count[1] = r.text[:BODY_CHARS]
        return results

    # --- checks

    def check(self, name, expected, r, ok, detail=""):
        status = None if r is None else r.status_code
        body = "" if r is None else r.text[:BODY_CHARS]
        ok = bool(ok) and status in expected
        if status not in expected and not detail:
            detail = f"expected {expected}, got {status}"
        self.checks.append({"name": name, "expected": expected, "status": status,
                            "body": body, "ok": ok, "detail": detail})

    def check_http(self, method, url, data=None, headers=None, session=None):
        """A check's request: resent once after a connection error (a kept-alive connection
        the server closed while idle); checks store nothing, so a resend is harmless."""
        try:
            return self.http(method, url, data, headers, session=session)
        except requests.ConnectionError:
            return self.http(method, url, data, headers, session=session)

    def refused_check(self, name, expected, method, url, data, headers, carried=(),
                      proxy=False, error_code=None, session=None):
        for rec in carried:
            self.refused[rec.kind].add(rec.key)
        try:
            r = self.check_http(method, url, data, headers, session=session)
        except requests.RequestException as e:
            self.check(name, expected, None, False, f"{type(e).__name__}: {e}"[:BODY_CHARS])
            return
        try:
            body = r.json()
        except ValueError:
            body = None
        detail = ""
        ok = True
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, str) or not message:
            ok, detail = False, "answer is not a JSON object with a non-empty \"message\""
        elif proxy and not isinstance(body.get("error_code"), int):
            ok, detail = False, "REST proxy error without an integer \"error_code\""
        elif error_code is not None and body.get("error_code") != error_code:
            ok, detail = False, f"error_code {body.get('error_code')!r}, expected {error_code}"
        elif not proxy and "__type" not in body:
            ok, detail = False, "gateway error without \"__type\""
        self.check(name, expected, r, ok, detail)


def retry_after(value, attempt):
    """Seconds to wait before resending: Retry-After (seconds or an HTTP date), capped."""
    wait = None
    if value:
        try:
            wait = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                wait = (when - datetime.now(timezone.utc)).total_seconds()
            except (TypeError, ValueError):
                wait = None
    if wait is None:
        wait = 0.1 * 2 ** attempt
    return min(max(wait, 0.0), MAX_RETRY_AFTER_S)


# ----------------------------------------------------------------------------- modes

def checks_plan(args, rows):
    """The requests of --mode checks, shuffled (fixed seed) so kinds and APIs interleave."""
    plan = []
    n = args.rows
    for kind in KINDS:
        if args.gateway:
            # Mostly one row per PUT /record; some rows in PUT /records batches of 10.
            batched = 10 * max(1, (n * 2 // 5) // 10) if n > 10 else 0
            recs = [good_record(rows, kind, GATEWAY_BASE + i, i) for i in range(n)]
            singles, batch_recs = recs[:n - batched], recs[n - batched:]
            for j, rec in enumerate(singles):
                plan.append(Request("record", kind, [rec], "iso" if j % 2 == 0 else "str"))
            for j in range(0, len(batch_recs), 10):
                plan.append(Request("records", kind, batch_recs[j:j + 10],
                                    "iso" if (j // 10) % 2 == 0 else "str"))
        if args.proxy:
            # Mostly one record per POST; some POSTs of 5 records.
            multi = 5 * max(1, (n // 5) // 5) if n > 5 else 0
            offset = len(rows[kind]) // 3
            recs = [good_record(rows, kind, PROXY_BASE + i, offset + i) for i in range(n)]
            singles, multi_recs = recs[:n - multi], recs[n - multi:]
            for j, rec in enumerate(singles):
                plan.append(Request("proxy", kind, [rec], "iso" if j % 2 == 0 else "str"))
            for j in range(0, len(multi_recs), 5):
                plan.append(Request("proxy", kind, multi_recs[j:j + 5], "str"))
        bad = MALFORMED[kind]
        if args.gateway:
            for i, b in enumerate(bad):
                rec = malformed_record(rows, kind, MALFORMED_BASE + i, i, b)
                plan.append(Request("record", kind, [rec], "iso"))
        if args.proxy:
            for i, b in enumerate(bad):
                k = len(bad) + i
                rec = malformed_record(rows, kind, MALFORMED_BASE + k, k, b)
                plan.append(Request("proxy", kind, [rec], "iso"))
    random.Random(0).shuffle(plan)
    return plan


def describe_checks(run):
    args = run.args
    try:
        r = run.check_http("GET", f"{args.gateway}/streams")
    except requests.RequestException as e:
        run.check("gateway_list_streams", [200], None, False, f"{type(e).__name__}: {e}")
    else:
        names = _get(r, "StreamNames")
        names = names if isinstance(names, list) else []
        missing = [n for n in args.streams.values() if n not in names]
        run.check("gateway_list_streams", [200], r, not missing,
                  f"missing from StreamNames: {missing}" if missing else "")
    pin = args.streams["pin"]
    try:
        r = run.check_http("GET", run.stream_url("pin"))
    except requests.RequestException as e:
        run.check("gateway_describe_stream", [200], None, False, f"{type(e).__name__}: {e}")
    else:
        desc = _get(r, "StreamDescription")
        ok = isinstance(desc, dict) and desc.get("StreamName") == pin
        run.check("gateway_describe_stream", [200], r, ok,
                  "" if ok else f"StreamDescription.StreamName is not {pin!r}")
    try:
        r = run.check_http("GET", run.stream_url("no-such-stream-pinstream-test"))
    except requests.RequestException as e:
        run.check("gateway_describe_unknown_stream", [404], None, False, f"{type(e).__name__}: {e}")
    else:
        run.check("gateway_describe_unknown_stream", [404], r, True)


def _get(r, field):
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get(field) if isinstance(body, dict) else None


def refused_checks(run, rows):
    args = run.args
    keys = itertools.count(REFUSED_BASE)
    gw_json = {"Content-Type": GATEWAY_TYPE}
    px_json = {"Content-Type": PROXY_TYPE, "Accept": PROXY_ACCEPT}

    def rec(kind="pin"):
        return good_record(rows, kind, next(keys), 7)

    def big(kind="pin"):
        r = rec(kind)
        r.row["description" if kind == "pin" else "country" if kind == "geo" else "first_name"] = (
            "x" * (ONE_MIB + 1024))
        return r

    if args.gateway:
        pin = args.streams["pin"]
        url = run.stream_url("pin", "/record")
        r1 = rec()
        run.refused_check("gateway_invalid_json", [400], "PUT", url,
                          b'{"StreamName": "%s", "Data": {"index": %d, "title": "cut' % (
                              pin.encode(), r1.key), gw_json, [r1])
        run.refused_check("gateway_missing_data", [400], "PUT", url,
                          json.dumps({"StreamName": pin, "PartitionKey": PARTITION_KEY}).encode(),
                          gw_json)
        r3 = rec()
        run.refused_check("gateway_records_not_a_list", [400], "PUT",
                          run.stream_url("pin", "/records"),
                          json.dumps({"StreamName": pin,
                                      "records": {"data": r3.row, "partition-key": PARTITION_KEY}},
                                     default=str).encode(),
                          gw_json, [r3])
        r4 = rec()
        unknown = "no-such-stream-pinstream-test"
        run.refused_check("gateway_unknown_stream", [404], "PUT",
                          run.stream_url(unknown, "/record"),
                          json.dumps({"StreamName": unknown, "Data": r4.row,
                                      "PartitionKey": PARTITION_KEY}, default=str).encode(),
                          gw_json, [r4])
        r5 = big()
        run.refused_check("gateway_record_too_large", [413], "PUT", url,
                          json.dumps({"StreamName": pin, "Data": r5.row,
                                      "PartitionKey": PARTITION_KEY}, default=str).encode(),
                          gw_json, [r5])
    if args.proxy:
        url = f"{args.proxy}/topics/{run.topic('geo')}"
        r1 = rec("geo")
        run.refused_check("proxy_invalid_json", [400, 422], "POST", url,
                          b'{"records": [{"value": {"ind": %d, "country": "Chad"' % r1.key,
                          px_json, [r1], proxy=True)
        r2 = rec("geo")
        run.refused_check("proxy_unknown_topic", [404], "POST",
                          f"{args.proxy}/topics/{args.topic_prefix}.no-such-topic",
                          json.dumps({"records": [{"value": r2.row}]}, default=str).encode(),
                          px_json, [r2], proxy=True, error_code=40401)
        r3 = rec("geo")
        run.refused_check("proxy_wrong_content_type", [415], "POST", url,
                          json.dumps({"records": [{"value": r3.row}]}, default=str).encode(),
                          {"Content-Type": "text/plain"}, [r3], proxy=True)
        r4 = big("geo")
        run.refused_check("proxy_record_too_large", [413], "POST", url,
                          json.dumps({"records": [{"value": r4.row}]}, default=str).encode(),
                          px_json, [r4], proxy=True)
    if args.api_key:
        no_key = requests.Session()
        wrong_key = requests.Session()
        wrong_key.headers["x-api-key"] = args.api_key + "-wrong"
        try:
            for label, session in (("missing", no_key), ("wrong", wrong_key)):
                if args.gateway:
                    r = rec("user")
                    run.refused_check(f"gateway_{label}_api_key", [401, 403], "PUT",
                                      run.stream_url("user", "/record"),
                                      json.dumps({"StreamName": args.streams["user"], "Data": r.row,
                                                  "PartitionKey": PARTITION_KEY},
                                                 default=str).encode(),
                                      gw_json, [r], session=session)
                if args.proxy:
                    r = rec("user")
                    run.refused_check(f"proxy_{label}_api_key", [401, 403], "POST",
                                      f"{args.proxy}/topics/{run.topic('user')}",
                                      json.dumps({"records": [{"value": r.row}]},
                                                 default=str).encode(),
                                      px_json, [r], proxy=True, session=session)
        finally:
            no_key.close()
            wrong_key.close()


def run_checks(run, rows):
    args = run.args
    if args.gateway:
        describe_checks(run)
    plan = checks_plan(args, rows)
    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for f in [pool.submit(run.post, req) for req in plan]:
            f.result()
    refused_checks(run, rows)
    # Every record of the plan must have been acknowledged.
    for label, acked, malformed in (("good", run.acked, False),
                                    ("malformed", run.acked_malformed, True)):
        want = {k: set() for k in KINDS}
        for req in plan:
            for rec in req.records:
                if rec.malformed == malformed:
                    want[rec.kind].add(rec.key)
        missing = {k: sorted(want[k] - acked[k])[:20] for k in KINDS if want[k] - acked[k]}
        run.checks.append({"name": f"all_{label}_records_acked", "expected": [200],
                           "status": None if missing else 200,
                           "body": json.dumps(missing)[:BODY_CHARS] if missing else "",
                           "ok": not missing,
                           "detail": f"not acknowledged: {run.first_error}" if missing else ""})


def run_load(run, rows):
    args = run.args
    deadline = time.monotonic() + args.seconds
    routes = [(kind, api) for kind in KINDS
              for api in (("record",) if args.gateway else ()) + (("proxy",) if args.proxy else ())]
    ticket = itertools.count()
    counters = {k: itertools.count() for k in KINDS}
    lock = threading.Lock()

    def client():
        while time.monotonic() < deadline:
            with lock:
                t = next(ticket)
                kind, api = routes[t % len(routes)]
                i = next(counters[kind])
            rec = good_record(rows, kind, LOAD_BASE + i, i)
            if not run.post(Request(api, kind, [rec], "iso" if i % 2 == 0 else "str"), deadline):
                return  # connection refused/reset: the server stopped answering

    with concurrent.futures.ThreadPoolExecutor(args.threads) as pool:
        for f in [pool.submit(client) for _ in range(args.threads)]:
            f.result()


# ----------------------------------------------------------------------------- report

def percentile(sorted_values, q):
    if not sorted_values:
        return None
    rank = math.ceil(q / 100.0 * len(sorted_values))  # nearest rank
    return round(sorted_values[min(len(sorted_values), max(rank, 1)) - 1], 3)


def report(run, seconds):
    used = {"record": run.args.gateway, "records": run.args.gateway, "proxy": run.args.proxy}
    for api, (count, first) in run.bad_shapes.items():
        if (used[api] and run.args.mode == "checks") or count:
            run.checks.append({"name": f"{api}_answer_shape", "expected": [200],
                               "status": 200, "body": first or "", "ok": count == 0,
                               "detail": f"{count} answers of 200 with an unexpected body"
                                         if count else ""})
    dups = run.duplicate_positions
    run.checks.append({"name": "distinct_positions", "expected": [200], "status": 200,
                       "body": json.dumps(dups[:10])[:BODY_CHARS], "ok": not dups,
                       "detail": f"{len(dups)} (shard, sequence number) or (partition, offset) "
                                 "pairs given twice" if dups else ""})
    lat = sorted(run.latencies)
    records = sum(len(run.acked[k]) + len(run.acked_malformed[k]) for k in KINDS)
    seconds = max(seconds, 1e-9)
    return {
        "mode": run.args.mode,
        "acked": {k: sorted(run.acked[k]) for k in KINDS},
        "acked_malformed": {k: sorted(run.acked_malformed[k]) for k in KINDS},
        "refused": {k: sorted(run.refused[k]) for k in KINDS},
        "checks": run.checks,
        "requests": run.requests,
        "failed_requests": run.failed_requests,
        "connection_errors": run.connection_errors,
        "records": records,
        "retries_429": run.retries,
        "seconds": round(seconds, 3),
        "requests_per_s": round(run.requests / seconds, 1),
        "records_per_s": round(records / seconds, 1),
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99)},
        "first_error": run.first_error,
    }


def summary(rep):
    lines = [f"user_posting_emulation ({rep['mode']}): {rep['requests']} requests "
             f"({rep['failed_requests']} not acknowledged, "
             f"{rep['retries_429']} retries after 429/503), "
             f"{rep['records']} records acknowledged in {rep['seconds']} s "
             f"({rep['requests_per_s']} requests/s, {rep['records_per_s']} records/s), "
             f"latency p50 {rep['latency_ms']['p50']} ms, p99 {rep['latency_ms']['p99']} ms"]
    lines.append("  acked: " + ", ".join(
        f"{k} {len(rep['acked'][k])} good + {len(rep['acked_malformed'][k])} malformed"
        for k in KINDS))
    failed = [c for c in rep["checks"] if not c["ok"]]
    lines.append(f"  checks: {len(rep['checks']) - len(failed)}/{len(rep['checks'])} ok")
    for c in failed:
        detail = "" if c["detail"].startswith("expected ") else f"{c['detail'][:160]} "
        lines.append(f"  FAILED {c['name']}: expected {c['expected']}, got {c['status']}: "
                     f"{detail}{c['body'][:120]!r}")
    if rep["first_error"]:
        lines.append(f"  first error: {rep['first_error'][:300]}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = load_rows(args.data)
    run = Run(args)
    t0 = time.monotonic()
    try:
        if args.mode == "checks":
            run_checks(run, rows)
        else:
            run_load(run, rows)
    finally:
        seconds = time.monotonic() - t0
        for s in run.sessions:
            s.close()
    rep = report(run, seconds)
    text = json.dumps(rep, indent=1)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)
    print(summary(rep), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
